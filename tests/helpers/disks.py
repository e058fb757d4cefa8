"""Disks as tests need them: full (the small tmpfs itself is the ``small_disk`` fixture, tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path


def fill_disk(folder: Path) -> Path:
    """A file in ``folder`` that takes every byte left on its disk (delete it to free the disk again)."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    return filler
