"""hydra/launcher=slurm (nst/jobs/slurm.py): every SLURM job waited for, one that ended without a result reported
failed at once (its run ended with SLURM's reason) while the others go on. submitit's jobs are faked; sacct, squeue
and scancel are small scripts on PATH that answer as SLURM would; the watcher is submitit's own."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobReturn, JobStatus

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

from submitit.core.utils import FailedJobError  # noqa: E402
from submitit.slurm.slurm import SlurmInfoWatcher  # noqa: E402

from nst.jobs import driver, slurm, sweep_callback  # noqa: E402
from nst.tracking import ownership, store, tags  # noqa: E402

# The SLURM commands as scripts: each sacct call for states answers with the next of sacct.<n>.txt (the last one
# again once they run out); squeue's n-th call lists squeue.<n>.txt (nothing without one); scancel notes its arguments.
COMMANDS = {
    "sacct": """#!/bin/sh
cd "$(dirname "$0")"
case "$*" in
  *ExitCode*) for last; do :; done; grep "^$last|" exits.txt | cut -d'|' -f2; exit 0 ;;
esac
n=$(cat calls 2>/dev/null || echo 0)
echo $((n + 1)) > calls
answer=sacct.$n.txt
[ -f "$answer" ] || answer=$(ls sacct.*.txt | sort -V | tail -1)
echo "JobID|State|NodeList"
cat "$answer"
""",
    "squeue": """#!/bin/sh
cd "$(dirname "$0")"
n=$(cat squeue_calls 2>/dev/null || echo 0)
echo $((n + 1)) > squeue_calls
cat "squeue.$n.txt" 2>/dev/null
exit 0
""",
    "scancel": """#!/bin/sh
