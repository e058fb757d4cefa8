"""The local SQLite store (nst/tracking/database.py): created once under a file lock, built beside and
renamed, upgraded keeping its runs; damaged, foreign and half-migrated files named and never touched."""

import errno
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing

import pytest

from nst.tracking import database
from tests.helpers.cli import one_line_error, report, start_nst
from tests.helpers.overrides import TRACKED_RUN
from tests.helpers.store import all_runs, store_client
from tests.helpers.waiting import wait_for


@pytest.mark.slow
def test_two_runs_two_sweeps_and_make_ui_started_together_share_one_new_store(tmp_path):
    out = tmp_path / "outputs"
    started = time.time()
    ui = subprocess.Popen([sys.executable, "-m", "nst.cli.create_store", str(out / "mlflow.db")],  # what `make ui` runs first
                          stderr=subprocess.PIPE, text=True)
    processes = [start_nst(out, *TRACKED_RUN), start_nst(out, *TRACKED_RUN, "seed=1"), start_nst(out, "-m", *TRACKED_RUN, "seed=2,3"),
                 start_nst(out, "-m", *TRACKED_RUN, "seed=4,5")]
    results = [process.communicate(timeout=600) for process in processes]
    seconds = time.time() - started
    assert ui.wait() == 0, ui.stderr.read()
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    runs = all_runs(out, None)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}, [r.info.status for r in runs]
    assert database.inspect(out / "mlflow.db") == "complete"
    print(f"5 processes (make ui's store check, 2 runs, two 2-job sweeps) on one new store: {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["from the template", "by MLflow's migrations"])
def test_a_process_killed_while_creating_the_store_leaves_no_store(tmp_path, nst, how):
    out = tmp_path / "outputs"
    out.mkdir()
    if how == "from the template":  # a copy takes milliseconds: the process is stopped once it is made
        slow = "adopt = database._adopt; database._adopt = lambda *a: (time.sleep(600), adopt(*a))[1]; "
        env = os.environ
    else:  # a cache that cannot be written
        (tmp_path / "a-file").write_text("")
        slow, env = "", {**os.environ, "NST_CACHE_DIR": str(tmp_path / "a-file" / "cache")}
    code = (f"import time; from nst.tracking import database; from pathlib import Path; {slow}"
            f"database.ensure_store(Path({str(out / 'mlflow.db')!r}), 'file:///tmp/a')")
    creator = subprocess.Popen([sys.executable, "-c", code], env=env)
    wait_for(lambda: list(out.glob(".mlflow.db.creating-*")), timeout=60)
    creator.kill()
    creator.wait()
    assert not (out / "mlflow.db").exists()  # never a half-built store under the real name
    done = nst(out, *TRACKED_RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r.info.status for r in all_runs(out, None)] == ["FINISHED"]
    assert not list(out.glob(".mlflow.db.creating-*"))


@pytest.mark.slow
def test_disk_full_while_creating_the_store_writes_nothing_and_says_so(small_disk, tmp_path, nst):
    out = small_disk(512) / "outputs"
    done = nst(out, *TRACKED_RUN)
    assert done.returncode == 2
    assert "no space left on the device holding the MLflow store" in one_line_error(done.stderr)
    assert not (out / "mlflow.db").exists() and not list(out.glob(".mlflow.db*"))
    elsewhere = tmp_path / "outputs"
    assert nst(elsewhere, *TRACKED_RUN).returncode == 0


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
        assert nst(out, *TRACKED_RUN).returncode == 0
        with sqlite3.connect(db) as connection:
            if kind == "half-migrated":  # what an older nst left after two processes raced on MLflow's migrations
                connection.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
            connection.execute("PRAGMA journal_mode=DELETE")  # everything in the file itself
        if kind == "truncated":
            db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
        phrase = "is damaged" if kind == "truncated" else "half-created"
    before = db.read_bytes() if db.is_file() else None
    done = nst(out, *TRACKED_RUN)
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
    kept = store_client(tmp_path).create_run("0", run_name="recorded before the upgrade").info.run_id
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
    assert store_client(tmp_path).get_run(kept).info.run_name == "recorded before the upgrade"


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


def test_a_read_only_store_is_told_apart_from_a_damaged_one(small_disk, nst):
    """A store on a disk remounted read-only: SQLite says only 'unable to open database file', which was
    reported as damage ('move it aside, runs recorded in it are lost to nst') though the file is intact."""
    disk = small_disk(4096)
    out = disk / "outputs"
    assert nst(out, *TRACKED_RUN).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    done = report(out)
    assert done.returncode == 2
    line = one_line_error(done.stderr.replace("nst-report: error:", "nst: error:"))
    assert f"the MLflow store {out / 'mlflow.db'} cannot be written (" in line, line
    assert "the file is not damaged" in line and "damaged (" not in line and "lost" not in line, line


# --- new stores: copies of a template built once by MLflow's migrations -----------------------------------------


def _clauses(sql: str | None) -> list[str] | None:
    """A CREATE statement's lines (each column or constraint), sorted: MLflow's migrations list a rebuilt
    table's constraints in an order that changes from one creation to the next."""
    return None if sql is None else sorted(line.strip().removesuffix(",").strip() for line in sql.splitlines())


def _contents(db):
    """What a new store holds that does not depend on when it was made: its schema (tables, indexes,
    triggers), its schema version, its experiments without their creation times, and every other row."""
    with closing(sqlite3.connect(db)) as connection:
        schema = sorted(((kind, name, table, _clauses(sql)) for kind, name, table, sql
                         in connection.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")), key=repr)
        tables = [name for (kind, name, _, _) in schema if kind == "table" and name != "experiments"]
        rows = {name: sorted(connection.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr) for name in tables}
        experiments = connection.execute("SELECT experiment_id, name, artifact_location, lifecycle_stage, workspace "
                                         "FROM experiments").fetchall()
        times = connection.execute("SELECT creation_time, last_update_time FROM experiments").fetchall()
    return schema, rows, experiments, times


def _migrations(monkeypatch) -> list:
    """The stores (or templates) MLflow's own creation is run on from now on, in order."""
    built = []
    initialise = database._initialise

    def counted(path, artifact_root, upgrade):
        built.append(path)
        initialise(path, artifact_root, upgrade)

    monkeypatch.setattr(database, "_initialise", counted)
    return built


def _records_a_run(db) -> None:
    """MLflow creates an experiment, a run and a metric in the store ``db``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    assert client.create_experiment("nst") == "1"
    run = client.create_run("1").info.run_id
    client.log_metric(run, "total", 1.5, step=0)
    client.set_terminated(run)
    assert client.get_run(run).data.metrics == {"total": 1.5}


def test_a_store_made_from_the_template_equals_one_made_by_mlflows_migrations(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "an empty cache"))
    built = _migrations(monkeypatch)
    artifacts = (tmp_path / "an artifact folder").as_uri()
    (tmp_path / "copied").mkdir()
    started = int(time.time() * 1000)
    database.ensure_store(tmp_path / "copied" / "mlflow.db", artifacts)
    assert built and built[0].parent == database.template_path().parent  # the template, not the store
    database._initialise(tmp_path / "migrated.db", artifacts, upgrade=False)
    copied, migrated = _contents(tmp_path / "copied" / "mlflow.db"), _contents(tmp_path / "migrated.db")
    assert copied[:3] == migrated[:3]
    assert copied[2] == [(0, "Default", f"{artifacts}/0", "active", "default")]
    (creation, update), = copied[3]
    assert creation == update and started <= creation <= time.time() * 1000
    _records_a_run(tmp_path / "copied" / "mlflow.db")


def test_the_template_is_built_once_and_each_store_gets_its_own_default_experiment(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "an empty cache"))
    built = _migrations(monkeypatch)
    for name in ("first", "second"):
        database.ensure_store(tmp_path / name / "mlflow.db", (tmp_path / name / "mlartifacts").as_uri())
    assert len(built) == 1
    for name in ("first", "second"):
        db = tmp_path / name / "mlflow.db"
        assert database.inspect(db) == "complete"
        assert _contents(db)[2] == [(0, "Default", (tmp_path / name / "mlartifacts").as_uri() + "/0", "active",
                                     "default")]
    _records_a_run(tmp_path / "second" / "mlflow.db")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "another schema", "not empty",
                                    "a directory"])
def test_a_damaged_template_is_rebuilt_and_the_store_is_still_right(tmp_path, monkeypatch, damage):
    database.ensure_store(tmp_path / "first" / "mlflow.db", (tmp_path / "first" / "mlartifacts").as_uri())
    template = database.template_path()
    if damage == "garbage":
        template.write_bytes(b"not a database\n" * 1000)
    elif damage == "truncated":
        template.write_bytes(template.read_bytes()[: template.stat().st_size // 3])
    elif damage == "empty":
        template.write_bytes(b"")
    elif damage == "a directory":  # cannot be replaced: MLflow builds the store itself
        template.unlink()
        (template / "inside").mkdir(parents=True)
    else:
        with closing(sqlite3.connect(template)) as connection, connection:
            if damage == "another schema":
                connection.execute("UPDATE alembic_version SET version_num = 'c48cb773bb87'")  # an older revision
            else:
                connection.execute("INSERT INTO experiments (experiment_id, name, lifecycle_stage) "
                                   "VALUES (7, 'left over', 'active')")
    built = _migrations(monkeypatch)
    db = tmp_path / "second" / "mlflow.db"
    database.ensure_store(db, (tmp_path / "second" / "mlartifacts").as_uri())
    assert len(built) == 1
    assert database.inspect(db) == "complete"
    assert _contents(db)[:2] == _contents(tmp_path / "first" / "mlflow.db")[:2]
    assert _contents(db)[2] == [(0, "Default", (tmp_path / "second" / "mlartifacts").as_uri() + "/0", "active",
                                 "default")]
    assert (database.template_problem(template) is None) == (damage != "a directory")
    _records_a_run(db)


def test_a_cache_folder_that_cannot_be_written_leaves_mlflow_to_build_the_store(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    built = _migrations(monkeypatch)
    db = tmp_path / "outputs" / "mlflow.db"
    database.ensure_store(db, (tmp_path / "mlartifacts").as_uri())
    assert built == [db.with_name(f".mlflow.db{database.CREATING}{os.getpid()}")]
    assert database.inspect(db) == "complete"
    assert not list(db.parent.glob(".mlflow.db*"))
