"""A joblib sweep's worker processes (nst/jobs/workers.py, and what nst says when one dies): a killed worker
is one line, not a traceback; workers whose launching process was killed finish their job and exit."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from nst.tracking import tags
from tests.helpers.cli import one_line_error, start_nst
from tests.helpers.overrides import LONG_SWEEP
from tests.helpers.store import all_runs, metrics_logged, running_with_metrics
from tests.helpers.waiting import wait_for

JOBLIB = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]


def pool_workers(launcher: int) -> list[int]:
    """The pids of the loky pool's workers started by the process ``launcher`` (not its resource trackers)."""
    listed = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(launcher)], capture_output=True, text=True)
    return [int(line.split()[0]) for line in listed.stdout.splitlines() if "--process-name LokyProcess" in line]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_killed_worker_is_one_line_and_its_runs_end_failed(tmp_path):
    """kill -9 of a worker: joblib's 34-line TerminatedWorkerError traceback, and no nst line, before."""
    out = tmp_path / "outputs"
    victim = start_nst(out, *LONG_SWEEP, *JOBLIB)
    wait_for(lambda: metrics_logged(out) and len(pool_workers(victim.pid)) == 2, timeout=240)
    os.kill(pool_workers(victim.pid)[0], signal.SIGKILL)
    _, stderr = victim.communicate(timeout=300)
    assert victim.returncode == 1, stderr[-3000:]
    line = one_line_error(stderr)
    assert stderr.rstrip().endswith(line), stderr[-3000:]  # the last word, no pool's warning after it
    assert line.startswith("nst: error: a worker process died (exit codes {"), line
    assert "re-running the same command runs the others" in line
    ended = all_runs(out, None)
    assert "RUNNING" not in {run.info.status for run in ended}
    for run in all_runs(out):  # a run whose folder says FINISHED is FINISHED in the store too (kill -9: no run.json)
        path = Path(run.data.tags[tags.TAG_OUTPUT_DIR]) / "run.json"
        record = json.loads(path.read_text()) if path.is_file() else {"status": None}
        assert record["status"] == "FINISHED" or run.info.status != "FINISHED", record
        assert run.info.status == "FINISHED" or record["status"] != "FINISHED", run.data.tags.get(tags.TAG_FAILURE)


@pytest.mark.slow
def test_workers_whose_launcher_was_killed_finish_their_job_and_exit(tmp_path):
    """kill -9 of the sweep's own process: its loky workers finished their jobs and then stayed (PPID 1,
    about 1.2 GB each) for more than 13 minutes."""
    out = tmp_path / "outputs"
    victim = start_nst(out, *LONG_SWEEP, *JOBLIB)
    wait_for(lambda: running_with_metrics(out) and pool_workers(victim.pid), timeout=240)
    workers = pool_workers(victim.pid)
    running = {run.info.run_id for run in all_runs(out) if run.info.status == "RUNNING"}
    victim.kill()
    victim.wait()  # not communicate(): the workers hold its output pipes open
    started = time.monotonic()
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=240)
    ended = {run.info.run_id: run.info.status for run in all_runs(out)}
    assert {ended[run_id] for run_id in running} == {"FINISHED"}, ended  # the jobs they held were finished
    print(f"workers gone {time.monotonic() - started:.1f} s after their launcher")
    victim.stdout.close()
    victim.stderr.close()