echo "$*" >> "$(dirname "$0")/scancelled"
""",
}


@pytest.fixture
def slurm_bin(tmp_path, monkeypatch) -> Path:
    """A folder of SLURM commands put first on PATH; a test writes their answers into it."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, script in COMMANDS.items():
        (folder / name).write_text(script)
        (folder / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(driver, "failed_jobs", [])
    return folder


def answers(folder: Path, *rounds: str, squeue: dict[int, str] | None = None, exits: str = "") -> None:
    """sacct's state lines for each round, squeue's listing for some of its calls, sacct's exit codes."""
    for number, lines in enumerate(rounds):
        (folder / f"sacct.{number}.txt").write_text(lines)
    for number, listing in (squeue or {}).items():
        (folder / f"squeue.{number}.txt").write_text(listing)
    (folder / "exits.txt").write_text(exits)


def sacct_calls(folder: Path, command: str = "sacct") -> int:
    """How often ``command`` was asked (sacct: for states)."""
    return int((folder / ("calls" if command == "sacct" else f"{command}_calls")).read_text())


class FakeJob:
    """A submitit SlurmJob as the launcher uses it: its id, the watcher shared by the sweep's jobs, its result
    file, and its results (``outcome``: a JobReturn, or the exception submitit raises)."""

    def __init__(self, job_id: str, watcher: SlurmInfoWatcher, folder: Path, outcome=None, on_results=None):
        self.job_id, self.watcher, self.outcome, self.on_results = job_id, watcher, outcome, on_results
        self.paths = SimpleNamespace(result_pickle=folder / f"{job_id}_result.pkl")
        watcher.register_job(job_id)

    def results(self) -> list:
        if self.on_results:
            self.on_results()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return [self.outcome]


def returned(value) -> JobReturn:
    job_return = JobReturn(overrides=["seed=1"], status=JobStatus.COMPLETED)
    job_return.return_value = value
    return job_return


@pytest.mark.parametrize(("state", "exit_code", "reason"), [
    ("CANCELLED by 0", "0:0", "SLURM job 12_3 CANCELLED by 0"),
    ("FAILED", "0:9", "SLURM job 12_3 FAILED (exit 0:9)"),
    ("OUT_OF_MEMORY", "0:125", "SLURM job 12_3 OUT_OF_MEMORY (exit 0:125)"),
    ("NODE_FAIL", "", "SLURM job 12_3 NODE_FAIL"),
    ("", "", "SLURM job 12_3 UNKNOWN"),
])
def test_the_reason_names_the_slurm_job_its_state_and_any_exit_code(state, exit_code, reason):
    assert slurm.slurm_reason("12_3", state, exit_code) == reason


def test_every_job_is_waited_for_and_a_cancelled_one_is_reported_failed_as_soon_as_sacct_says_so(
        slurm_bin, tmp_path, capsys):
    answers(slurm_bin,
            "7_0|RUNNING|node\n7_1|RUNNING|node\n7_2|PENDING|None\n",
            "7_0|COMPLETED|node\n7_1|CANCELLED by 0|node\n7_2|RUNNING|node\n",
            "7_0|COMPLETED|node\n7_1|CANCELLED by 0|node\n7_2|COMPLETED|node\n")
    watcher = SlurmInfoWatcher()
    failed_before_job_2: list[str] = []
    jobs = [FakeJob("7_0", watcher, tmp_path, returned(0.5)),
            FakeJob("7_1", watcher, tmp_path, returned("never taken")),
            FakeJob("7_2", watcher, tmp_path, returned(0.25),
                    on_results=lambda: failed_before_job_2.extend(driver.failed_jobs))]
    overrides = [["loss.style_weight=1"], ["loss.style_weight=100"], ["loss.style_weight=1e4"]]

    returns = slurm.wait_for_jobs(jobs, [0, 1, 2], overrides, poll_s=0)

    assert [job_return.return_value for job_return in returns] == [0.5, None, 0.25]
    lost = returns[1]
    assert lost.status == JobStatus.COMPLETED and lost.overrides == overrides[1]
    assert driver.failed_jobs == ["job 1"]
    assert failed_before_job_2 == ["job 1"]  # job 1 was reported in the round sacct said it ended
    assert sacct_calls(slurm_bin) == 3  # one sacct call per round, for every job at once
    assert "nst: job 1 did not finish: SLURM job 7_1 CANCELLED by 0\n" in capsys.readouterr().err


def test_a_job_still_ending_is_taken_once_squeue_no_longer_lists_it(slurm_bin, tmp_path):
    answers(slurm_bin, "7_0|CANCELLED by 0|node\n", squeue={0: "7_0\n"})
    jobs = [FakeJob("7_0", SlurmInfoWatcher(), tmp_path)]

    (job_return,) = slurm.wait_for_jobs(jobs, [4], [["seed=1"]], poll_s=0)

    assert job_return.return_value is None and driver.failed_jobs == ["job 4"]
    assert sacct_calls(slurm_bin, "squeue") == 2  # listed (its processes ending) in the first round: taken in the next


def test_a_job_listed_for_longer_than_it_may_settle_is_taken_as_it_is(slurm_bin, tmp_path, monkeypatch):
    answers(slurm_bin, "7_0|CANCELLED by 0|node\n", squeue={0: "7_0\n", 1: "7_0\n"})
    monkeypatch.setattr(slurm, "SETTLE_S", 0.0)

    (job_return,) = slurm.wait_for_jobs([FakeJob("7_0", SlurmInfoWatcher(), tmp_path)], [0], [["seed=1"]], poll_s=0)

    assert job_return.return_value is None and sacct_calls(slurm_bin, "squeue") == 1


def test_a_job_that_raised_is_reported_with_its_sacct_state_and_exit_code(slurm_bin, tmp_path, capsys):
    answers(slurm_bin, "7_0|FAILED|node\n", exits="7_0|1:0\n")
    job = FakeJob("7_0", SlurmInfoWatcher(), tmp_path, FailedJobError("Job (task=0) failed during processing"))
    job.paths.result_pickle.write_bytes(b"an error")

    (job_return,) = slurm.wait_for_jobs([job], [0], [["seed=1"]], poll_s=0)

    assert job_return.status == JobStatus.COMPLETED and job_return.return_value is None
    assert "nst: job 0 did not finish: SLURM job 7_0 FAILED (exit 1:0)\n" in capsys.readouterr().err


def test_a_lost_job_ends_its_running_run_and_leaves_the_runs_that_ended_themselves(slurm_bin, tmp_path, monkeypatch):
    client = store.open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", create=True,
                              artifact_root=(tmp_path / "mlartifacts").as_uri())
    experiment = client.create_experiment("nst", artifact_location=(tmp_path / "mlartifacts" / "nst").as_uri())
    parent = client.create_run(experiment, tags={tags.TAG_ROLE: "sweep"}).info.run_id

    def child(job: int) -> str:
        return client.create_run(experiment, tags={tags.TAG_ROLE: "run", tags.PARENT_TAG: parent,
                                                   tags.TAG_JOB: str(job)}).info.run_id

    running, other = child(1), child(2)
    killed = child(1)  # an attempt that ended itself (a scancel: nst's handler ended it KILLED)
    client.set_tag(killed, tags.TAG_FAILURE, "interrupted (signal SIGTERM)")
    client.set_terminated(killed, "KILLED")
    callback = sweep_callback.SweepCallback()
    callback.client, callback.parent = client, parent
    monkeypatch.setattr(sweep_callback, "_open", callback)

    slurm.lost_job(1, ["seed=2"], "SLURM job 7_1 FAILED (exit 0:9)")

    ended = client.get_run(running)
    assert ended.info.status == "FAILED"
    assert ended.data.tags[tags.TAG_FAILURE] == f"{ownership.DIED}: SLURM job 7_1 FAILED (exit 0:9)"
    assert store.ended_as_dead(ended)  # nst-report --relog may record what its folder holds
    assert client.get_run(killed).info.status == "KILLED"
    assert client.get_run(killed).data.tags[tags.TAG_FAILURE] == "interrupted (signal SIGTERM)"
    assert client.get_run(other).info.status == "RUNNING"
    assert driver.failed_jobs == ["job 1"]


def test_ctrl_c_cancels_the_jobs_that_have_not_ended(slurm_bin, tmp_path):
    answers(slurm_bin, "7_0|COMPLETED|node\n7_1|RUNNING|node\n7_2|PENDING|None\n")
    watcher = SlurmInfoWatcher()
    jobs = [FakeJob(job_id, watcher, tmp_path) for job_id in ("7_0", "7_1", "7_2")]
    watcher.update()

    slurm.cancel(jobs)

    assert (slurm_bin / "scancelled").read_text() == "7_1 7_2\n"
