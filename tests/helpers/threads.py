"""This process's threads, as tests that count them see them."""

from __future__ import annotations

import gc
import threading
import time

# threads that last as long as the process, by design: tqdm's monitor starts with the process's first progress
# bar, nst's heartbeat with its first recorded run (tests that run nst in this process start both)
LASTING_THREADS = ("tqdm_monitor", "nst-heartbeat")


def settled_threads() -> set[str]:
    """The names of this process's threads but the lasting ones, once the threads of objects that are already
    garbage have ended (an MLflow artifact repository's idle upload pool ends when the repository is collected:
    uncollected, it could end under a test that counts threads)."""
    gc.collect()
    names = other_threads()
    for _ in range(40):  # the collected pools' threads end within moments
        time.sleep(0.05)
        names, before = other_threads(), names
        if names == before:
            break
    return names


def other_threads() -> set[str]:
    """The names of this process's threads but the lasting ones."""
    return {t.name for t in threading.enumerate() if t.name not in LASTING_THREADS}
