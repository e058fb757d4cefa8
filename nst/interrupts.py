"""Interrupts held while a run's end is written, so that its folder and its record in the store agree."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held() -> Iterator[None]:
    """Ctrl-C or SIGTERM arriving inside the block takes effect when the block ends; a second one at once.

    Outside the main thread (where Python cannot handle signals) the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.getsignal(number) for number in SIGNALS}

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def hold(number: int, _frame) -> None:
        received.append(number)
        if len(received) > 1:  # asked twice: the previous handler now, as if nothing were held
            restore()
            signal.raise_signal(number)

    for number in SIGNALS:
        signal.signal(number, hold)
    try:
        yield
    finally:
        restore()
    if len(received) == 1:
        signal.raise_signal(received[0])
