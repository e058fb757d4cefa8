"""nst-report --relog (nst/tracking/relog.py): a run the store could not record loses nothing, and is
recorded later from its folder."""

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nst.errors import TrackingError
from nst.tracking import tags
from nst.tracking.relog import relog
from tests.helpers.cli import one_line_error, single_run, start_nst
from tests.helpers.config import compose_config
from tests.helpers.overrides import LONG_RUN, TRACKED_RUN
from tests.helpers.store import all_runs, hold_lock, metrics_logged, store_client
from tests.helpers.waiting import wait_for


def test_a_store_that_fills_up_mid_run_loses_nothing_and_relog_records_it(tmp_path, monkeypatch, calibrated):
    """The disk fills during the optimisation: the run goes on, its files are written, the error says how
    to record it, and ``nst-report --relog`` does once there is space again."""
    from nst.errors import UnrecordedRunError
    from nst.jobs import driver

    out = tmp_path / "outputs"
    cfg = compose_config(*TRACKED_RUN, "epochs=3", f"paths.output_dir={out}", "frame_every=2")
    real_log_batch = MlflowClient.log_batch

    def full(self, run_id, metrics=(), **kwargs):
        if metrics and metrics[-1].step > 4:
            raise sqlite3.OperationalError("database or disk is full")
        return real_log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", full)
    folder = tmp_path / "run"
    with pytest.raises(UnrecordedRunError) as raised:
        driver.run(cfg, folder)
    message = str(raised.value)
    assert "no space left on the device holding the MLflow store" in message
    assert f"nst-report --relog {folder}" in message and raised.value.exit_code == 1
    assert {"result.png", "losses.csv", "run.json"} <= {p.name for p in folder.iterdir()}
    monkeypatch.setattr(MlflowClient, "log_batch", real_log_batch)

    run_id, recorded = relog(folder)
    assert recorded
    run = store_client(out).get_run(run_id)
    rows = (folder / "losses.csv").read_text().splitlines()[1:]
    assert run.info.status == "FINISHED"
    assert len(store_client(out).get_metric_history(run_id, "total")) == len(rows)
    assert {"auto.ssim_content", "auto.color_distance_style"} <= set(run.data.metrics)  # from the logged inputs
    assert relog(folder) == (run_id, False)  # a second relog changes nothing


@pytest.mark.slow
def test_a_lock_held_beyond_the_wait_keeps_the_files_and_relog_records_them(tmp_path):
    out = tmp_path / "outputs"
    run = start_nst(out, *LONG_RUN, env={"NST_STORE_WAIT": "1"})
    wait_for(lambda: metrics_logged(out))
    holder = hold_lock(out / "mlflow.db", 600)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 1
    line = one_line_error(stderr)
    assert "stayed locked by another process" in line and "nst-report --relog" in line, line
    folder = Path(line.split("nst-report --relog ")[1].strip())
    assert {"result.png", "losses.csv", "run.json"} <= {p.name for p in folder.iterdir()}
    holder.kill()
    holder.wait()

    relogged = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--relog", str(folder)],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert relogged.returncode == 0, relogged.stderr[-3000:]
    (recorded,) = all_runs(out, None)
    assert recorded.info.status == "FINISHED" and tags.TAG_FAILURE not in recorded.data.tags
    rows = (folder / "losses.csv").read_text().splitlines()[1:]
    assert len(store_client(out).get_metric_history(recorded.info.run_id, "total")) == len(rows)
    artifacts = [a.path for a in store_client(out).list_artifacts(recorded.info.run_id, "result")]
    assert {"result/result.png", "result/triptych.png", "result/loss_curve.png"} <= set(artifacts)
    assert "optimisation.mp4" in [a.path for a in store_client(out).list_artifacts(recorded.info.run_id)]


def test_a_run_the_store_ended_otherwise_than_its_folder_is_recorded_as_the_folder_says(tmp_path, nst):
    """A signal while the run's end was recorded left the store saying KILLED, without the result, while the
    folder's run.json says FINISHED: relog completes it (it answered 'already recorded' before)."""
    done = single_run(nst, tmp_path, *TRACKED_RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(tmp_path / "outputs")
    (run,) = all_runs(tmp_path / "outputs")
    client.set_tag(run.info.run_id, tags.TAG_FAILURE, "interrupted (signal SIGTERM)")
    client.set_terminated(run.info.run_id, "KILLED")
    assert relog(tmp_path / "run") == (run.info.run_id, True)
    ended = client.get_run(run.info.run_id)
    assert ended.info.status == "FINISHED" and tags.TAG_FAILURE not in ended.data.tags
    assert relog(tmp_path / "run") == (run.info.run_id, False)


def test_relog_never_creates_a_store(tmp_path, nst):
    """The store's disk unmounted (the store gone from where the config says): relog says so, and does not
    make a new, empty store there."""
    done = single_run(nst, tmp_path, *TRACKED_RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    db = tmp_path / "outputs" / "mlflow.db"
    for path in db.parent.glob("mlflow.db*"):
        path.unlink()
    with pytest.raises(TrackingError, match=f"no MLflow store at {db}: is the disk that holds it mounted"):
        relog(tmp_path / "run")
    assert not db.exists()
