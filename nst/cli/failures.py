"""What reaches the top of a command (``nst``, ``nst-report``, ``nst-review``): one ``<prog>: error:`` line
and an exit status, never a traceback.

A user error (``NSTError``) says what was refused; a full or read-only disk, a worker process
that died or a refused config say so in words; anything else is a bug, whose traceback is kept
in a file named on the line (``NST_DEBUG=1`` raises it instead).
"""

from __future__ import annotations

import errno
import os
import re
import sys
import tempfile
import traceback
from pathlib import Path

from nst.errors import NSTError

_DISK = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
         errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
         errno.EPERM: "permission denied"}
# what a process pool raises when one of its workers died (joblib's loky, concurrent.futures)
_WORKER_DIED = ("TerminatedWorkerError", "BrokenProcessPool", "WorkerLostError")


def debugging() -> bool:
    """Whether the user asked for tracebacks (``NST_DEBUG=1``)."""
    return os.environ.get("NST_DEBUG", "") not in ("", "0")


def describe(exc: BaseException) -> tuple[str, int]:
    """The one line for ``exc`` and the exit status: 2 for what the user can change in the command, else 1."""
    if isinstance(exc, NSTError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError) and exc.errno in _DISK:
        where = f" writing {exc.filename}" if exc.filename else ""
        return (f"{_DISK[exc.errno]}{where}: free some space or choose a writable output folder "
                f"(paths.output_dir=<folder> or NST_OUTPUT_DIR); finished runs are kept"), 1
    name = type(exc).__name__
    if name in _WORKER_DIED:
        codes = re.search(r"exit codes? of the workers? (?:are|is) (\{.*?\})", str(exc))
        return (f"a worker process died{f' (exit codes {codes[1]})' if codes else ''}: it was killed or ran out "
                f"of memory; finished runs are kept, and re-running the same command runs the others"), 1
    if type(exc).__module__.startswith(("hydra.", "omegaconf.")):  # Hydra's own refusal of the config
        return _lines(exc), 2
    if getattr(exc, "message", None) and type(exc).__module__.startswith("mlflow"):
        return _lines(exc.message), 2  # an unknown run id, a filter MLflow cannot parse
    return f"{name}: {_lines(exc)} (a bug in nst: {_keep_traceback(exc)})", 1


def _lines(exc: BaseException | str, limit: int = 400) -> str:
    """The text of ``exc`` on one line: its lines joined, the exit codes of a dead worker kept."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _keep_traceback(exc: BaseException) -> str:
    """Where the traceback of an unexpected error is kept, in words."""
    try:
        with tempfile.NamedTemporaryFile("w", prefix="nst-traceback-", suffix=".txt", delete=False) as file:
            file.write("".join(traceback.format_exception(exc)))
        return f"the traceback is in {Path(file.name)}"
    except OSError:
        return "NST_DEBUG=1 prints the traceback"


def report(prog: str, exc: BaseException) -> int:
    """Print ``exc`` as ``<prog>: error: ...`` on stderr; the exit status."""
    line, status = describe(exc)
    print(f"{prog}: error: {line}", file=sys.stderr)
    return status
