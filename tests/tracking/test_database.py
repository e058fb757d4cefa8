"""The local SQLite store (nst/tracking/database.py): created once under a file lock, built beside and
renamed, upgraded keeping its runs; damaged, foreign and half-migrated files named and never touched."""

import errno
import sqlite3
import subprocess
import sys
import time

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
