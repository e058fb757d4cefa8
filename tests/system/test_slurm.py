"""Sweeps through SLURM (``hydra/launcher=slurm``) into an MLflow server on PostgreSQL: the cluster of
``make cluster`` (tests/system/conftest.py), every job an ``sbatch`` job, with a job cancelled and a job's
process killed on the node."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nst.compare import pareto
from nst.tracking import ownership, tags
from tests.helpers.cli import run_nst_process
from tests.helpers.overrides import PAIR
from tests.helpers.store import runs
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.slow

# one CPU per job, so the node's two CPUs run two jobs at a time
ON_SLURM = ["-m", "hydra/launcher=slurm", "tracking=server", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=20"]
RATIO = ["sweep=ratio", *PAIR, "model=random", "image.size=32", "epochs=1", "optimizer.max_iter=3", "progress=false"]
# four jobs that optimise for 15-40 s each: long enough to be cancelled and killed mid-optimisation
LONG_JOBS = [*PAIR, "model=random", "image.size=64", "epochs=30", "progress=false",
             "optimizer.convergence_tolerance=null", "loss.style_weight=1,10,100,1000"]


def sweep(cluster, out: Path, experiment: str, *overrides: str) -> subprocess.CompletedProcess:
    return run_nst_process(out, *ON_SLURM, f"tracking.experiment={experiment}", *overrides,
                           env={**cluster.environment(), "OMP_NUM_THREADS": "1"}, timeout=900)


def sacct(cluster, *job_ids: str) -> list[list[str]]:
    """``sacct``'s JobID, JobName, State, ExitCode and Elapsed of the allocations of ``job_ids``."""
    done = subprocess.run(["sacct", "-X", "-n", "-P", "--format=JobID,JobName,State,ExitCode,Elapsed",
                           "-j", ",".join(job_ids)], capture_output=True, text=True, env={**os.environ,
                                                                                         **cluster.environment()})
    assert done.returncode == 0, done.stderr
    return [line.split("|") for line in done.stdout.splitlines() if line]


def submitted(sweep_dir: Path) -> list[str]:
    """The SLURM job ids submitit submitted for a sweep (its folders under ``.submitit``), as ``array_task``."""
    return sorted((path.name for path in (sweep_dir / ".submitit").iterdir()
                   if path.is_dir() and "_" in path.name and path.name.replace("_", "").isdigit()),
                  key=lambda job: [int(part) for part in job.split("_")])


def sweep_dirs(out: Path) -> list[Path]:
    return sorted((out / "multiruns").iterdir())


def children(client: MlflowClient, parent_id: str) -> list:
    experiment = client.get_run(parent_id).info.experiment_id
    return client.search_runs([experiment], f"tags.`{tags.PARENT_TAG}` = '{parent_id}'")


def test_the_ratio_sweep_runs_as_slurm_jobs_into_the_postgresql_server(cluster, tmp_path):
    out = tmp_path / "outputs"
    done = sweep(cluster, out, "slurm_ratio", *RATIO)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(cluster.tracking_uri)
    [parent] = runs(client, "sweep", experiment="slurm_ratio")
    assert parent.info.status == "FINISHED"
    finished = children(client, parent.info.run_id)
    assert sorted(float(run.data.params["loss.style_weight"]) for run in finished) == [0.01, 0.1, 1, 10, 100, 1e4]
    assert all(run.info.status == "FINISHED" for run in finished)
    # every job went through sbatch and SLURM's accounting saw it complete, on the cluster's node
    [sweep_dir] = sweep_dirs(out)
    jobs = submitted(sweep_dir)
    lines = sacct(cluster, *{job.split("_")[0] for job in jobs})
    print("\n".join("|".join(line) for line in lines))
    assert sorted(line[0] for line in lines) == sorted(jobs) and len(jobs) == 6
    assert all(line[2] == "COMPLETED" and line[3] == "0:0" for line in lines)
    # each run was recorded by the process SLURM started, not by the launching one
    assert {run.data.tags[tags.TAG_OWNER].split(":")[1] for run in finished} != {str(os.getpid())}
    # the report and grid: one row and one picture per job
    report = (sweep_dir / "report.html").read_text()
    assert all(f"job {job}" in report for job in range(6))
    assert (sweep_dir / "grid.png").stat().st_size > 0
    assert "sweep/grid.png" in [item.path for item in client.list_artifacts(parent.info.run_id, "sweep")]


