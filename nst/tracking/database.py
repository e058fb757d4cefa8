"""The local store's SQLite file: created or upgraded once, atomically, under a file lock; checked before use.

MLflow creates its schema the first time a client opens an empty database, with
no lock and dozens of separate migrations, so processes starting together on a
fresh output folder, or one killed during the migrations, could leave a
half-migrated file on which every later command fails (docs/pages/decisions.md).
Here:

- one process at a time creates, upgrades or checks the file (``ensure_store``),
  under ``mlflow.db.lock`` (``filelock``);
- a new store is a copy of a template that MLflow's own migrations built once per
  machine and MLflow schema, in nst's cache (``mlflow/``), given the new store's
  default experiment; without a usable cache, MLflow builds each store itself;
- a new schema is built in ``.mlflow.db.creating-<pid>`` beside the target and
  renamed over it, so the target is either absent or complete (a rename within a
  folder is atomic); an older schema is upgraded the same way, on a copy;
- a file that is not an MLflow store, is damaged, or was half-migrated by an
  older nst is named with the way out and never touched.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from filelock import FileLock, Timeout

from nst.downloads import cache_dir
from nst.errors import TrackingError

log = logging.getLogger(__name__)

CREATING = ".creating-"
# Part of the template's name: raised when nst builds the template differently, so an older one is not used
TEMPLATE_FORMAT = 1
# The artifact root MLflow is given when building the template (each copy is given its store's own)
TEMPLATE_ARTIFACT_ROOT = "file:///nst-store-template/mlartifacts"
# How long nst waits for the store (a lock held by another process) before it gives up: seconds
DEFAULT_WAIT_S = 120.0


def store_wait_s() -> float:
    """Seconds to wait for a busy store: ``NST_STORE_WAIT``, else 120 (longer than any lock an
    MLflow write or a ``make ui`` query holds; a lock held for 30 s by another process is waited out).
    Each try also waits MLflow's own busy timeout (20 s), so a wait is never shorter than that."""
    text = os.environ.get("NST_STORE_WAIT", str(DEFAULT_WAIT_S))
    try:
        wait = float(text)
    except ValueError:
        wait = -1.0
    if not wait >= 0:
        raise TrackingError(f"NST_STORE_WAIT={text!r} is not allowed: a number of seconds >= 0")
    return wait


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def quiet_mlflow() -> None:
    """MLflow logs every database error with its traceback (and each migration) before raising; nst
    retries what it raises or turns it into one line (``nst.tracking.store.guarded``), or re-raises what it
    cannot name, so those logs only bury the one line. Its progress bar for each downloaded artifact
    (reports, nst-review) is switched off too."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def ensure_store(db: Path, artifact_root: str) -> None:
    """Make ``db`` a complete MLflow store at the installed MLflow's schema, under its lock: create it when
    missing, upgrade it when older, check it otherwise; or raise ``TrackingError``.

    Cheap when the file is already complete (one read of its schema version under the lock).
    """
    quiet_mlflow()
    make_folder(db.parent, "the MLflow store's folder")
    wait, started = store_wait_s(), time.monotonic()
    try:
        with FileLock(str(lock_path(db)), timeout=wait):
            _remove_leftovers(db)
            state = inspect(db)
            if state == "missing":
                _build(db, artifact_root)
            elif state == "outdated":
                _build(db, artifact_root, upgrade_from=db)
            _use_wal(db)
    except Timeout as exc:
        raise TrackingError(f"the MLflow store {db} is being created or upgraded by another process, which "
                            f"has held {lock_path(db)} for more than {wait:g} s; wait for it to end, or delete "
                            f"the lock file if no nst process is running") from exc
    except (OSError, sqlite3.Error) as exc:
        problem = store_problem(exc)
        if problem is None:
            raise TrackingError(f"the MLflow store {db} cannot be used: {exc}") from exc
        raise TrackingError(describe_problem(problem, str(db), exc, time.monotonic() - started)) from exc


def make_folder(folder: Path, what: str) -> None:
    """Create ``folder`` and check a file can be written in it; one line naming it otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".nst-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrackingError(f"{what} {folder} cannot be written ({exc.strerror or exc}): choose a writable "
                            f"output folder with paths.output_dir=<folder> or NST_OUTPUT_DIR") from exc


# --- what the file holds -----------------------------------------------------------------------


