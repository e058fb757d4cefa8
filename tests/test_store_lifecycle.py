"""The store and the run lifecycle under races, kills, locks and full disks (real processes, real SQLite)."""

import errno
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from nst.errors import TrackingError
from nst.tracking import database, ownership, store, tags
from nst.tracking.relog import relog

TINY = ["content=tubingen", "style=starry_night", "model=random", "image.size=32", "epochs=2",
        "optimizer.max_iter=3", "progress=false"]
# long enough to be killed or locked mid-optimisation (about 20 s on 2 cores)
LONG = ["content=tubingen", "style=starry_night", "model=random", "image.size=64", "epochs=40",
        "progress=false", "frame_every=5"]


def client_for(out):
    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def all_runs(out, role=None):
    client = client_for(out)
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, max_results=1000)
    return [r for r in found if role is None or r.data.tags.get(tags.TAG_ROLE) == role]


def wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("condition not reached")


def metrics_logged(out) -> bool:
    """Whether a run has logged metrics (read with sqlite3: opening an MLflow client could create the store)."""
    db = out / "mlflow.db"
    if not db.is_file():
        return False
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return connection.execute("SELECT count(*) FROM metrics").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def start_nst(out, *args, env=None, **popen):
    environment = {**os.environ, "NST_OUTPUT_DIR": str(out), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "nst.cli", *args], env=environment, cwd=out.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def report(out, *args):
    return subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--uri", f"sqlite:///{out / 'mlflow.db'}",
                           *args], capture_output=True, text=True, timeout=300)


def hold_lock(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding SQLite's write lock on ``db`` for ``seconds`` (what a sqlite3 shell in a
    transaction does); returns once the lock is held."""
    code = ("import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None, timeout=60)\n"
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
            f"time.sleep({seconds}); c.execute('COMMIT')\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("nst: error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# --- creating the store ---------------------------------------------------------------------------


@pytest.mark.slow
def test_two_runs_two_sweeps_and_make_ui_started_together_share_one_new_store(tmp_path):
    out = tmp_path / "outputs"
    started = time.time()
    ui = subprocess.Popen([sys.executable, "-m", "nst.cli.create_store", str(out / "mlflow.db")],  # what `make ui` runs first
                          stderr=subprocess.PIPE, text=True)
    processes = [start_nst(out, *TINY), start_nst(out, *TINY, "seed=1"), start_nst(out, "-m", *TINY, "seed=2,3"),
                 start_nst(out, "-m", *TINY, "seed=4,5")]
    results = [process.communicate(timeout=600) for process in processes]
    seconds = time.time() - started
    assert ui.wait() == 0, ui.stderr.read()
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    runs = all_runs(out)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}, [r.info.status for r in runs]
    assert database.inspect(out / "mlflow.db") == "complete"
    print(f"5 processes (make ui's store check, 2 runs, two 2-job sweeps) on one new store: {seconds:.1f} s")


@pytest.mark.slow
def test_a_process_killed_while_creating_the_store_leaves_no_store(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    code = (f"from nst.tracking import database; from pathlib import Path; "
            f"database.ensure_store(Path({str(out / 'mlflow.db')!r}), 'file:///tmp/a')")
    creator = subprocess.Popen([sys.executable, "-c", code])
    wait_for(lambda: list(out.glob(".mlflow.db.creating-*")), timeout=60)
    creator.kill()
    creator.wait()
    assert not (out / "mlflow.db").exists()  # never a half-built store under the real name
    done = nst(out, *TINY)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r.info.status for r in all_runs(out)] == ["FINISHED"]
    assert not list(out.glob(".mlflow.db.creating-*"))


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(kib)``: a folder on a tmpfs of that size, a disk that fills up for real (SQLite says
    SQLITE_FULL only for ENOSPC; a file-size limit gives 'disk I/O error'). Needs the right to mount,
    which root has on these machines."""
    mounted: list[Path] = []

    def make(kib: int, read_only: bool = False) -> Path:
        mount_point = tmp_path / f"disk{len(mounted)}"
        mount_point.mkdir()
        options = f"size={kib}k" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
        mounted.append(mount_point)
        return mount_point

    yield make
    for mount_point in mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.slow
