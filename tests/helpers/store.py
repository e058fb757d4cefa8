"""Reading what nst recorded: an MLflow client for a run folder's SQLite store, and its runs and artifacts."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from nst.tracking import tags


def store_client(out: Path) -> MlflowClient:
    """A plain MLflow client for the store under the output root ``out`` (``out/mlflow.db``)."""
    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def runs(client: MlflowClient, role: str | None = "run", status: str | None = None,
         experiment: str = "nst") -> list:
    """The runs of ``experiment`` (none if it does not exist yet), newest first: those whose ``nst.role`` is
    ``role`` (every run for None), and whose status is ``status`` when given."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.`{tags.TAG_ROLE}` = '{role}'" if role else ""
    return [run for run in client.search_runs([found.experiment_id], query, max_results=1000)
            if status is None or run.info.status == status]


def all_runs(out: Path, role: str | None = "run") -> list:
    """``runs`` of the store under the output root ``out``."""
    return runs(store_client(out), role)


def artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """Every artifact file of a run (under ``path``), recursively."""
    found = []
    for item in client.list_artifacts(run_id, path):
        found += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def progress_steps(paths: list[str]) -> list[int]:
    """The steps of a run's progress images; MLflow names them images/progress+step+<step>+<time>+<id>.png."""
    return sorted(int(p.split("+step+")[1].split("+")[0]) for p in paths
                  if p.startswith("images/progress") and p.endswith(".png"))


def metrics_logged(out: Path) -> bool:
    """Whether a run has logged metrics (read with sqlite3: opening an MLflow client could create the store)."""
    db = out / "mlflow.db"
    if not db.is_file():
        return False
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return connection.execute("SELECT count(*) FROM metrics").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def running_with_metrics(out: Path, min_step: int = 1):
    """A RUNNING run whose ``total`` has been logged at step ``min_step`` or later, or None."""
    try:
        client = store_client(out)
        for run in all_runs(out):
            history = client.get_metric_history(run.info.run_id, "total") if run.info.status == "RUNNING" else []
            if history and max(m.step for m in history) >= min_step:
                return run
    except Exception:  # noqa: BLE001 - the store may still be being created
        return None
    return None


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