def inspect(db: Path) -> str:
    """``missing`` (no file, or an empty one), ``complete``, ``outdated`` (an older MLflow's schema),
    or a ``TrackingError`` naming what is wrong and what to do."""
    if db.is_dir():
        raise TrackingError(f"{db} is a directory, not an MLflow store: move it aside, or choose another output "
                            f"folder (paths.output_dir=<folder>)")
    if not db.exists() or db.stat().st_size == 0:
        return "missing"
    # Only SQLite may open the file: closing any other descriptor of it drops the POSIX locks this
    # process's open MLflow connections hold on it
    try:
        with closing(sqlite3.connect(db, timeout=store_wait_s())) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            revision = (connection.execute("SELECT version_num FROM alembic_version").fetchone()
                        if "alembic_version" in tables else None)
    except sqlite3.DatabaseError as exc:
        if "file is not a database" in str(exc):
            raise TrackingError(f"{db} is not an MLflow store (not an SQLite database); nst never overwrites "
                                f"it: move it aside, or choose another output folder (paths.output_dir=<folder>)") from exc
        problem = store_problem(exc) or ("unwritable" if read_only(db) else "damaged")
        raise TrackingError(describe_problem(problem, str(db), exc, 0.0)) from exc
    if not tables:
        return "missing"
    if not {"experiments", "runs"} & tables:
        raise TrackingError(f"{db} is an SQLite database but not an MLflow store (its tables: "
                            f"{', '.join(sorted(tables)[:5])}); nst never overwrites it: move it aside, or choose "
                            f"another output folder (paths.output_dir=<folder>)")
    return _schema_state(db, tables, revision[0] if revision else None)


def read_only(db: Path) -> bool:
    """Whether ``db`` or its folder cannot be written (a read-only disk or file): SQLite then cannot open a
    store kept in write-ahead-log mode at all, and says only 'unable to open database file'."""
    return not (os.access(db, os.W_OK) and os.access(db.parent, os.W_OK))


def _schema_state(db: Path, tables: set[str], revision: str | None) -> str:
    # MLflow takes seconds to import: only when a store is used
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    head = _get_latest_schema_revision()
    leftovers = sorted(name for name in tables if name.startswith("_alembic_tmp"))
    if revision is None or leftovers or (revision == head and not set(Base.metadata.tables) <= tables):
        # what processes racing through MLflow's own creation leave: leftover _alembic_tmp tables, or a
        # schema half-way through its migrations
        readable = revision == head  # MLflow opens any file whose schema version is its own
        rescue = (f"`mlflow ui --backend-store-uri sqlite:///{db}.broken` still shows the runs recorded in it"
                  if readable else f"`mlflow db upgrade sqlite:///{db}.broken` may recover the runs recorded in it")
        raise TrackingError(f"the MLflow store {db} was left half-created by an interrupted schema creation (an "
                            f"older nst, or a process killed while MLflow built its tables"
                            f"{'; leftover ' + ', '.join(leftovers) if leftovers else ''}); move it aside "
                            f"(`mv {db} {db}.broken`) and run again; {rescue}")
    if revision != head:
        if not _is_known_revision(revision):
            raise TrackingError(f"the MLflow store {db} was written by a newer MLflow (schema {revision}); "
                                f"upgrade MLflow (pip install -U mlflow) or choose another output folder")
        return "outdated"
    return "complete"


def _is_known_revision(revision: str) -> bool:
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    try:
        return ScriptDirectory.from_config(_get_alembic_config(db_url="")).get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown revision
        return False


# --- building it ---------------------------------------------------------------------------------


def _build(db: Path, artifact_root: str, upgrade_from: Path | None = None) -> None:
    """A complete store at ``db``, built beside it and renamed over it (a new one from the template, an
    upgraded one from a copy of ``upgrade_from``)."""
    temporary = db.with_name(f".{db.name}{CREATING}{os.getpid()}")
    try:
        if upgrade_from is not None:
            _copy_consistent(upgrade_from, temporary)
            _initialise(temporary, artifact_root, upgrade=True)
        else:
            _create(temporary, artifact_root)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        for stale in _sidecars(db):  # a -wal/-shm left beside the target belongs to no database now
            stale.unlink(missing_ok=True)
        os.replace(temporary, db)
    except BaseException as exc:
        for path in (temporary, *_sidecars(temporary)):
            path.unlink(missing_ok=True)
        if isinstance(exc, TrackingError) or not isinstance(exc, Exception):
            raise
        if store_problem(exc) == "full":
            raise TrackingError(f"no space left on the device holding the MLflow store {db} while creating it "
                                f"(nothing was written): free some space and run again") from exc
        raise TrackingError(f"could not create the MLflow store {db} (nothing was written): {exc}") from exc


