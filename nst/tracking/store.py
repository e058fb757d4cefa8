"""The MLflow store: where it is, how to open it, what a run records about itself, and every query nst makes.

Runs (``nst.tracking.recorder``), sweeps (``nst.jobs.sweep_callback``), reports
(``nst.compare``, ``nst-report``) and the job driver all reach MLflow through this
module, so the store's address comes from one function (``store_uri``); where to
record is one ``TrackingSpec``, and a tag's name is in ``nst.tracking.tags``.

Default store: an SQLite database and an artifact folder under the output root,
both absolute (MLflow >= 3.13 refuses a bare ``./mlruns``, and with SQLite the
artifacts would otherwise land relative to whatever the working directory is).
``tracking.uri`` points at a tracking server instead.

All calls go through ``MlflowClient`` with explicit run ids rather than the
fluent API's process-global "active run", because a multirun executes several
runs in one process and a joblib sweep in several. The client is wrapped in
``StoreClient``: a write that meets another process's lock, or a tracking server
that does not answer (restarted, briefly down), waits (with back-off,
``NST_STORE_WAIT`` seconds at most) instead of failing, and a store that cannot
be used (locked or unreachable beyond the wait, disk full, read-only, damaged) is
one ``TrackingError`` line naming it. Opening the store (``connect``, ``open_store``)
creates it safely (``nst.tracking.database``) and ends the runs whose process died
(``nst.tracking.ownership``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nst.downloads import sha256_file
from nst.errors import ConfigError, TrackingError
from nst.tracking import database, ownership, tags, ui
from nst.tracking.steps import PROGRESS

log = logging.getLogger(__name__)

# MLflow 3.17's UI reads an experiment's view from the address, not from its experiment-kind tag
# (tags.EXPERIMENT_KIND), so every address nst prints asks for the runs table.
WORKFLOW = "workflowType=machine_learning"
SWEEP_REPORT = "sweep/report.html"  # on a sweep's parent: the report (nst.compare.sweep_report writes it)
# Keys that do not change what a run computes: left out of its fingerprint.
NON_SEMANTIC_KEYS = ("hydra", "paths", "tracking", "progress", "frame_every", "video")
DEFAULT_EXPERIMENT = "nst"


@dataclass(frozen=True)
class TrackingSpec:
    """Where and how runs are recorded (the ``tracking`` group and the output root); read by the job driver,
    the recorder and the store, so the engine's ``RunSpec`` knows nothing of MLflow."""

    enabled: bool
    uri: str | None
    artifact_location: str | None
    experiment: str
    resume: bool
    output_dir: str


def default_output_dir() -> Path:
    """The output root when no config says otherwise (``paths.output_dir``'s default)."""
    return Path(os.environ.get("NST_OUTPUT_DIR", "outputs"))


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server's address (it keeps artifacts where it was told to)."""
    return uri.startswith(("http://", "https://"))


def store_uri(uri: str | None = None, output_dir: str | os.PathLike | None = None) -> str:
    """The tracking URI: ``uri`` when given (a server, or a path: a ``.db`` file or the folder holding
    ``mlflow.db``), else the SQLite file under the output root."""
    if uri and "://" in str(uri):
        return str(uri)
    if uri:  # MLflow reads a bare path as its retired file store and fails with a traceback
        path = Path(uri).expanduser().resolve()
        return f"sqlite:///{path if path.suffix == '.db' else path / 'mlflow.db'}"
    root = Path(output_dir if output_dir is not None else default_output_dir()).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_location(tracking: TrackingSpec) -> str | None:
    """Where new experiments keep artifacts: as configured, else ``<output root>/mlartifacts`` for a
    store nst writes to directly (the default one, or ``tracking.uri`` naming a database); a tracking
    server decides for itself. Without a location MLflow would use ``./mlruns`` of whatever folder
    the first run was started in."""
    if is_server(store_uri(tracking.uri, tracking.output_dir)):
        return tracking.artifact_location
    if tracking.artifact_location and "://" in tracking.artifact_location:
        return tracking.artifact_location
    if tracking.artifact_location:
        return Path(tracking.artifact_location).expanduser().resolve().as_uri()
    return (Path(tracking.output_dir).expanduser().resolve() / "mlartifacts").as_uri()