def test_disk_full_while_creating_the_store_writes_nothing_and_says_so(small_disk, tmp_path, nst):
    out = small_disk(512) / "outputs"
    done = nst(out, *TINY)
    assert done.returncode == 2
    assert "no space left on the device holding the MLflow store" in one_line_error(done.stderr)
    assert not (out / "mlflow.db").exists() and not list(out.glob(".mlflow.db*"))
    elsewhere = tmp_path / "outputs"
    assert nst(elsewhere, *TINY).returncode == 0


@pytest.mark.slow
def test_a_disk_that_fills_up_during_a_run_gives_one_line_and_leaves_nothing_running(small_disk, nst):
    out = small_disk(2048) / "outputs"
    out.mkdir()
    database.ensure_store(out / "mlflow.db", (out / "mlartifacts").as_uri())  # about 950 KiB
    filler = out / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - 40 * 1024))  # leave about 40 KiB free
    done = nst(out, *TINY)
    assert done.returncode in (1, 2)
    line = one_line_error(done.stderr)
    assert "no space left" in line.lower() or "No space left on device" in line, line
    filler.unlink()  # space again: the store is usable, nothing is left RUNNING
    assert "Traceback" not in report(out).stderr
    assert nst(out, *TINY, "seed=1").returncode == 0
    runs = all_runs(out)
    assert "FINISHED" in {r.info.status for r in runs} and "RUNNING" not in {r.info.status for r in runs}


@pytest.mark.parametrize("where", [pytest.param("read-only disk", marks=pytest.mark.slow),
                                   pytest.param("under /proc", marks=pytest.mark.slow), "below a file"])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_anything_runs(tmp_path, where, small_disk):
    if where == "read-only disk":
        out, reason = small_disk(64, read_only=True) / "outputs", "Read-only file system"
    elif where == "under /proc":
        out, reason = Path("/proc/nst-outputs"), "No such file or directory"
    else:
        (tmp_path / "a-file").write_text("")
        out, reason = tmp_path / "a-file" / "outputs", "Not a directory"
    done = subprocess.run([sys.executable, "-m", "nst.cli", *TINY, f"paths.output_dir={out}"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 2
    assert one_line_error(done.stderr) == (f"nst: error: the output folder {out} cannot be written ({reason}): "
                                           f"choose a writable output folder with paths.output_dir=<folder> "
                                           f"or NST_OUTPUT_DIR")


# --- stores nst must not touch --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["garbage", pytest.param("foreign-sqlite", marks=pytest.mark.slow),
                                  pytest.param("directory", marks=pytest.mark.slow),
                                  pytest.param("truncated", marks=pytest.mark.slow),
                                  pytest.param("half-migrated", marks=pytest.mark.slow)])
