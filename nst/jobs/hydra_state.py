"""What Hydra knows about the job being run: run mode, sweep id, choices, overrides, output folder.

The one place that asks Hydra's global state; the CLI, the launchers, the job
driver and the sweep callback read it through these functions. Outside a Hydra
app (the compose API in tests, a plain script) they answer "single run, no tags".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from nst.tracking.tags import TAG_HYDRA_CHOICE, TAG_JOB, TAG_OVERRIDES


def _current():
    """Hydra's config of the running job, or None outside a Hydra app."""
    try:
        return HydraConfig.get()
    except ValueError:
        return None


def in_multirun() -> bool:
    hydra = _current()
    return hydra is not None and hydra.mode == RunMode.MULTIRUN


def sweep_id(sweep_dir: str | Path) -> str:
    """A multirun's id: a hash of its sweep folder, which every job of one multirun shares."""
    return hashlib.sha1(str(sweep_dir).encode()).hexdigest()[:12]


def current_sweep_id() -> str | None:
    """The sweep id of the running Hydra job, or None outside a multirun."""
    return sweep_id(_current().sweep.dir) if in_multirun() else None


def job_number() -> int | None:
    """The job's number within its multirun, or None."""
    hydra = _current()
    return hydra.job.get("num") if hydra is not None else None


def output_dir() -> Path:
    """The running job's folder (``hydra.run.dir`` or its sweep subfolder)."""
    return Path(HydraConfig.get().runtime.output_dir)


def job_tags() -> dict[str, str]:
    """Hydra's choices and overrides of the current job, as MLflow tags (none outside Hydra)."""
    hydra = _current()
    if hydra is None:
        return {}
    tags = {f"{TAG_HYDRA_CHOICE}{k}": str(v) for k, v in hydra.runtime.choices.items()
            if not k.startswith("hydra/") and v is not None}
    tags[TAG_OVERRIDES] = json.dumps(list(hydra.overrides.task))
    if hydra.job.get("num") is not None and in_multirun():
        tags[TAG_JOB] = str(hydra.job.num)
    return tags