class StoreClient:
    """An ``MlflowClient`` whose calls wait out another process's lock, or a tracking server that does not
    answer, and fail as one ``TrackingError``.

    A call that meets the lock is retried with back-off for ``NST_STORE_WAIT`` seconds, so another
    process's lock delays a run instead of killing it; a failed SQLite write leaves nothing behind,
    so trying it again records it once. A tracking server that stops answering is waited for the same way
    (``_Outages``): what nst writes is safe to send twice (a tag, a param, a metric at its step and time, an
    artifact under its name), all but a new run: a server killed between creating one and answering leaves
    it RUNNING, a twin that the next command ends FAILED (``end_dead_runs``).
    """

    def __init__(self, uri: str):
        from mlflow import MlflowClient  # MLflow takes seconds to import: only when a store is used

        database.quiet_mlflow()
        if is_server(uri):
            for name, value in MLFLOW_SERVER_SETTINGS.items():
                os.environ.setdefault(name, value)
            logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # its "Retrying" lines
        self.tracking_uri = uri
        self._client = guarded(uri, MlflowClient, tracking_uri=uri)

    def __getattr__(self, name: str):
        if name.startswith("_"):  # not MLflow's: unpickling (joblib workers) asks before _client exists
            raise AttributeError(name)
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: guarded(self.tracking_uri, attribute, *args, **kwargs)


def guarded(uri: str, function, *args, **kwargs):
    """``function(*args, **kwargs)``, retried while the store is locked or its server does not answer; store
    failures as ``TrackingError``."""
    wait, started, pause = database.store_wait_s(), time.monotonic(), 0.05
    while True:
        try:
            result = function(*args, **kwargs)
        except TrackingError:
            raise
        except Exception as exc:
            silent = server_silent(exc) if is_server(uri) else None
            if silent is not None:
                pause = OUTAGES.wait(uri, silent, started, pause)
                started = time.monotonic()
                continue
            problem = "locked" if is_server(uri) and _raced(exc) else database.store_problem(exc)
            if problem is None:
                raise
            if problem == "locked" and time.monotonic() - started + pause <= wait:
                log.info("the MLflow store is locked by another process; trying again in %.2f s", pause)
                time.sleep(pause)
                pause = min(2 * pause, 2.0)
                continue
            raise TrackingError(database.describe_problem(problem, uri.removeprefix("sqlite:///"), exc,
                                                          time.monotonic() - started)) from exc
        if is_server(uri):
            OUTAGES.answered(uri)
        return result


# MLflow's REST client tries a request to a server that does not answer 7 more times over about 4 minutes,
# for every call, saying nothing but urllib3's warnings, then raises a traceback's worth. nst lets it try
# twice more (a hiccup costs seconds) and does the waiting itself (``_Outages``): one line, one deadline
# for all the calls of one outage. Nor does it let MLflow print each ended run's address (one more request
# per run; nst prints its own). A value set in the environment is kept.
MLFLOW_SERVER_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                          "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
# How requests to a tracking server that is down, restarting or behind a proxy whose backend is away fail
# (requests' and urllib3's words, within MLflow's exception)
_SILENT = ("Connection refused", "Connection reset", "Connection aborted", "Remote end closed connection",
           "timed out", "too many 502 error responses", "too many 503 error responses",
           "too many 504 error responses")


def server_silent(exc: BaseException | None) -> str | None:
    """How a tracking server failed to answer (``Connection refused``, ...) when ``exc`` or what caused it
    says it did not; else None (it answered: an error of the request itself is not waited for)."""
    while exc is not None:
        found = silent_phrase(str(exc))
        if found is not None:
            return found
        exc = exc.__cause__ or exc.__context__
    return None


