"""Ending a command's process as soon as its work is done.

When a command returns, the interpreter tears down every module it imported, one object at a
time; with torch and MLflow loaded that is a wait the user notices, after everything they asked for
is on disk and recorded. ``fast`` ends the process instead once the threads it waits for have
ended, the exit handlers have run (MLflow's, joblib's, logging's) and the output is flushed.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable


def fast(main: Callable[[], object]) -> Callable[[], None]:
    """A console entry point running ``main`` and ending the process with its exit status, without the
    interpreter's teardown. An exception other than ``SystemExit`` takes Python's usual way out."""

    def entry_point() -> None:
        try:
            status = main()
        except SystemExit as exc:
            status = exc.code
        leave(status)

    entry_point.__doc__ = main.__doc__
    return entry_point


def leave(status: object) -> None:
    """Exit with ``status`` (``SystemExit``'s meaning: None or 0, an int, or a message printed to stderr
    with status 1) the way Python would, less the teardown of modules."""
    if status is not None and not isinstance(status, int):
        print(status, file=sys.stderr)
        status = 1
    threading._shutdown()  # as the interpreter does first: thread pools told to end, non-daemon threads joined
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe whose reader has gone
            pass
    os._exit(status or 0)
