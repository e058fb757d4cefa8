"""The MLflow store (nst/tracking/store.py): reached or refused in one line, waited for when locked, full
disks named, runs whose process died ended FAILED, the artifact folder checked before any run; several
processes writing at once lose nothing (real processes, real SQLite)."""

import dataclasses
import errno
import os
import signal
import sqlite3
import time
from contextlib import closing

import pytest

from nst.errors import TrackingError
from nst.files import is_partial
from nst.tracking import database, store, tags, ui
from tests.helpers.cli import one_line_error, report, start_nst
from tests.helpers.disks import fill_disk
from tests.helpers.overrides import LONG_RUN, QUICK, SWEEP_JOB, TRACKED_RUN
from tests.helpers.store import (
    all_runs,
    hold_lock,
    metrics_logged,
    running_with_metrics,
    runs,
    store_client,
)
from tests.helpers.waiting import wait_for


def test_unreachable_tracking_server_fails_fast_with_uri(tmp_path, nst):
    start = time.perf_counter()
    done = nst(tmp_path / "outputs", "content=tubingen", "style=starry_night", *QUICK,
               "tracking.uri=http://127.0.0.1:9")
    assert done.returncode == 2
    assert "http://127.0.0.1:9" in done.stderr and "not reachable" in done.stderr
    assert time.perf_counter() - start < 60
    assert not list((tmp_path / "outputs").rglob("result.png"))