# What a tracking server on PostgreSQL (MySQL) answers when two clients wrote the same row at once (two nst-review
# apps setting the home run's judgement count): MLflow writes a tag or a run's latest metric by reading, then
# inserting, so the later insert fails, and the write is refused whole. SQLite, which takes one writer at a
# time, meets the same two writers as a lock; tried again, the write is made.
_RACED = ("duplicate key value violates unique constraint", "Duplicate entry")


def _raced(exc: BaseException | None) -> bool:
    """Whether a server refused ``exc``'s write because another client wrote the same row at the same moment."""
    while exc is not None:
        if any(phrase in str(exc) for phrase in _RACED):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def silent_phrase(text: str) -> str | None:
    """The words of ``_SILENT`` in ``text``, if any."""
    return next((phrase for phrase in _SILENT if phrase in text), None)


class _Outages:
    """The tracking servers this process found not answering, each since when (the start of the first call that
    failed): every call of one outage, from any thread (the recorder's writer, the heartbeat, the run's own), waits
    for the same deadline, ``NST_STORE_WAIT`` seconds after that start, and the user is told once. Past the
    deadline a call is tried once and fails, so a server that stays down costs each later call a try, not a
    wait; the first call that gets an answer ends the outage."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.since: dict[str, float] = {}

    def wait(self, uri: str, silent: str, started: float, pause: float) -> float:
        """Sleep ``pause`` before the next try, or raise ``TrackingError`` past the deadline; the next pause."""
        wait = database.store_wait_s()
        with self.lock:
            first = uri not in self.since
            since = self.since.setdefault(uri, started)
        waited = time.monotonic() - since
        if first and waited + pause <= wait:
            print(f"nst: warning: the MLflow tracking server {uri} is not answering ({silent}); nst tries again "
                  f"for up to {wait:g} s (NST_STORE_WAIT), keeping what it has to record", file=sys.stderr,
                  flush=True)
        if waited + pause > wait:
            raise TrackingError(f"the MLflow tracking server {uri} has not answered for {waited:.0f} s ({silent}; "
                                f"nst waits NST_STORE_WAIT={wait:g} s): start it again, or check tracking.uri")
        time.sleep(pause)
        return min(max(2 * pause, 0.5), 5.0)

    def answered(self, uri: str) -> None:
        """``uri`` answered: the end of its outage, if there was one (said in one line)."""
        if uri not in self.since:  # the usual case, without the lock
            return
        with self.lock:
            since = self.since.pop(uri, None)
        if since is not None:
            print(f"nst: the MLflow tracking server {uri} answers again (after {time.monotonic() - since:.0f} s); "
                  f"recording goes on", file=sys.stderr, flush=True)


OUTAGES = _Outages()


# connect's answers in this process: (client, experiment id, the store file's identity) by what they depend on
_connections: dict[tuple, tuple[StoreClient, str, tuple[int, int] | None]] = {}
_connecting = threading.Lock()


def connect(tracking: TrackingSpec, create: bool = True, wait: bool = False):
    """Open the store and return ``(client, experiment_id)``; create both on first use (the store only when
    ``create``: a run recorded later belongs in the store it was run with, not in a new one).

    Fails fast, with the URI in the message, when the store cannot be reached or used; with ``wait``, a tracking
    server that does not answer is waited for first, as every later call waits for it (``guarded``). Opened once per
    command: a later call for the same store, experiment, artifact location and ``create`` returns the same
    client (safe to use from several threads), so the jobs of a sweep do not each repeat the store's checks;
    a local store's file deleted or replaced since is opened again.
    """
    uri = store_uri(tracking.uri, tracking.output_dir)
    artifacts = artifact_location(tracking)
    key = (uri, tracking.experiment, artifacts, bool(tracking.artifact_location), create)
    with _connecting:
        known = _connections.get(key)
        if known is None or known[2] != _file_identity(uri):
            mlflow_client = open_store(uri, create=create, artifact_root=artifacts, option=None, wait=wait)
            experiment_id = _experiment_id(mlflow_client, tracking.experiment, artifacts)
            _check_artifacts(mlflow_client.get_experiment(experiment_id), tracking)
            known = _connections[key] = (mlflow_client, experiment_id, _file_identity(uri))
    return known[0], known[1]


def forget_connections() -> None:
    """The next ``connect`` opens its store afresh; called as each command starts, so that every command
    checks its store again and ends the runs of processes that died meanwhile."""
    with _connecting:
        _connections.clear()


def _file_identity(uri: str) -> tuple[int, int] | None:
    """The device and inode of a local store's file (None: a server, or no file): another file under the
    same name is another store."""
    if not uri.startswith("sqlite:///"):
        return None
    try:
        found = os.stat(uri.removeprefix("sqlite:///"))
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _check_artifacts(experiment, tracking: TrackingSpec) -> None:
    """The experiment's artifact folder is the one asked for, and can be written, before any run exists.

    MLflow fixes an experiment's artifact location when the experiment is created, so a
    later ``tracking.artifact_location`` would be silently ignored.
    """
    location = experiment.artifact_location
    if tracking.artifact_location and location.rstrip("/") != str(artifact_location(tracking)).rstrip("/"):
        raise ConfigError("tracking.artifact_location", tracking.artifact_location,
                          f"{location}, where experiment {experiment.name!r} has kept its artifacts since it was "
                          f"created (MLflow fixes it then); or name a new experiment with tracking.experiment=...")
    if location.startswith("file:"):
        database.make_folder(Path(urllib.parse.urlparse(location).path), "the artifact folder")


def open_store(uri: str, create: bool = False, artifact_root: str | None = None,
               option: str | None = "--tracking-uri", wait: bool = False) -> StoreClient:
    """A client for the store at ``uri`` once it is usable; runs whose process died are ended FAILED.

    A local SQLite store is created (``create``) or checked first (``nst.tracking.database``); a server must
    answer (``wait``: within ``NST_STORE_WAIT`` seconds). ``option`` is the command's option that names another
    store, for the message when there is none (None: the store was named by a run's config).
    """
    if is_server(uri):
        check_server(uri, wait=wait)
    elif uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if create:
            database.ensure_store(db, artifact_root or (db.parent / "mlartifacts").as_uri())
        elif not db.exists():
            raise TrackingError(f"no MLflow store at {db}: " + (f"run nst first, or name the store with {option}"
                                if option else "is the disk that holds it mounted? (nst never creates one here)"))
        else:
            database.inspect(db)
    mlflow_client = StoreClient(uri)
    end_dead_runs(mlflow_client)
    return mlflow_client


def run_address(uri: str | None, experiment_id: str, run_id: str, artifact: str = "") -> str:
    """Where the MLflow UI shows a run (or one of its artifacts): the tracking server's own page, or for
    the local store the address of ``make ui`` (``nst.tracking.ui.port``); None for ``uri``: the address within the UI
    (``#/experiments/...``), for links on its own pages."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}" + (f"/artifacts/{artifact}" if artifact else "")
    if uri is None:
        return f"{page}?{WORKFLOW}"
    base = uri.rstrip("/") if is_server(uri) else f"http://127.0.0.1:{ui.port(uri)}"
    return f"{base}/{page}?{WORKFLOW}"


def served_by(uri: str) -> str:
    """What to add after a run's address: where a local store's UI comes from (``make ui``); nothing for a server."""
    return "" if is_server(uri) else "  (make ui serves it)"


def end_dead_runs(mlflow_client) -> list[str]:
    """End FAILED, with the reason, nst's RUNNING runs whose process died; their ids.

    A sweep's parent is a run of the process that launched the sweep, so it is ended by the same rule.
    """
    experiments = [experiment.experiment_id for experiment in mlflow_client.search_experiments()]
    running = mlflow_client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'",
                                        max_results=5000) if experiments else []
    ended = []
    for run in running:
        reason = ownership.owner_gone(run.data.tags, run.info.start_time) if tags.TAG_ROLE in run.data.tags else None
        if reason:
            mlflow_client.set_tag(run.info.run_id, tags.TAG_FAILURE, reason)
            mlflow_client.set_terminated(run.info.run_id, "FAILED")
            ended.append(run.info.run_id)
    if ended:
        print(f"nst: {len(ended)} run(s) left RUNNING by a process that died are now FAILED: {', '.join(ended)}",
              file=sys.stderr)
    return ended


def ended_as_dead(run) -> bool:
    """Whether ``run`` was ended FAILED by ``end_dead_runs`` (its process was gone), not by itself."""
    return run.info.status == "FAILED" and run.data.tags.get(tags.TAG_FAILURE, "").startswith(ownership.DIED)


def keep_alive(mlflow_client, run_id: str) -> None:
    """Refresh the run's heartbeat tag from this process until ``let_go``."""
    ownership.HEARTBEAT.add(run_id, lambda: mlflow_client.set_tag(run_id, tags.TAG_HEARTBEAT, ownership.now_iso()))


def let_go(run_id: str) -> None:
    ownership.HEARTBEAT.remove(run_id)


def _experiment_id(mlflow_client, name: str, artifacts: str | None) -> str:
    """The experiment's id, created on first use; an experiment of an older nst gets the model-training tag."""
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow_client.create_experiment(name, artifact_location=artifacts, tags=dict([tags.EXPERIMENT_KIND]))
        except Exception:  # noqa: BLE001 - another process created it first
            experiment = mlflow_client.get_experiment_by_name(name)
            if experiment is None:
                raise
    key, kind = tags.EXPERIMENT_KIND
    if experiment.tags.get(key) != kind:
        mlflow_client.set_experiment_tag(experiment.experiment_id, key, kind)
    return experiment.experiment_id


def check_server(uri: str, timeout: float = 5.0, wait: bool = False) -> None:
    """A tracking server must answer /health within seconds (MLflow's own client retries for minutes); with
    ``wait``, one that does not answer at all (restarting) is waited for as ``guarded`` waits."""
    problem = health_problem(uri, timeout)
    if problem is not None and wait and silent_phrase(problem):
        problem = guarded(uri, _answered_health, uri, timeout)
    if problem is not None:
        raise TrackingError(f"the MLflow tracking server {uri} is not reachable ({problem}); start it "
                            f"(`make server` for a local one) or choose another tracking.uri")


def health_problem(uri: str, timeout: float) -> str | None:
    """What is wrong with the server's /health (None: it answered 200)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def _answered_health(uri: str, timeout: float) -> str | None:
    """``health_problem``'s answer, raised when the server did not answer at all (for ``guarded`` to wait)."""
    problem = health_problem(uri, timeout)
    if problem is not None and silent_phrase(problem):
        raise ConnectionError(problem)
    return problem


# --- what a run is: params, fingerprint, environment ----------------------------------------


def flatten(container: object, prefix: str = "") -> dict[str, str]:
    """``{"loss": {"style_weight": 100}}`` -> ``{"loss.style_weight": "100"}``; lists stay JSON."""
    if isinstance(container, dict):
        out: dict[str, str] = {}
        for key, value in container.items():
            out.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return out
    return {prefix.rstrip("."): json.dumps(container) if isinstance(container, list) else str(container)}


# The settings a reader of the seed compares runs by; MLflow params besides the keys a job overrides.
CORE_PARAMS = ("content", "style", "model.name", "model.calibration", "image.size", "epochs", "init", "seed",
               "optimizer.name", "optimizer.lr", "optimizer.max_iter", "loss.content_weight", "loss.style_weight",
               "loss.tv_weight", "loss.content_layers", "loss.style_layers")
# what of the run record (run.json) is a param: the backbone actually used, the device, the batch
CORE_RECORD = ("backbone", "device", "batch_size")


def job_params(config: Mapping[str, Any], overrides: Iterable[str] = ()) -> dict[str, str]:
    """The core settings and every key the job overrides, from the resolved config, flattened.

    Not the whole config: MLflow's image chart shows each run's params above its images, and
    the 67 of the whole config pushed every image about 1,460 px down. The whole config is the
    run's ``config.yaml`` artifact.
    """
    everything = flatten({key: value for key, value in config.items() if key != "hydra"})
    changed = {override.partition("=")[0].lstrip("+~") for override in overrides}
    return {key: value for key, value in everything.items()
            if key in CORE_PARAMS or key in changed or any(key.startswith(f"{group}.") for group in changed)}


def fingerprint(config: Mapping[str, Any], files: Iterable[Path] = ()) -> str:
    """sha256 of what determines a run's result: the semantic config and the input files' bytes."""
    semantic = {key: value for key, value in config.items() if key not in NON_SEMANTIC_KEYS}
    payload = {"config": semantic, "files": [sha256_file(p) for p in files]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def environment_tags() -> dict[str, str]:
    """Where and by what a run is made, and its owner (``nst.tracking.ownership``): tags of every run nst creates."""
    return {tags.TAG_GIT_COMMIT: git_commit(), tags.TAG_TORCH_VERSION: torch.__version__,
            tags.TAG_HOST: os.uname().nodename, tags.TAG_PID: str(os.getpid()),
            tags.TAG_OWNER: ownership.owner(), tags.TAG_HEARTBEAT: ownership.now_iso()}


def log_params(mlflow_client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param  # MLflow takes seconds to import: only when a store is used

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start:start + 100], synchronous=True)


# --- queries ------------------------------------------------------------------------------


def find_finished(mlflow_client, experiment_id: str, config_hash: str) -> str | None:
    """The id of a FINISHED run with this fingerprint, if any (resume)."""
    runs = mlflow_client.search_runs([experiment_id],
                                     filter_string=f"tags.`{tags.TAG_HASH}` = '{config_hash}' and "
                                                   "attributes.status = 'FINISHED'",
                                     max_results=1)
    return runs[0].info.run_id if runs else None


def sweep_parent(mlflow_client, experiment_id: str, sweep_id: str | None):
    """The parent run of the multirun ``sweep_id``, if there is one."""
    if sweep_id is None:
        return None
    runs = mlflow_client.search_runs([experiment_id], filter_string=(
        f"tags.`{tags.TAG_SWEEP}` = '{sweep_id}' and tags.`{tags.TAG_ROLE}` = 'sweep'"), max_results=1)
    return runs[0] if runs else None


def sweep_parents(mlflow_client, experiment_id: str) -> list:
    """The parent runs of the experiment's sweeps, newest first."""
    return mlflow_client.search_runs([experiment_id], filter_string=f"tags.`{tags.TAG_ROLE}` = 'sweep'",
                                     order_by=["attributes.start_time DESC"], max_results=10000)


def study_parents(mlflow_client, parent_id: str) -> list[str]:
    """The parent runs of every command that added to the Optuna study of the search ``parent_id`` (itself
    first); ``[parent_id]`` for a grid."""
    parent = mlflow_client.get_run(parent_id)
    study = parent.data.tags.get(tags.TAG_STUDY)
    if study is None:
        return [parent_id]
    found = mlflow_client.search_runs([parent.info.experiment_id], max_results=10000, filter_string=(
        f"tags.`{tags.TAG_ROLE}` = 'sweep' and tags.`{tags.TAG_STUDY}` = '{study}'"))
    return [parent_id, *(run.info.run_id for run in found if run.info.run_id != parent_id)]


def swept(parent) -> dict[str, bool]:
    """What a sweep's parent says it varies: swept key -> whether its values are log-spaced."""
    return json.loads(parent.data.tags.get(tags.TAG_SWEPT, "{}"))


def child_runs(mlflow_client, parent_id: str) -> list:
    """Every run started under the sweep ``parent_id``, retried attempts included."""
    parent = mlflow_client.get_run(parent_id)
    return mlflow_client.search_runs([parent.info.experiment_id],
                                     filter_string=f"tags.`{tags.PARENT_TAG}` = '{parent_id}'", max_results=10000)


def sweep_runs(mlflow_client, parent_id: str) -> list:
    """The runs of a sweep in job order, as (job, run): its children plus FINISHED runs reused by resume."""
    parent = mlflow_client.get_run(parent_id)
    by_job = {}
    for run in child_runs(mlflow_client, parent_id):
        job = int(run.data.tags.get(tags.TAG_JOB, len(by_job)))
        # a job that ran twice in one sweep (Ray runs again a job whose worker died) keeps its latest run
        if job not in by_job or run.info.start_time > by_job[job][1].info.start_time:
            by_job[job] = (job, run)
    for key, run_id in parent.data.tags.items():
        if key.startswith(tags.TAG_REUSED):
            job = int(key.removeprefix(tags.TAG_REUSED))
            by_job.setdefault(job, (job, mlflow_client.get_run(run_id)))
    return [pair for _, pair in sorted(by_job.items())]


def check_sweep_parent(mlflow_client, run_id: str) -> None:
    """``run_id`` must be a sweep's parent run (a single run's id would give an empty table)."""
    role = mlflow_client.get_run(run_id).data.tags.get(tags.TAG_ROLE)
    if role != "sweep":
        raise TrackingError(f"run {run_id} is not a sweep's parent run (nst.role={role}): pass --sweep latest, "
                            f"or a run id of role 'sweep' from nst-report")


def named_sweep(mlflow_client, experiment: str, sweep: str) -> str:
    """The parent run id of ``sweep`` as a user names it (a parent run id, or ``latest``), checked."""
    parent = latest_sweep(mlflow_client, experiment) if sweep == "latest" else sweep
    check_sweep_parent(mlflow_client, parent)
    return parent


def filtered_runs(mlflow_client, experiment: str, filter_string: str) -> list:
    """The runs (not sweeps' parents or reviews) of ``experiment`` that the MLflow ``filter_string`` picks."""
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no experiment named {experiment!r} in {mlflow_client.tracking_uri}")
    return [run for run in mlflow_client.search_runs([found.experiment_id], filter_string=filter_string,
                                                     max_results=10000)
            if run.data.tags.get(tags.TAG_ROLE) == "run"]


def latest_sweep(mlflow_client, experiment: str) -> str:
    """The parent run id of the newest sweep of ``experiment``."""
    found = mlflow_client.get_experiment_by_name(experiment)
    runs = mlflow_client.search_runs([found.experiment_id] if found else [],
                                     filter_string=f"tags.`{tags.TAG_ROLE}` = 'sweep'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(f"no sweep in experiment {experiment!r}")
    return runs[0].info.run_id


def experiment_runs(mlflow_client, experiment: str) -> list:
    """Every run of ``experiment``, newest first."""
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"no experiment named {experiment!r} in {mlflow_client.tracking_uri}")
    return mlflow_client.search_runs([found.experiment_id], max_results=10000,
                                     order_by=["attributes.start_time DESC"])


# the file names of client.log_image(key=, step=): images/<key>+step+<n>+timestamp+<ms>+<uuid>[+compressed].png|.webp
# (MLflow before 3.x separated them with %; '/' in a key is written '~')
_LOGGED_IMAGE = re.compile(r"^(?P<key>.+?)[+%]step[+%](?P<step>-?\d+)[+%]timestamp[+%](?P<time>\d+)[+%][0-9a-fA-F-]+"
                           r"(?P<compressed>[+%]compressed)?\.(?:png|webp|jpe?g)$")


def step_images(mlflow_client, run_id: str, key: str = PROGRESS) -> dict[int, str]:
    """The artifact paths of a run's images logged with ``log_image(key=key, step=...)``, by step: the
    full-size PNG (not MLflow's compressed copy), the latest one where a step was logged twice."""
    try:
        items = mlflow_client.list_artifacts(run_id, "images")
    except Exception:  # noqa: BLE001 - a run that logged no image has no images/ folder
        return {}
    found: dict[int, tuple[int, str]] = {}
    for item in items:
        match = _LOGGED_IMAGE.match(item.path.rsplit("/", 1)[-1])
        if match is None or match["compressed"] or match["key"].replace("~", "/") != key:
            continue
        step, time = int(match["step"]), int(match["time"])
        if step not in found or time > found[step][0]:
            found[step] = (time, item.path)
    return {step: path for step, (_, path) in sorted(found.items())}
