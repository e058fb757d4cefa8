"""Ctrl-C and SIGTERM as nst's commands take them: raised as ``KeyboardInterrupt``, never lost, and held while
a run's end is written, so that its folder and its record in the store agree."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_received: list[str] = []  # the signals ``interrupt`` raised, in this process


def interrupt(number: int, _frame) -> None:
    """The commands' handler of Ctrl-C and SIGTERM: raises ``KeyboardInterrupt`` and remembers it, since
    Python drops an exception raised while it runs a garbage-collection callback; ``check`` raises it again."""
    _received.append(signal.Signals(number).name)
    raise KeyboardInterrupt(f"signal {_received[-1]}")


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a signal was received (and may have been dropped)."""
    if _received:
        raise KeyboardInterrupt(f"signal {_received[-1]}")


def received() -> str | None:
    """The last signal ``interrupt`` took, if any."""
    return _received[-1] if _received else None


def forget() -> None:
    """Forget the signals taken (a command that handled them has ended)."""
    _received.clear()


def take_over() -> None:
    """Make ``interrupt`` the handler of Ctrl-C and SIGTERM in this process (a command's start)."""
    forget()
    for number in SIGNALS:
        signal.signal(number, interrupt)


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
