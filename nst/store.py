"""The MLflow store: where it is, how to open it, the tags nst writes, and every query nst makes.

Runs (``nst.recorder``), sweeps (``nst.sweeps``), reports (``nst.reports``,
``nst-report``) and the job driver all reach MLflow through this module, so the
store's address comes from one function (``store_uri``) and a tag has one name.

Default store: an SQLite database and an artifact folder under the output root,
both absolute (MLflow >= 3.13 refuses a bare ``./mlruns``, and with SQLite the
artifacts would otherwise land relative to whatever the working directory is).
``tracking.uri`` points at a tracking server instead.

All calls go through ``MlflowClient`` with explicit run ids rather than the
fluent API's process-global "active run", because a multirun executes several
runs in one process and a joblib sweep in several.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from nst.downloads import sha256_file
from nst.errors import NSTError
from nst.spec import TrackingSpec

# Tag names shared by runs, sweeps and reports.
TAG_ROLE = "nst.role"  # "run" | "sweep"
TAG_SWEEP = "nst.sweep_id"
TAG_JOB = "nst.job_num"
TAG_HASH = "nst.config_hash"
TAG_OVERRIDES = "nst.overrides"
TAG_FAILURE = "nst.failure"
TAG_REUSED = "nst.reused."  # + job number, on a sweep's parent: a FINISHED run reused by resume
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
# Keys that do not change what a run computes: left out of its fingerprint.
NON_SEMANTIC_KEYS = ("hydra", "paths", "tracking", "progress")
DEFAULT_EXPERIMENT = "nst"


class TrackingError(NSTError):
    """The tracking store cannot be reached or used."""


def default_output_dir() -> Path:
    """The output root when no config says otherwise (``paths.output_dir``'s default)."""
    return Path(os.environ.get("NST_OUTPUT_DIR", "outputs"))


def store_uri(uri: str | None = None, output_dir: str | os.PathLike | None = None) -> str:
    """The tracking URI: ``uri`` when given (a server), else the SQLite file under the output root."""
    if uri:
        return str(uri)
    root = Path(output_dir if output_dir is not None else default_output_dir()).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}"


def artifact_location(tracking: TrackingSpec) -> str | None:
    """Where new experiments keep artifacts: as configured, else ``<output root>/mlartifacts`` for the
    local store (a server decides for itself)."""
    if tracking.uri:
        return tracking.artifact_location
    if tracking.artifact_location:
        return Path(tracking.artifact_location).expanduser().resolve().as_uri()
    return (Path(tracking.output_dir).expanduser().resolve() / "mlartifacts").as_uri()


def client(uri: str):
    """An ``MlflowClient`` for ``uri``."""
    from mlflow import MlflowClient  # MLflow takes seconds to import: only when a store is used

    return MlflowClient(tracking_uri=uri)


def connect(tracking: TrackingSpec):
    """Open the store and return ``(client, experiment_id)``; create both on first use.

    Fails fast with the URI in the message when the store cannot be reached.
    """
    uri = store_uri(tracking.uri, tracking.output_dir)
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        _enable_wal(db)
    mlflow_client = client(uri)
    try:
        return mlflow_client, _experiment_id(mlflow_client, tracking.experiment, artifact_location(tracking))
    except NSTError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means the store is unusable
        raise TrackingError(f"cannot use the MLflow tracking store {uri}: {exc}") from exc


def _experiment_id(mlflow_client, name: str, artifacts: str | None) -> str:
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return mlflow_client.create_experiment(name, artifact_location=artifacts)
        except Exception:  # noqa: BLE001 - another process created it first
            experiment = mlflow_client.get_experiment_by_name(name)
            if experiment is None:
                raise
    return experiment.experiment_id


def check_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server must answer /health within seconds (MLflow's own client retries for minutes)."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise TrackingError(f"the MLflow tracking server {uri} is not reachable ({problem}); start it "
                        f"(`make server` for a local one) or choose another tracking.uri")


def _enable_wal(db: Path) -> None:
    """Write-ahead logging lets parallel jobs read while one writes (fewer 'database is locked')."""
    with sqlite3.connect(db, timeout=60) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


# --- what a run is: params, fingerprint, environment ----------------------------------------


def flatten(container: object, prefix: str = "") -> dict[str, str]:
    """``{"loss": {"style_weight": 100}}`` -> ``{"loss.style_weight": "100"}``; lists stay JSON."""
    if isinstance(container, dict):
        out: dict[str, str] = {}
        for key, value in container.items():
            out.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return out
    return {prefix.rstrip("."): json.dumps(container) if isinstance(container, list) else str(container)}


def job_params(config: Mapping[str, Any]) -> dict[str, str]:
    """The resolved config without Hydra's own node, flattened."""
    return flatten({key: value for key, value in config.items() if key != "hydra"})


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
    return {"nst.git_commit": git_commit(), "nst.torch_version": torch.__version__,
            "nst.host": os.uname().nodename, "nst.pid": str(os.getpid())}


def log_params(mlflow_client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param  # MLflow takes seconds to import: only when a store is used

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        mlflow_client.log_batch(run_id, params=items[start:start + 100], synchronous=True)


# --- queries ------------------------------------------------------------------------------


def find_finished(mlflow_client, experiment_id: str, config_hash: str) -> str | None:
    """The id of a FINISHED run with this fingerprint, if any (resume)."""
    runs = mlflow_client.search_runs([experiment_id],
                                     filter_string=f"tags.`{TAG_HASH}` = '{config_hash}' and "
                                                   "attributes.status = 'FINISHED'",
                                     max_results=1)
    return runs[0].info.run_id if runs else None


def parent_run_id(mlflow_client, experiment_id: str, sweep_id: str | None) -> str | None:
    """The parent run of the multirun ``sweep_id``, if there is one."""
    if sweep_id is None:
        return None
    runs = mlflow_client.search_runs([experiment_id], filter_string=(
        f"tags.`{TAG_SWEEP}` = '{sweep_id}' and tags.`{TAG_ROLE}` = 'sweep'"), max_results=1)
    return runs[0].info.run_id if runs else None


def child_runs(mlflow_client, parent_id: str) -> list:
    """Every run started under the sweep ``parent_id``, retried attempts included."""
    parent = mlflow_client.get_run(parent_id)
    return mlflow_client.search_runs([parent.info.experiment_id],
                                     filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=10000)


def sweep_runs(mlflow_client, parent_id: str) -> list:
    """The runs of a sweep in job order, as (job, run): its children plus FINISHED runs reused by resume."""
    parent = mlflow_client.get_run(parent_id)
    by_job = {}
    for run in child_runs(mlflow_client, parent_id):
        job = int(run.data.tags.get(TAG_JOB, len(by_job)))
        # a job that ran twice in one sweep (Ray runs again a job whose worker died) keeps its latest run
        if job not in by_job or run.info.start_time > by_job[job][1].info.start_time:
            by_job[job] = (job, run)
    for key, run_id in parent.data.tags.items():
        if key.startswith(TAG_REUSED):
            job = int(key.removeprefix(TAG_REUSED))
            by_job.setdefault(job, (job, mlflow_client.get_run(run_id)))
    return [pair for _, pair in sorted(by_job.items())]


def latest_sweep(mlflow_client, experiment: str) -> str:
    """The parent run id of the newest sweep of ``experiment``."""
    found = mlflow_client.get_experiment_by_name(experiment)
    runs = mlflow_client.search_runs([found.experiment_id] if found else [],
                                     filter_string=f"tags.`{TAG_ROLE}` = 'sweep'",
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