# What an exception from SQLite, SQLAlchemy, MLflow or the file system means for the store
_PROBLEMS = {
    "locked": ("database is locked", "database table is locked"),
    "full": ("database or disk is full", "No space left on device", "File too large"),
    "unwritable": ("readonly database", "Read-only file system", "Permission denied"),
    "damaged": ("database disk image is malformed", "file is not a database"),
    "io": ("disk I/O error",),  # SQLite's word for a failed read or write, a full disk among them
}
_ERRNO_PROBLEMS = {errno.ENOSPC: "full", errno.EFBIG: "full", errno.EDQUOT: "full",
                   errno.EROFS: "unwritable", errno.EACCES: "unwritable", errno.EPERM: "unwritable",
                   errno.ENOTDIR: "unwritable"}


def store_problem(exc: BaseException | None) -> str | None:
    """``locked``, ``full``, ``unwritable`` or ``damaged`` when ``exc`` (or what caused it) says so; else None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _ERRNO_PROBLEMS:
            return _ERRNO_PROBLEMS[exc.errno]
        text = str(exc)
        for problem, phrases in _PROBLEMS.items():
            if any(phrase in text for phrase in phrases):
                return problem
        exc = exc.__cause__ or exc.__context__
    return None


def describe_problem(problem: str, where: str, exc: BaseException, waited: float) -> str:
    """The one line for a store ``problem`` met at ``where`` (a file, or a server's URI) after ``waited`` s."""
    cause = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    if problem == "io" and _nearly_full(Path(where).parent):
        problem = "full"
    return {
        "locked": f"the MLflow store {where} stayed locked by another process for {waited:.0f} s (nst waits "
                  f"NST_STORE_WAIT={store_wait_s():g} s, each try at least MLflow's 20 s); what holds it may "
                  f"be an open sqlite3 shell or a stuck process",
        "full": f"no space left on the device holding the MLflow store {where} ({cause}): free some space "
                f"and run again",
        "unwritable": f"the MLflow store {where} cannot be written ({cause}; the file is not damaged): make it "
                      f"and its folder writable, or choose a writable output folder (paths.output_dir=<folder> "
                      f"or NST_OUTPUT_DIR)",
        "damaged": f"the MLflow store {where} is damaged ({cause}); nst never overwrites it: move it aside "
                   f"(runs recorded in it are lost to nst) or restore a backup",
        "io": f"the MLflow store {where} could not be read or written ({cause}): check the disk holding it",
    }[problem]


def _nearly_full(folder: Path) -> bool:
    """Less than 1 MiB free where ``folder`` is (SQLite reports a write that ran out of space in its
    -shm or -wal file as a 'disk I/O error')."""
    try:
        return shutil.disk_usage(folder).free < 1024 * 1024
    except OSError:
        return False


def _initialise(path: Path, artifact_root: str, upgrade: bool) -> None:
    """MLflow's own schema creation (or upgrade), and its default experiment, on ``path``."""
    import sqlalchemy
    from mlflow.store.db.utils import _upgrade_db
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{path}"
    if upgrade:
        engine = sqlalchemy.create_engine(uri)
        try:
            _upgrade_db(engine)
        finally:
            engine.dispose()
    built = SqlAlchemyStore(uri, artifact_root)  # creates the tables and the Default experiment
    built.engine.dispose()


def _create(path: Path, artifact_root: str) -> None:
    """A new, complete store at ``path`` whose default experiment keeps its artifacts under ``artifact_root``:
    a copy of the template when there is one, else MLflow's own creation. Copying a built schema takes
    a file where MLflow replays dozens of migrations, for every new output folder."""
    if _copy_template(path) and _adopt(path, artifact_root):
        return
    path.unlink(missing_ok=True)
    _initialise(path, artifact_root, upgrade=False)


def template_path() -> Path:
    """The template for the installed MLflow: one per MLflow version and schema revision, in nst's cache."""
    from mlflow.store.db.utils import _get_latest_schema_revision
    from mlflow.version import VERSION

    head = _get_latest_schema_revision()
    return cache_dir("mlflow", f"store-template-mlflow{VERSION}-{head}-v{TEMPLATE_FORMAT}.db")


def _copy_template(path: Path) -> bool:
    """Copy the template to ``path``, building it first when it is missing or unusable; False (nothing
    written) when the cache cannot be used: a new store never fails because of the cache."""
    try:
        template = template_path()
        template.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_path(template)), timeout=store_wait_s()):
            problem = template_problem(template)
            if problem is not None:
                log.info("building the MLflow store template %s (%s)", template, problem)
                _build_template(template)
            source = open(template, "rb")  # noqa: SIM115 - the file is copied after the lock is let go
    except Exception as exc:  # noqa: BLE001 - any failure of the cache: MLflow builds the store itself
        log.info("creating the MLflow store without a template: %s", exc)
        return False
    with source, open(path, "wb") as target:  # a failure here is the new store's (its disk), not the cache's
        shutil.copyfileobj(source, target)
    return True