@pytest.mark.parametrize("where", ["under /proc", pytest.param("below a file", marks=pytest.mark.slow)])
def test_an_artifact_folder_that_cannot_be_written_is_one_line_before_any_run(tmp_path, where, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    (tmp_path / "a-file").write_text("")
    artifacts = "/proc/nst-artifacts" if where == "under /proc" else tmp_path / "a-file" / "artifacts"
    done = nst(out, *TRACKED_RUN, f"tracking.artifact_location={artifacts}")
    assert done.returncode == 2
    assert f"the artifact folder {artifacts} cannot be written" in one_line_error(done.stderr)
    assert all_runs(out, None) == []


@pytest.mark.slow
def test_an_artifact_location_the_experiment_does_not_use_is_refused(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    assert nst(out, *TRACKED_RUN, f"tracking.artifact_location={tmp_path / 'first'}").returncode == 0
    done = nst(out, *TRACKED_RUN, f"tracking.artifact_location={tmp_path / 'second'}")
    assert done.returncode == 2
    line = one_line_error(done.stderr)
    assert "tracking.artifact_location=" in line and (tmp_path / "first").as_uri() in line, line


@pytest.mark.slow
def test_an_older_experiment_gets_the_model_training_tag_on_first_use(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    from nst.tracking import database

    database.ensure_store(out / "mlflow.db", (out / "mlartifacts").as_uri())
    store_client(out).create_experiment("nst")  # as an nst before this tag made it
    key, kind = tags.EXPERIMENT_KIND
    assert key not in store_client(out).get_experiment_by_name("nst").tags
    assert nst(out, *SWEEP_JOB).returncode == 0
    assert store_client(out).get_experiment_by_name("nst").tags[key] == kind


def test_step_images_reads_mlflows_file_names_and_prefers_the_full_size_png():
    class Item:
        def __init__(self, path):
            self.path = path

    class Client:
        def list_artifacts(self, run_id, path):
            return [Item("images/progress+step+0+timestamp+5+0a-1b+compressed.webp"),
                    Item("images/progress+step+0+timestamp+5+0a-1b.png"),
                    Item("images/progress%step%10%timestamp%7%ff-ee.png"),  # MLflow before 3
                    Item("images/progress+step+10+timestamp+9+aa-bb.png"),  # logged twice: the latest
                    Item("images/other+step+3+timestamp+1+cc.png")]

    assert store.step_images(Client(), "r") == {0: "images/progress+step+0+timestamp+5+0a-1b.png",
                                                  10: "images/progress+step+10+timestamp+9+aa-bb.png"}


# --- locks and full disks ---------------------------------------------------------------------------


def test_every_address_of_a_local_store_uses_the_port_its_ui_was_last_given(tmp_path, monkeypatch):
    """``make ui UI_PORT=5077`` (or any command run with NST_UI_PORT) is remembered beside the store, so
    nst-report, nst-review and later runs started without the variable link to the same UI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv(ui.PORT_ENV, raising=False)
    assert store.run_address(uri, "1", "abc").startswith("http://127.0.0.1:5000/#/experiments/1/runs/abc?")
    monkeypatch.setenv(ui.PORT_ENV, "5077")
    assert store.run_address(uri, "1", "abc").startswith("http://127.0.0.1:5077/")
    monkeypatch.delenv(ui.PORT_ENV)
    assert store.run_address(uri, "1", "abc", "sweep/report.html").startswith(
        "http://127.0.0.1:5077/#/experiments/1/runs/abc/artifacts/sweep/report.html?")
    other = f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}"  # another store keeps its own
    assert store.run_address(other, "1", "abc").startswith("http://127.0.0.1:5000/")
    # a tracking server's own address wins
    assert store.run_address("http://tracking.example:8080/", "1", "abc").startswith("http://tracking.example:8080/#")


def test_a_locked_call_is_retried_and_a_full_disk_is_one_line(monkeypatch):
    monkeypatch.setenv("NST_STORE_WAIT", "5")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "written"

    assert store.guarded("sqlite:////x/mlflow.db", flaky) == "written" and len(calls) == 3
    with pytest.raises(TrackingError, match=r"no space left on the device holding the MLflow store /x/mlflow.db"):
        store.guarded("sqlite:////x/mlflow.db", lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))


def _store_with_one_run(tmp_path, nst):
    """An output folder whose store holds one FINISHED run (so the schema exists before a lock is taken)."""
    out = tmp_path / "outputs"
    out.mkdir()
    assert nst(out, *TRACKED_RUN).returncode == 0
    return out


@pytest.mark.slow
def test_a_lock_held_before_the_start_is_waited_out(tmp_path, nst):
    out = _store_with_one_run(tmp_path, nst)
    holder = hold_lock(out / "mlflow.db", 8)
    started = time.time()
    done = nst(out, *TRACKED_RUN, "seed=1")
    holder.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.time() - started >= 8 - 1
    assert sorted(r.info.status for r in all_runs(out, None)) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_a_lock_held_beyond_the_wait_before_the_start_is_one_line(tmp_path, nst):
    out = _store_with_one_run(tmp_path, nst)
    holder = hold_lock(out / "mlflow.db", 120)
    done = nst(out, *TRACKED_RUN, "seed=1", env={"NST_STORE_WAIT": "1"})
    holder.kill()
    holder.wait()
    assert done.returncode == 2
    line = one_line_error(done.stderr)
    assert f"the MLflow store {out / 'mlflow.db'} stayed locked by another process for " in line, line
    assert "NST_STORE_WAIT=1 s" in line
    assert [r.info.status for r in all_runs(out, None)] == ["FINISHED"]  # the refused run was never created


@pytest.mark.slow
def test_a_disk_that_fills_while_a_run_optimises_leaves_whole_files_and_says_what_the_store_lacks(small_disk):
    """The disk fills mid-run: one error line, exit 1, and no empty or half-written file (the video's partial
    file removed). A store on that disk cannot record the run's end either: the process says so and what
    will end it, and once there is space the next command does."""
    out = small_disk(8192) / "outputs"
    victim = start_nst(out, *LONG_RUN, "frame_every=1")
    wait_for(lambda: metrics_logged(out))
    filler = fill_disk(out)
    _, stderr = victim.communicate(timeout=300)
    assert victim.returncode == 1, stderr[-3000:]
    line = one_line_error(stderr)
    assert "no space left" in line.lower(), line
    left = [p for p in out.rglob("*") if p.is_file() and p != filler and not p.name.startswith("mlflow.db")
            and p.suffix != ".log"]  # Hydra's log: empty when nothing was logged before the disk filled
    assert not [p for p in left if p.stat().st_size == 0 or is_partial(p)], left
    (running,) = all_runs(out, None)
    if running.info.status == "RUNNING":  # nothing could be written: the process said so
        assert "the next nst or nst-report that opens the store ends it FAILED" in stderr, stderr[-3000:]
    filler.unlink()
    assert report(out).returncode == 0
    (failed,) = all_runs(out, None)
    assert failed.info.status == "FAILED"


@pytest.mark.slow
def test_a_disk_that_fills_up_during_a_run_gives_one_line_and_leaves_nothing_running(small_disk, nst):
    out = small_disk(2048) / "outputs"
    out.mkdir()
    database.ensure_store(out / "mlflow.db", (out / "mlartifacts").as_uri())  # about 950 KiB
    filler = fill_disk(out)
    os.truncate(filler, max(0, filler.stat().st_size - 40 * 1024))  # leave about 40 KiB free
    done = nst(out, *TRACKED_RUN)
    assert done.returncode in (1, 2)
    line = one_line_error(done.stderr)
    assert "no space left" in line.lower() or "No space left on device" in line, line
    # every file is whole or absent: no empty result.png or optimisation.mp4, no file left half-written
    left = [p for p in out.rglob("*") if p.is_file() and p != filler and not p.name.startswith("mlflow.db")]
    assert not [p for p in left if p.stat().st_size == 0 or is_partial(p)], left
    filler.unlink()  # space again: the store is usable, nothing is left RUNNING
    assert "Traceback" not in report(out).stderr
    assert nst(out, *TRACKED_RUN, "seed=1").returncode == 0
    runs = all_runs(out, None)
    assert "FINISHED" in {r.info.status for r in runs} and "RUNNING" not in {r.info.status for r in runs}


# --- runs whose process died ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single run", "sequential sweep"])
def test_kill_9_mid_optimisation_leaves_nothing_running(tmp_path, mode, nst):
    out = tmp_path / "outputs"
    args = [*LONG_RUN, "seed=0"] if mode == "single run" else ["-m", *LONG_RUN, "seed=0,1"]
    victim = start_nst(out, *args)
    wait_for(lambda: metrics_logged(out))
    victim.kill()
    victim.communicate()
    assert {r.info.status for r in all_runs(out, None)} == {"RUNNING"}  # what kill -9 leaves behind

    listed = report(out, "--format", "csv")
    assert listed.returncode == 0, listed.stderr[-3000:]
    runs = all_runs(out, None)
    assert runs and {r.info.status for r in runs} == {"FAILED"}, [(r.info.status, r.data.tags) for r in runs]
    for run in runs:
        assert run.data.tags[tags.TAG_FAILURE].startswith("process died (no heartbeat since ")
    assert len(all_runs(out, "sweep")) == (1 if mode == "sequential sweep" else 0)
    assert "RUNNING" not in listed.stdout and "FAILED" in listed.stdout
    assert "left RUNNING by a process that died are now FAILED" in listed.stderr


# --- several processes at once: joblib workers ------------------------------------------------------


@pytest.mark.slow  # 14-21 s: make test stays under 10 minutes
def test_joblib_workers_lose_no_run(tmp_path, nst_process):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst_process(out, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *SWEEP_JOB,
               "loss.style_weight=1,2,3,4")
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    children = runs(client, "run")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    parent = runs(client, "sweep")[0].info.run_id
    assert {c.data.tags[tags.PARENT_TAG] for c in children} == {parent}
    assert sorted(float(c.data.params["loss.style_weight"]) for c in children) == [1, 2, 3, 4]
    assert "database is locked" not in done.stderr


@pytest.mark.slow
def test_killed_joblib_worker_loses_no_other_run(tmp_path, nst_process):
    out = tmp_path / "outputs"
    out.mkdir()
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "content=tubingen", "style=starry_night",
            "model=random", "image.size=48", "epochs=30", "optimizer.max_iter=5", "progress=false",
            "loss.style_weight=1,2,3,4", "optimizer.convergence_tolerance=null"]  # long enough to be killed
    process = start_nst(out, *args)
    victim = wait_for(lambda: running_with_metrics(out))
    worker = int(victim.data.tags["nst.pid"])
    assert worker != process.pid
    os.kill(worker, signal.SIGKILL)
    process.communicate(timeout=300)
    assert process.returncode != 0
    runs = all_runs(out)  # the store is readable
    assert all(r.info.status in ("FINISHED", "FAILED", "KILLED") for r in runs)
    assert store_client(out).get_run(victim.info.run_id).info.status in ("FAILED", "KILLED")
    finished_before = {r.info.run_id for r in runs if r.info.status == "FINISHED"}

    again = nst_process(out, *args, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    finished = [r for r in all_runs(out) if r.info.status == "FINISHED"]
    assert sorted(float(r.data.params["loss.style_weight"]) for r in finished) == [1, 2, 3, 4]
    assert finished_before <= {r.info.run_id for r in finished}  # nothing recorded was lost


@pytest.mark.slow
def test_eight_jobs_on_four_workers_record_eight_children(tmp_path, nst_process):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst_process(out, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "content=tubingen",
               "style=starry_night", *QUICK, "loss.style_weight=1,2,3,4,5,6,7,8", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = all_runs(out)
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    assert sorted(float(r.data.params["loss.style_weight"]) for r in runs) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert "database is locked" not in done.stderr


def test_a_named_database_keeps_artifacts_under_the_output_root_not_the_working_folder(tmp_path, nst):
    """With tracking.uri naming an SQLite file, MLflow put the experiment's artifacts in ./mlruns of whatever
    folder the first run started in, and every later run followed."""
    out, elsewhere = tmp_path / "outputs", tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = nst(out, *TRACKED_RUN, f"tracking.uri=sqlite:///{tmp_path / 'team.db'}", cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-3000:]
    client = store.StoreClient(f"sqlite:///{tmp_path / 'team.db'}")
    experiment = client.get_experiment_by_name("nst")
    assert experiment.artifact_location == (out / "mlartifacts").resolve().as_uri()
    assert not (elsewhere / "mlruns").exists()
    (run,) = client.search_runs([experiment.experiment_id])
    assert "result/result.png" in {a.path for a in client.list_artifacts(run.info.run_id, "result")}


# --- opened once per command ----------------------------------------------------------------------


def _ensured(monkeypatch) -> list:
    """The stores ``database.ensure_store`` is asked to create or check from now on, in order."""
    asked = []
    ensure = database.ensure_store

    def counted(db, artifact_root):
        asked.append(db)
        ensure(db, artifact_root)

    monkeypatch.setattr(database, "ensure_store", counted)
    return asked


def test_the_jobs_of_a_sweep_open_the_store_once_and_the_next_command_checks_it_again(tmp_path, monkeypatch, nst):
    out = tmp_path / "outputs"
    asked = _ensured(monkeypatch)
    done = nst(out, "-m", *SWEEP_JOB, "loss.style_weight=1,100")
    assert done.returncode == 0, done.stderr[-3000:]
    assert asked == [out.resolve() / "mlflow.db"]  # the sweep's parent opened it; its two jobs did not again
    with closing(sqlite3.connect(out / "mlflow.db")) as connection:  # not MLflow: its engine keeps the file open
        assert connection.execute("SELECT count(*) FROM runs").fetchone() == (3,)  # the parent and two jobs
    for path in out.glob("mlflow.db*"):  # deleted between two commands: the next one makes a new one
        path.unlink()
    done = nst(out, *TRACKED_RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(asked) == 2
    assert [r.info.status for r in all_runs(out)] == ["FINISHED"]
    assert nst(out, *TRACKED_RUN, "seed=1").returncode == 0
    assert len(asked) == 3  # each command checks it again


def test_connect_returns_the_same_client_until_forgotten_or_the_store_file_is_replaced(tmp_path, monkeypatch):
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    monkeypatch.setattr(store, "_connections", {})
    asked = _ensured(monkeypatch)
    spec = store.TrackingSpec(enabled=True, uri=None, artifact_location=None, experiment="nst", resume=False,
                              output_dir=str(tmp_path / "outputs"))
    client, experiment_id = store.connect(spec)
    assert store.connect(spec)[0] is client and len(asked) == 1
    other = store.connect(dataclasses.replace(spec, experiment="other"))
    assert other[0] is not client and other[1] != experiment_id and len(asked) == 2
    assert store.connect(spec, create=False)[0] is not client and len(asked) == 2  # checked, not created
    store.forget_connections()
    assert store.connect(spec)[0] is not client and len(asked) == 3
    db = tmp_path / "outputs" / "mlflow.db"
    for path in db.parent.glob("mlflow.db*"):
        path.unlink()
    SqlAlchemyStore._engine_map[f"sqlite:///{db}"].dispose()  # as when a command ends (tests.helpers.cli)
    client, experiment_id = store.connect(spec)
    assert len(asked) == 4 and database.inspect(db) == "complete"
    assert client.get_experiment(experiment_id).name == "nst"


def test_only_a_local_stores_address_points_at_make_ui():
    assert store.served_by("sqlite:////tmp/out/mlflow.db") == "  (make ui serves it)"
    assert store.served_by("http://127.0.0.1:5000") == ""  # the server serves its own pages
