"""``hydra/launcher=batched``: compatible sweep jobs optimised as one batch.

Jobs that share content, style, sizes, layers, normalisation, backbone and
device (differing in alpha, beta, TV or layer weights, optimiser settings,
epochs, init, seed; the rule is ``nst.engine.spec.batch_key``) run through the network
together: one backbone load, one set of targets, and one batched forward/backward
per evaluation, while each job keeps its own optimiser state, output folder and
MLflow run. Other jobs run one by one, as with Hydra's basic launcher. Running a
group is the job driver's business (``nst.jobs.driver``).

Hydra accepts launchers only from the ``hydra_plugins`` package, so
``hydra_plugins/nst_launcher`` re-exports this class.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from nst.engine.spec import batch_key
from nst.errors import ConfigError
from nst.jobs import hydra_state
from nst.jobs.driver import Job, run_group
from nst.tracking.tags import TAG_JOB

log = logging.getLogger(__name__)


def group_jobs(configs: Sequence[Mapping | None], max_batch: int) -> list[list[int]]:
    """Indices of compatible jobs, in job order, in groups of at most ``max_batch``."""
    groups: dict[str, list[list[int]]] = {}
    order: list[list[int]] = []
    for index, cfg in enumerate(configs):
        if cfg is None:
            continue
        chunks = groups.setdefault(batch_key(cfg), [])
        if not chunks or len(chunks[-1]) >= max_batch:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(index)
    return order


class BatchedLauncher(Launcher):
    """Hydra launcher: sets up every job's folder and config first, then runs compatible jobs batched."""

    def __init__(self, max_batch: int = 8) -> None:
        super().__init__()
        if int(max_batch) < 1:
            raise ConfigError("hydra.launcher.max_batch", max_batch, "an integer >= 1")
        self.max_batch = int(max_batch)
        self.config: DictConfig | None = None
        self.hydra_context = None
        self.task_function = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info("Launching %d jobs, compatible ones batched (at most %d per batch)",
                 len(job_overrides), self.max_batch)
        returns: list[JobReturn] = []
        jobs: list[Job | None] = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            captured: list[Job] = []

            def capture(cfg: DictConfig, captured=captured) -> None:
                """Hydra's job set-up (folder, .hydra/, logging) now; the work later, in its batch."""
                resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
                captured.append(Job.current(resolved, hydra_state.output_dir()))

            returns.append(run_job(hydra_context=self.hydra_context, task_function=capture,
                                   config=sweep_config, job_dir_key="hydra.sweep.dir",
                                   job_subdir_key="hydra.sweep.subdir"))
            jobs.append(captured[0] if captured else None)
        for group in group_jobs([job.config if job else None for job in jobs], self.max_batch):
            if len(group) > 1:
                log.info("batch of %d jobs: %s", len(group), [jobs[i].tags.get(TAG_JOB) for i in group])
            for index, value in zip(group, run_group([jobs[i] for i in group]), strict=True):
                returns[index].return_value = value
        return returns


# nst's variables a Ray worker must see as the shell that ran ``nst -m`` does (Ray workers inherit
# the environment of ``ray start``, not the driver's)
FORWARDED_ENVIRONMENT = ("NST_ASSETS_DIR", "NST_CACHE_DIR", "NST_OFFLINE", "NST_HED_WHEEL", "MLFLOW_TRACKING_URI")


def ray_environment(config: DictConfig) -> dict[str, str]:
    """Environment for Ray workers: nst's variables, and the output folder as an absolute path."""
    environment = {key: os.environ[key] for key in FORWARDED_ENVIRONMENT if key in os.environ}
    output_dir = OmegaConf.select(config, "paths.output_dir") or "outputs"
    environment["NST_OUTPUT_DIR"] = str(Path(str(output_dir)).expanduser().resolve())
    return environment

