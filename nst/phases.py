"""Where a run's seconds go: the phases of a job, timed back to back from the moment the process started.

One clock per process: ``lap(name)`` adds the seconds since the previous lap (the first: since the
process started) to the phase ``name`` of the job being run, so a job's phases always sum to the
time since the previous job ended. The job driver takes them (``take``) into the run's run.json
when the job has ended; the next job's phases start there.
"""

from __future__ import annotations

import os
import time

# what a phase is called, in the order a run goes through them
IMPORTS = "imports"  # the interpreter and the modules the command needs
CONFIG = "config"  # the command line checked, the config composed, the job's values and input files checked
STORE = "store"  # the MLflow store opened (created the first time) and the job's run created
BACKBONE = "backbone"  # the network built and its weights loaded
CALIBRATION = "calibration"  # its features calibrated
TARGETS = "targets"  # the content's features and the styles' Gram matrices at each scale
OPTIMISATION = "optimisation"  # the evaluations and the optimiser's steps
FILES = "files"  # result.png, losses.csv and run.json in the run's folder
RECORD = "record"  # the video closed, the figures and measures made, the run recorded in MLflow
ORDER = (IMPORTS, CONFIG, STORE, BACKBONE, CALIBRATION, TARGETS, OPTIMISATION, FILES, RECORD)


def process_age() -> float:
    """Seconds since this process started: from /proc on Linux, else 0 (the clock then starts when nst
    is imported)."""
    try:
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # starttime: clock ticks after boot
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


_last = time.monotonic() - process_age()  # the previous lap
_seconds: dict[str, float] = {}
_commands = 0  # commands begun in this process (tests run several in one)


def command_started() -> None:
    """A command begins: its first job's phases start with the imports since the process started (a
    later command in the same process starts from now)."""
    global _commands, _last
    _commands += 1
    _seconds.clear()
    if _commands == 1:
        lap(IMPORTS)
    else:
        _last = time.monotonic()


def lap(name: str) -> None:
    """The seconds since the previous lap belong to phase ``name`` of the job being run."""
    global _last
    now = time.monotonic()
    _seconds[name] = _seconds.get(name, 0.0) + max(now - _last, 0.0)
    _last = now


def take() -> dict[str, float]:
    """The job's phases in ``ORDER``, rounded to milliseconds, ending it: the next lap starts the next job's."""
    phases = {name: round(_seconds[name], 3) for name in sorted(_seconds, key=_rank)}
    _seconds.clear()
    return phases


def summary(phases: dict[str, float]) -> str:
    """``imports 2.1 s, config 0.4 s, ...``: a line for the debug log."""
    return ", ".join(f"{name} {seconds:.2f} s" for name, seconds in phases.items())


def _rank(name: str) -> int:
    return ORDER.index(name) if name in ORDER else len(ORDER)
