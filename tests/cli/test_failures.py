"""What reaches the top of a command (nst/cli/failures.py): one line and an exit status."""

import errno
from pathlib import Path

from nst.cli import failures
from nst.errors import ConfigError


class TerminatedWorkerError(Exception):
    """joblib's, by name (joblib is not imported by nst's commands)."""


def test_each_kind_of_failure_is_one_line_with_its_status():
    assert failures.describe(ConfigError("seed", "x", "a whole number")) == (
        "seed='x' is not allowed: a whole number", 2)
    line, status = failures.describe(OSError(errno.ENOSPC, "No space left on device", "/out/a/config.yaml"))
    assert status == 1 and line.startswith("no space left on the device writing /out/a/config.yaml: free some")
    died = TerminatedWorkerError("A worker process managed by the executor was unexpectedly terminated. This "
                                 "could be caused by a segmentation fault.\n\nThe exit codes of the workers are "
                                 "{SIGKILL(-9)}")
    assert failures.describe(died)[0].startswith("a worker process died (exit codes {SIGKILL(-9)}): ")


def test_a_bug_keeps_its_traceback_in_a_file_named_on_the_line():
    try:
        {}["missing"]
    except KeyError as exc:
        line, status = failures.describe(exc)
    assert status == 1 and line.startswith("KeyError: 'missing' (a bug in nst: the traceback is in ")
    kept = Path(line.rsplit(" ", 1)[1].rstrip(")"))
    assert "Traceback" in kept.read_text() and "{}[\"missing\"]" in kept.read_text()
    kept.unlink()