def test_a_cancelled_job_and_a_killed_job_end_at_once_and_a_rerun_runs_only_them(cluster, tmp_path):
    """``scancel`` of one job and ``kill -9`` of another's process on the node while they optimise: both runs
    end (with the reason) within the heartbeat interval, the others finish, the sweep exits 1 naming the two;
    the same command again runs those two jobs only."""
    out, experiment = tmp_path / "outputs", "slurm_faults"
    client = MlflowClient(cluster.tracking_uri)
    environment = {**os.environ, **cluster.environment()}
    faults: dict[str, tuple[str, float]] = {}  # job number -> (what was done, when)

    def running_job(number: str):
        """The RUNNING run of sweep job ``number`` once it has logged a step, if any."""
        for run in runs(client, status="RUNNING", experiment=experiment):
            if run.data.tags.get(tags.TAG_JOB) == number and run.data.metrics:
                return run
        return None

    def inject():
        try:
            run = wait_for(lambda: running_job("0"), timeout=300, interval=1)
            array_task = slurm_job_of(out, "0")
            subprocess.run(["scancel", array_task], check=True, env=environment)
            faults["0"] = (f"scancel {array_task}", time.time())
            run = wait_for(lambda: running_job("1"), timeout=300, interval=1)
            pid = int(run.data.tags[tags.TAG_OWNER].split(":")[1])
            os.kill(pid, signal.SIGKILL)
            faults["1"] = (f"kill -9 {pid}", time.time())
        except AssertionError:
            pass

    injector = threading.Thread(target=inject)
    injector.start()
    done = sweep(cluster, out, experiment, *LONG_JOBS)
    injector.join()
    assert set(faults) == {"0", "1"}, f"not both faults were injected: {faults}; {done.stderr[-2000:]}"
    assert done.returncode == 1, done.stderr[-3000:]
    assert "job 0" in done.stderr and "job 1" in done.stderr

    [parent] = runs(client, "sweep", experiment=experiment)
    by_job = {run.data.tags[tags.TAG_JOB]: run for run in children(client, parent.info.run_id)}
    assert sorted(by_job) == ["0", "1", "2", "3"]
    for job in ("0", "1"):
        run = by_job[job]
        assert run.info.status in ("FAILED", "KILLED"), (job, run.info.status)
        assert run.data.tags.get(tags.TAG_FAILURE), f"job {job} ended without a reason"
        ended_after = run.info.end_time / 1000 - faults[job][1]
        assert ended_after < ownership.HEARTBEAT_S, f"job {job} ({faults[job][0]}) ended {ended_after:.0f} s after"
        print(f"job {job}: {faults[job][0]} -> {run.info.status} {ended_after:.1f} s later: "
              f"{run.data.tags[tags.TAG_FAILURE]}")
    assert by_job["1"].info.status == "FAILED"
    assert all(by_job[job].info.status == "FINISHED" for job in ("2", "3"))
    [sweep_dir] = sweep_dirs(out)
    print("\n".join("|".join(line) for line in sacct(cluster, *{j.split("_")[0] for j in submitted(sweep_dir)})))

    again = sweep(cluster, out, experiment, *LONG_JOBS)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = [run for run in runs(client, experiment=experiment) if run.info.run_id not in
             {r.info.run_id for r in by_job.values()}]
    assert sorted(run.data.tags[tags.TAG_JOB] for run in rerun) == ["0", "1"]
    assert all(run.info.status == "FINISHED" for run in rerun)
    assert not runs(client, status="RUNNING", experiment=experiment)


def slurm_job_of(out: Path, number: str) -> str:
    """The SLURM array task that runs sweep job ``number`` of the (only) sweep under ``out``."""
    [sweep_dir] = sweep_dirs(out)
    return wait_for(lambda: next((job for job in submitted(sweep_dir) if job.endswith(f"_{number}")), None))


def test_a_search_sends_each_round_of_trials_to_slurm(cluster, tmp_path):
    """sweep=pareto through SLURM: two rounds of two trials, each round one array job; Optuna is told what each
    job's run logged in the server."""
    out = tmp_path / "outputs"
    done = sweep(cluster, out, "slurm_search", "sweep=pareto", *RATIO[1:], "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.n_jobs=2", "hydra.sweeper.startup_trials=2")
    assert done.returncode == 0, done.stderr[-3000:]
    [sweep_dir] = sweep_dirs(out)
    study = pareto.read_study(sweep_dir)
    assert list(study.table["state"]) == ["COMPLETE"] * 4
    client = MlflowClient(cluster.tracking_uri)
    for row in study.table.to_dict("records"):
        logged = client.get_run(row["run_id"])
        assert logged.info.status == "FINISHED"
        assert [logged.data.metrics[name] for name in study.objectives] == [row[name] for name in study.objectives]
    jobs = submitted(sweep_dir)
    assert len(jobs) == 4 and len({job.split("_")[0] for job in jobs}) == 2  # two arrays of two tasks
