"""Files written whole: under a temporary name beside the target, renamed over it only once complete.

A rename within a folder is atomic, so a reader, a full disk or a killed process
finds the target absent, as it was, or complete; never empty or half-written.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PART = ".part"  # the suffix of a file being written


@contextmanager
def written(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to, renamed over ``path`` when the block ends and removed
    if it raises (the block may also remove it, to leave ``path`` as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:  # created as open() would (its mode from the umask), unlike mkstemp's owner-only file
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PART}")
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield temporary
        if temporary.exists():
            os.replace(temporary, path)
    except OSError as exc:  # a failure names the file being written, not its temporary name
        if exc.filename is not None and Path(exc.filename) == temporary:
            exc.filename = str(path)
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text``, written whole."""
    with written(path) as temporary:
        temporary.write_text(text)


def is_partial(path: Path) -> bool:
    """Whether ``path`` is a file still being written (or left by a process that was killed meanwhile)."""
    return path.name.startswith(".") and path.name.endswith(PART)