def test_a_damaged_or_foreign_store_is_named_and_never_overwritten(tmp_path, kind, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    db = out / "mlflow.db"
    if kind == "garbage":
        db.write_bytes(b"these are my notes, not a database\n" * 100)
        phrase = "is not an MLflow store"
    elif kind == "foreign-sqlite":
        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE notes (text TEXT)")
            connection.execute("PRAGMA journal_mode=DELETE")
        phrase = "is an SQLite database but not an MLflow store"
    elif kind == "directory":
        db.mkdir()
        phrase = "is a directory, not an MLflow store"
    else:
        assert nst(out, *TINY).returncode == 0
        with sqlite3.connect(db) as connection:
            if kind == "half-migrated":  # what an older nst left after two processes raced on MLflow's migrations
                connection.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
            connection.execute("PRAGMA journal_mode=DELETE")  # everything in the file itself
        if kind == "truncated":
            db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
        phrase = "is damaged" if kind == "truncated" else "half-created"
    before = db.read_bytes() if db.is_file() else None
    done = nst(out, *TINY)
    assert done.returncode == 2
    line = one_line_error(done.stderr)
    assert phrase in line and str(db) in line, line
    assert (db.read_bytes() if db.is_file() else None) == before
    listed = report(out)
    assert listed.returncode == 2 and phrase in listed.stderr and "Traceback" not in listed.stderr


def test_a_store_with_an_older_schema_is_upgraded_and_keeps_its_runs(tmp_path):
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    db = tmp_path / "mlflow.db"
    database.ensure_store(db, (tmp_path / "mlartifacts").as_uri())
    kept = client_for(tmp_path).create_run("0", run_name="recorded before the upgrade").info.run_id
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    config = _get_alembic_config(str(engine.url))
    script = ScriptDirectory.from_config(config)
    with engine.begin() as connection:  # the schema of the MLflow release before this one
        config.attributes["connection"] = connection
        command.downgrade(config, script.get_revision(script.get_current_head()).down_revision)
    engine.dispose()
    assert database.inspect(db) == "outdated"
    database.ensure_store(db, (tmp_path / "mlartifacts").as_uri())
    assert database.inspect(db) == "complete"
    assert client_for(tmp_path).get_run(kept).info.run_name == "recorded before the upgrade"


def test_a_sweep_whose_parent_cannot_be_created_runs_no_job_and_exits_2(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "mlflow.db").write_bytes(b"not a database" * 100)
    done = nst(out, "-m", *TINY, "seed=1,2,3")
    assert done.returncode == 2
    assert "is not an MLflow store" in one_line_error(done.stderr)
    assert not list(out.glob("multiruns/*/*/result.png"))


# --- runs whose process died ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["single run", "sequential sweep"])
def test_kill_9_mid_optimisation_leaves_nothing_running(tmp_path, mode, nst):
    out = tmp_path / "outputs"
    args = [*LONG, "seed=0"] if mode == "single run" else ["-m", *LONG, "seed=0,1"]
    victim = start_nst(out, *args)
    wait_for(lambda: metrics_logged(out))
    victim.kill()
    victim.communicate()
    assert {r.info.status for r in all_runs(out)} == {"RUNNING"}  # what kill -9 leaves behind

    listed = report(out, "--format", "csv")
    assert listed.returncode == 0, listed.stderr[-3000:]
    runs = all_runs(out)
    assert runs and {r.info.status for r in runs} == {"FAILED"}, [(r.info.status, r.data.tags) for r in runs]
    for run in runs:
        assert run.data.tags[tags.TAG_FAILURE].startswith("process died (no heartbeat since ")
    assert len(all_runs(out, "sweep")) == (1 if mode == "sequential sweep" else 0)
    assert "RUNNING" not in listed.stdout and "FAILED" in listed.stdout
    assert "left RUNNING by a process that died are now FAILED" in listed.stderr


def test_owner_liveness_tells_dead_pids_reused_pids_and_stale_heartbeats():
    alive = {tags.TAG_OWNER: ownership.owner(), tags.TAG_HEARTBEAT: ownership.now_iso()}
    assert ownership.owner_gone(alive, 0) is None
    host, pid, start = ownership.owner().split(":")
    reused = {tags.TAG_OWNER: f"{host}:{pid}:{int(start) + 1}"}  # this pid, another process's start time
    assert ownership.owner_gone(reused, 0).startswith("process died")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = {tags.TAG_OWNER: f"{host}:{dead.pid}:", tags.TAG_HEARTBEAT: "2026-01-01T00:00:00+00:00"}
    assert ownership.owner_gone(gone, 0) == (f"process died (no heartbeat since 2026-01-01T00:00:00+00:00; "
                                            f"owner {host} pid {dead.pid})")
    elsewhere = {tags.TAG_OWNER: "another-node:12:34", tags.TAG_HEARTBEAT: "2026-01-01T00:00:00+00:00"}
    beat = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, 0)) - time.timezone
    assert ownership.owner_gone(elsewhere, 0, now=beat + 60) is None
    assert ownership.owner_gone(elsewhere, 0, now=beat + ownership.STALE_AFTER_S + 1).startswith("process died")


# --- locks and full disks while a run runs ---------------------------------------------------------


def _store_with_one_run(tmp_path, nst):
    """An output folder whose store holds one FINISHED run (so the schema exists before a lock is taken)."""
    out = tmp_path / "outputs"
    out.mkdir()
    assert nst(out, *TINY).returncode == 0
    return out


