"""Worker processes of a launcher's pool (joblib's loky) that end when the process that launched them is gone.

A pool's workers outlive a launching process that was killed (``kill -9``): each would
finish its job and then wait, idle and holding its memory, for work that never comes.
A worker finishes the job it is running (its run is recorded) and then exits.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

LAUNCHER_PID = "NST_LAUNCHER_PID"  # set by the nst command; a process with another pid is its worker
CHECK_EVERY_S = 1.0

_running = threading.Lock()  # held while this process runs a job
_watching = threading.Event()


def mark_launcher() -> None:
    """Make this process the launcher: the processes it starts know its pid."""
    os.environ[LAUNCHER_PID] = str(os.getpid())


@contextmanager
def job() -> Iterator[None]:
    """A job run in this process; in a worker of the launcher, the watch for its parent starts first."""
    launcher = os.environ.get(LAUNCHER_PID)
    if launcher and launcher != str(os.getpid()) and not _watching.is_set():
        _watching.set()
        threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), name="nst-parent-watch",
                         daemon=True).start()
    with _running:
        yield


def _exit_when_orphaned(parent: int) -> None:
    """Exit this process once its parent is gone (it was adopted by another) and no job is running."""
    while os.getppid() == parent:
        time.sleep(CHECK_EVERY_S)
    with _running:
        os._exit(0)
