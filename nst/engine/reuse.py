"""What one batch built that the next batch of the same process can use unchanged: the backbone, calibrated,
and the targets.

A sweep's jobs run one after another in one process (or several per worker process); those whose
configs differ only in what each member sets for itself (``nst.engine.spec.batch_key``: weights,
optimiser, epochs, init) need the same network and the same content features and style Grams, so
they are built once. Only the last of each is kept: a process holds at most one backbone and one
set of targets beyond what its current batch uses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class Kept(Generic[T]):
    """The value last built, and the key it was built for."""

    def __init__(self) -> None:
        self.key: Hashable | None = None
        self.value: T | None = None

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The kept value when it was built for ``key``, else ``build()`` (kept in its place)."""
        if self.value is None or self.key != key:
            self.key, self.value = None, None  # the old one is released before the new one is built
            self.value, self.key = build(), key
        return self.value

    def forget(self) -> None:
        self.key, self.value = None, None


backbones: Kept = Kept()  # the calibrated backbone of the last batch
targets: Kept = Kept()  # the loss (its content features and style Grams) of the last batch, per scale
# the style yardstick's backbone when the run's own does not compute it, and the style's Grams it measures against
yardstick_backbones: Kept = Kept()
yardstick_grams: Kept = Kept()


def forget() -> None:
    """Nothing kept: a new command builds its own (files may have changed since the last one)."""
    for kept in (backbones, targets, yardstick_backbones, yardstick_grams):
        kept.forget()
