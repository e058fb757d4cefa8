"""Sweeps beyond one machine: a Ray cluster runs the jobs, an MLflow tracking server holds the runs.

Starts a Ray head and an ``mlflow server`` on PostgreSQL (served artifacts; ``nst.cli.cluster``) on 127.0.0.1, runs
4-job sweeps through ``hydra/launcher=ray`` with ``tracking=server``, and reads everything back
through the server. Both are stopped at the end.

Not collected on its own: ``tests/system/test_distributed.py`` runs this file inside a network namespace
that has only the loopback interface, since Ray binds its ports to every interface.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from nst.cli import cluster as team
from nst.tracking import tags
from tests.helpers.waiting import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SWEEP = ["-m", "hydra/launcher=ray", "tracking=server", "content=tubingen", "style=starry_night", "model=random",
         "progress=false", "loss.style_weight=1,10,100,1000"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    interfaces = [name for _, name in socket.if_nameindex()]
    assert interfaces == ["lo"], f"run through tests/system/test_distributed.py (loopback only), not with {interfaces}"
    root = tmp_path_factory.mktemp("cluster")
    ray_temp = tempfile.mkdtemp(prefix="nstray", dir="/tmp")  # Ray's socket paths must stay short
    # PostgreSQL runs as its own user, which must reach its folder: not under pytest's private one
    database = Path(tempfile.mkdtemp(prefix="nst-ray-postgres-", dir="/tmp"))
    database.chmod(0o755)
    ray_port = free_port()
    ray_env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={ray_port}",
                        "--include-dashboard=false", "--num-cpus=2", f"--temp-dir={ray_temp}",
                        "--disable-usage-stats"], check=True, capture_output=True, env=ray_env, timeout=180)
        uri = team.start_tracking_server(root / "mlflow",
                                         team.start_database(database / "postgres", free_port()), free_port())
        yield {"uri": uri, "ray": f"127.0.0.1:{ray_port}", "root": root / "mlflow"}
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=ray_env, timeout=120)
        team.stop_tracking_server(root / "mlflow")
        team.stop_database(database / "postgres")
        shutil.rmtree(database, ignore_errors=True)
        shutil.rmtree(ray_temp, ignore_errors=True)


def run_sweep(cluster, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NST_OUTPUT_DIR": str(out), "RAY_ADDRESS": cluster["ray"],
           "MLFLOW_TRACKING_URI": cluster["uri"]}
    return subprocess.run([sys.executable, "-m", "nst.cli", *SWEEP, *extra], capture_output=True, text=True,
                          env=env, cwd=out.parent, timeout=900)


def sweep_parent(client: MlflowClient, experiment: str):
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               f"tags.`{tags.TAG_ROLE}` = 'sweep'", order_by=["attributes.start_time DESC"])
    return found[0]


def children(client: MlflowClient, parent):
    return client.search_runs([parent.info.experiment_id], f"tags.`{tags.PARENT_TAG}` = '{parent.info.run_id}'")


def test_ray_sweep_lands_in_the_tracking_server(cluster, tmp_path):
    done = run_sweep(cluster, tmp_path / "outputs", "image.size=32", "epochs=1", "optimizer.max_iter=3",
                     "tracking.experiment=ray_sweep")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=cluster["uri"])
    parent = sweep_parent(client, "ray_sweep")
    runs = children(client, parent)
    assert len(runs) == 4 and all(run.info.status == "FINISHED" for run in runs)
    assert sorted(float(run.data.params["loss.style_weight"]) for run in runs) == [1.0, 10.0, 100.0, 1000.0]
    # the grid and every run's images went through the server to its artifact destination
    grid = Image.open(client.download_artifacts(parent.info.run_id, "sweep/grid.png", str(tmp_path)))
    assert grid.width > 4 * 128
    assert any((cluster["root"] / "artifacts").rglob("result.png"))
    # the jobs ran in Ray's worker processes, not in the driver
    assert "_run_job pid=" in done.stdout + done.stderr


def test_a_killed_ray_worker_loses_no_other_run(cluster, tmp_path):
    """SIGKILL one Ray worker while it runs a job: Ray runs that job again, the dead attempt's run
    is marked FAILED, and the other runs are untouched."""
    client = MlflowClient(tracking_uri=cluster["uri"])
    killed: list[int] = []

    def kill_one_worker():
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            experiment = client.get_experiment_by_name("ray_kill")
            running = [] if experiment is None else client.search_runs(
                [experiment.experiment_id], f"tags.`{tags.TAG_ROLE}` = 'run' and attributes.status = 'RUNNING'")
            if running:
                workers = subprocess.run(["pgrep", "-f", "ray::_run_job"], capture_output=True, text=True)
                pids = [int(p) for p in workers.stdout.split()]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    done = run_sweep(cluster, tmp_path / "outputs", "image.size=64", "epochs=4", "optimizer.max_iter=10",
                     "tracking.experiment=ray_kill")
    killer.join()
    assert killed, "no Ray worker was seen running a job"
    parent = sweep_parent(client, "ray_kill")
    runs = children(client, parent)
    assert not [run for run in runs if run.info.status == "RUNNING"]  # nothing left hanging
    by_job: dict[str, list] = {}
    for run in runs:
        by_job.setdefault(run.data.tags[tags.TAG_JOB], []).append(run)
    assert len(by_job) == 4
    retried = [job for job, attempts in by_job.items() if len(attempts) > 1]
    assert len(retried) <= 1
    for job, attempts in by_job.items():
        latest = max(attempts, key=lambda run: run.info.start_time)
        earlier = [run for run in attempts if run is not latest]
        # ended by the sweep's end ("its worker process died ...") or, first, by the next job that opened
        # the store and found the attempt's process gone ("process died (no heartbeat since ...)")
        assert all(run.info.status == "FAILED" and ("worker" in run.data.tags.get(tags.TAG_FAILURE, "") or
                                                    run.data.tags.get(tags.TAG_FAILURE, "").startswith("process died"))
                   for run in earlier)
        if job not in retried:
            assert latest.info.status == "FINISHED"  # no other run is lost
    print(f"killed Ray worker {killed[0]}; exit {done.returncode}; attempts per job: "
          f"{ {job: [run.info.status for run in attempts] for job, attempts in sorted(by_job.items())} }")
    # the retried job either finished on its second attempt (exit 0) or is reported FAILED (exit 1)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    if done.returncode == 0:
        assert all(max(a, key=lambda r: r.info.start_time).info.status == "FINISHED" for a in by_job.values())