@pytest.mark.slow
def test_a_lock_held_before_the_start_is_waited_out(tmp_path, nst):
    out = _store_with_one_run(tmp_path, nst)
    holder = hold_lock(out / "mlflow.db", 8)
    started = time.time()
    done = nst(out, *TINY, "seed=1")
    holder.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.time() - started >= 8 - 1
    assert sorted(r.info.status for r in all_runs(out)) == ["FINISHED", "FINISHED"]


@pytest.mark.slow
def test_a_lock_held_beyond_the_wait_before_the_start_is_one_line(tmp_path, nst):
    out = _store_with_one_run(tmp_path, nst)
    holder = hold_lock(out / "mlflow.db", 120)
    done = nst(out, *TINY, "seed=1", env={"NST_STORE_WAIT": "1"})
    holder.kill()
    holder.wait()
    assert done.returncode == 2
    line = one_line_error(done.stderr)
    assert f"the MLflow store {out / 'mlflow.db'} stayed locked by another process for " in line, line
    assert "NST_STORE_WAIT=1 s" in line
    assert [r.info.status for r in all_runs(out)] == ["FINISHED"]  # the refused run was never created


@pytest.mark.slow
def test_a_lock_held_30_s_during_a_run_is_waited_out_and_the_run_recorded(tmp_path):
    out = tmp_path / "outputs"
    run = start_nst(out, *LONG)
    wait_for(lambda: metrics_logged(out))
    holder = hold_lock(out / "mlflow.db", 30)
    _, stderr = run.communicate(timeout=600)
    holder.wait()
    assert run.returncode == 0, stderr[-3000:]
    (recorded,) = all_runs(out)
    assert recorded.info.status == "FINISHED"
    folder = Path(recorded.data.tags[tags.TAG_OUTPUT_DIR])
    rows = (folder / "losses.csv").read_text().splitlines()[1:]
    assert len(client_for(out).get_metric_history(recorded.info.run_id, "total")) == len(rows)
    # the records waited, the optimisation did not: no pause between evaluations near the lock's 30 s
    elapsed = [float(row.split(",")[-1]) for row in rows]
    assert max(b - a for a, b in zip(elapsed, elapsed[1:], strict=False)) < 10


@pytest.mark.slow
def test_a_lock_held_beyond_the_wait_keeps_the_files_and_relog_records_them(tmp_path):
    out = tmp_path / "outputs"
    run = start_nst(out, *LONG, env={"NST_STORE_WAIT": "1"})
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
    (recorded,) = all_runs(out)
    assert recorded.info.status == "FINISHED" and tags.TAG_FAILURE not in recorded.data.tags
    rows = (folder / "losses.csv").read_text().splitlines()[1:]
    assert len(client_for(out).get_metric_history(recorded.info.run_id, "total")) == len(rows)
    artifacts = [a.path for a in client_for(out).list_artifacts(recorded.info.run_id, "result")]
    assert {"result/result.png", "result/triptych.png", "result/loss_curve.png"} <= set(artifacts)
    assert "optimisation.mp4" in [a.path for a in client_for(out).list_artifacts(recorded.info.run_id)]


def test_a_store_that_fills_up_mid_run_loses_nothing_and_relog_records_it(tmp_path, monkeypatch):
    """The disk fills during the optimisation: the run goes on, its files are written, the error says how
    to record it, and ``nst-report --relog`` does once there is space again."""
    from hydra import compose, initialize_config_dir

    from nst.cli.nst_app import CONFIG_DIR
    from nst.errors import UnrecordedRunError
    from nst.jobs import driver

    out = tmp_path / "outputs"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [*TINY, "epochs=3", f"paths.output_dir={out}", "frame_every=2"])
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
    run = client_for(out).get_run(run_id)
    rows = (folder / "losses.csv").read_text().splitlines()[1:]
    assert run.info.status == "FINISHED"
    assert len(client_for(out).get_metric_history(run_id, "total")) == len(rows)
    assert {"auto.ssim_content", "auto.color_distance_style"} <= set(run.data.metrics)  # from the logged inputs
    assert relog(folder) == (run_id, False)  # a second relog changes nothing