def template_problem(template: Path) -> str | None:
    """What makes ``template`` unusable (missing, unreadable, damaged, another schema, not empty), or None."""
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    if not template.is_file():
        return "missing"
    try:
        with closing(sqlite3.connect(f"{template.as_uri()}?mode=ro", uri=True)) as connection:
            if connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                return "damaged"
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
            experiments = connection.execute("SELECT experiment_id, name FROM experiments").fetchall()
            (runs,) = connection.execute("SELECT count(*) FROM runs").fetchone()
    except (sqlite3.Error, TypeError, ValueError) as exc:  # TypeError, ValueError: no row, or several
        return f"unreadable: {exc}"
    if revision != _get_latest_schema_revision():
        return f"schema {revision}"
    if not set(Base.metadata.tables) <= tables or any(name.startswith("_alembic_tmp") for name in tables):
        return "incomplete schema"
    return None if experiments == [(0, "Default")] and runs == 0 else "not empty"


def _build_template(template: Path) -> None:
    """The template, by MLflow's own creation, built beside it and renamed over it (readers see the old
    file or the new one); one file, without a write-ahead log, so that a byte copy is a whole store."""
    if template.exists() and not template.is_file():  # checked first: MLflow's creation takes seconds
        raise IsADirectoryError(errno.EISDIR, "not a file: it cannot be replaced", str(template))
    for leftover in template.parent.glob(f".{template.name}.*.part*"):  # of a killed process (we hold the lock)
        leftover.unlink(missing_ok=True)
    part = template.with_name(f".{template.name}.{os.getpid()}.part")
    try:
        _initialise(part, TEMPLATE_ARTIFACT_ROOT, upgrade=False)
        with closing(sqlite3.connect(part)) as connection:
            connection.execute("PRAGMA journal_mode=DELETE")
        with open(part, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(part, template)
    finally:
        for path in (part, *_sidecars(part)):
            path.unlink(missing_ok=True)


def _adopt(path: Path, artifact_root: str) -> bool:
    """Give the copied template's default experiment (id 0) what MLflow's creation would have written for
    this store: its artifact location under ``artifact_root`` and the time of creation; False when the copy
    has no such experiment."""
    from mlflow.utils.time import get_current_time_millis
    from mlflow.utils.uri import append_to_uri_path, resolve_uri_if_local

    location = str(append_to_uri_path(resolve_uri_if_local(artifact_root), "0"))
    now = get_current_time_millis()
    with closing(sqlite3.connect(path)) as connection, connection:
        changed = connection.execute("UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                                     "last_update_time = ? WHERE experiment_id = 0", (location, now, now)).rowcount
    return changed == 1


def _copy_consistent(source: Path, target: Path) -> None:
    """A copy of ``source`` that includes what its write-ahead log holds (SQLite's backup API)."""
    with closing(sqlite3.connect(source, timeout=store_wait_s())) as reader, closing(sqlite3.connect(target)) as writer:
        reader.backup(writer)
        writer.execute("PRAGMA journal_mode=DELETE")


def _use_wal(db: Path) -> None:
    """Write-ahead logging lets parallel jobs read while one writes (fewer 'database is locked')."""
    with closing(sqlite3.connect(db, timeout=store_wait_s())) as connection:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode=WAL")


def _sidecars(db: Path) -> list[Path]:
    return [db.with_name(db.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _remove_leftovers(db: Path) -> None:
    """Half-built copies from a process killed while building (we hold the lock: nobody is building)."""
    for leftover in db.parent.glob(f".{db.name}{CREATING}*"):
        leftover.unlink(missing_ok=True)