@pytest.mark.parametrize("where", ["under /proc", pytest.param("below a file", marks=pytest.mark.slow)])
def test_an_artifact_folder_that_cannot_be_written_is_one_line_before_any_run(tmp_path, where, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    (tmp_path / "a-file").write_text("")
    artifacts = "/proc/nst-artifacts" if where == "under /proc" else tmp_path / "a-file" / "artifacts"
    done = nst(out, *TINY, f"tracking.artifact_location={artifacts}")
    assert done.returncode == 2
    assert f"the artifact folder {artifacts} cannot be written" in one_line_error(done.stderr)
    assert all_runs(out) == []


@pytest.mark.slow
def test_an_artifact_location_the_experiment_does_not_use_is_refused(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    assert nst(out, *TINY, f"tracking.artifact_location={tmp_path / 'first'}").returncode == 0
    done = nst(out, *TINY, f"tracking.artifact_location={tmp_path / 'second'}")
    assert done.returncode == 2
    line = one_line_error(done.stderr)
    assert "tracking.artifact_location=" in line and (tmp_path / "first").as_uri() in line, line


def test_a_store_failure_while_a_run_is_set_up_ends_it_failed(tmp_path, monkeypatch):
    """Everything after the run is created is inside one protected block (params, inputs, the recorder)."""
    from hydra import compose, initialize_config_dir

    from nst.cli.nst_app import CONFIG_DIR
    from nst.jobs import driver
    from nst.tracking import recorder

    out = tmp_path / "outputs"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", [*TINY, f"paths.output_dir={out}"])

    def refuse(self, inputs):
        raise TrackingError("the artifact folder is full")

    monkeypatch.setattr(recorder.RunRecorder, "log_inputs", refuse)
    with pytest.raises(TrackingError, match="the artifact folder is full"):
        driver.run(cfg, tmp_path / "run")
    (run,) = all_runs(out)
    assert run.info.status == "FAILED" and "the artifact folder is full" in run.data.tags[tags.TAG_FAILURE]


@pytest.mark.slow
def test_report_errors_are_one_line(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    assert nst(out, *TINY).returncode == 0
    (single,) = all_runs(out)
    unknown = report(out, "--sweep", "deadbeef")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr and "deadbeef" in unknown.stderr
    not_a_sweep = report(out, "--sweep", single.info.run_id)
    assert not_a_sweep.returncode == 2 and "is not a sweep's parent run" in not_a_sweep.stderr
    by_folder = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--uri", str(out), "--format", "csv"],
                               capture_output=True, text=True, timeout=300)  # a path, not an sqlite:/// URI
    assert by_folder.returncode == 0 and single.info.run_id in by_folder.stdout
    bad_wait = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--uri", str(out)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "NST_STORE_WAIT": "abc"})
    assert bad_wait.returncode == 2 and "NST_STORE_WAIT='abc' is not allowed" in bad_wait.stderr


def test_the_writer_keeps_every_write_after_a_refused_one_in_order():
    from nst.tracking.recorder import Writer

    done, writer = [], Writer()
    writer.submit(lambda: done.append(1))
    writer.submit(lambda: (_ for _ in ()).throw(TrackingError("locked")))
    writer.submit(lambda: done.append(3))
    refused = writer.close()
    assert done == [1] and len(refused) == 2
    for action in refused[1:]:
        action()
    assert done == [1, 3]
    broken = Writer()
    broken.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        broken.close()


# --- what each store problem is called --------------------------------------------------------------


@pytest.mark.parametrize(("exc", "problem"), [
    (sqlite3.OperationalError("database is locked"), "locked"),
    (sqlite3.OperationalError("database or disk is full"), "full"),
    (OSError(errno.ENOSPC, "No space left on device"), "full"),
    (OSError(errno.EROFS, "Read-only file system"), "unwritable"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "unwritable"),
    (sqlite3.DatabaseError("database disk image is malformed"), "damaged"),
    (ValueError("a bug"), None),
])
def test_store_problems_are_told_apart(exc, problem):
    assert database.store_problem(RuntimeError("wrapped")) is None
    wrapper = RuntimeError("MLflow's wrapper")
    wrapper.__cause__ = exc
    assert database.store_problem(wrapper) == problem


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
