"""Hydra multirun sweeps as MLflow parent runs.

``SweepCallback`` (registered in ``conf/hydra/default.yaml``) runs in the
launching process: before the first job it creates the store, the experiment
and one parent run; after the last job it logs the sweep's comparison grid,
summary table, loss plot and report page to that parent and ends it. Jobs, in this process
or in launcher workers, find their parent by the sweep id, a hash of Hydra's
sweep directory, which every job of one multirun shares.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from nst import phases
from nst.engine.run_files import RECORD_JSON
from nst.errors import ConfigError, NSTError
from nst.figures import labels
from nst.jobs import driver
from nst.jobs.config import check_launch, tracking_spec
from nst.jobs.hydra_state import sweep_id
from nst.jobs.schema import sweep_values
from nst.tracking import naming, ownership, store, tags
from nst.tracking.relog import relog
from nst.tracking.steps import align_steps

log = logging.getLogger(__name__)

MAX_JOBS = 1000  # the most jobs of one sweep (NST_MAX_JOBS): a typo such as range(0,100000) is refused

# The callback whose parent run is open in this process (closed by abort_open_sweep on a crash).
_open: SweepCallback | None = None


class SweepCallback(Callback):
    """Opens an MLflow parent run for a multirun and summarises its jobs when it ends."""

    def __init__(self) -> None:
        self.parent: str | None = None
        self.client = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            check_launch(config)  # values from conf/local or a sweep file, which the CLI's pre-flight cannot see
            space = search_space(config)
            if space is None:
                check_job_count(swept_values(list(config.hydra.overrides.task), sweeper_params(config)))
            else:
                check_trial_count(OmegaConf.select(config, "hydra.sweeper.n_trials"))
            tracking = tracking_spec(config)
            if tracking.enabled:
                phases.lap(phases.CONFIG)
                self.open_parent(config, tracking, space)
                phases.lap(phases.STORE)  # the first job's
        except NSTError as exc:
            # Hydra turns an exception raised by a callback into a warning and runs every job anyway
            # (each failing, its error only in its log, exit status 0): stop here
            print(f"nst: error: {exc}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from exc
        if self.parent is not None:
            log.info("sweep %s: MLflow parent run %s", self.sweep_dir, self.parent)

    def open_parent(self, config: DictConfig, tracking, space: dict | None = None) -> None:
        """The store, the experiment and the sweep's parent run, kept alive by this process's heartbeat;
        ``space`` is a search's (``search_space``), None for a grid."""
        self.client, experiment_id = store.connect(tracking)
        sweep_dir = str(config.hydra.sweep.dir)
        params = sweeper_params(config)
        overrides = list(config.hydra.overrides.task)
        if space is None:
            values = swept_values(overrides, params)
            swept = {key: labels.log_spaced(found) for key, found in values.items()}
        else:  # a search: its trials' values are not known yet, only the space they come from
            values = {key: [dimension.text] for key, dimension in space.items()}
            swept = {key: dimension.log for key, dimension in space.items()}
        name, naming_tags = sweep_naming(self.client, experiment_id, config, overrides, swept)
        run = self.client.create_run(experiment_id, run_name=name, tags={
            tags.TAG_ROLE: "sweep", tags.TAG_SWEEP: sweep_id(sweep_dir),
            tags.TAG_SWEEP_DIR: str(Path(sweep_dir).resolve()),
            tags.TAG_OVERRIDES: str(overrides), tags.TAG_SWEEPER_PARAMS: str(params),
            tags.TAG_SWEPT: json.dumps(swept), **naming_tags, **store.environment_tags()})
        self.parent, self.experiment_id = run.info.run_id, experiment_id
        report = store.run_address(None, experiment_id, self.parent, store.SWEEP_REPORT)
        self.client.set_tag(self.parent, tags.TAG_DESCRIPTION,
                            f"{describe(config, values, space is not None)}\n\nCompare the results: [the sweep's report]({report}).")
        self.sweep_dir = Path(sweep_dir)
        store.keep_alive(self.client, self.parent)
        store.log_params(self.client, self.parent, {
            f"sweep.{key.lstrip('+~')}": ", ".join(labels.short(value) for value in found)
            for key, found in values.items()})
        global _open
        _open = self

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if self.parent is None:
            return
        from nst.compare import sweep_report  # pandas takes 0.7 s to import: only in a sweep

        status = "FINISHED"
        try:
            # every job has returned: a child still RUNNING belonged to a worker that died (a launcher
            # such as Ray may have run that job again; the summary keeps each job's latest run)
            children = self.end_orphans("FAILED", "its worker process died before the run ended")
            align_steps(self.client, children)
            summary = sweep_report.summarise_sweep(self.client, self.parent, self.sweep_dir)
            failed = [f"job {job} {state}" for job, state in zip(summary.table["job"], summary.table["status"],
                                                                   strict=True) if state != "FINISHED"]
            recorded = {int(job) for job in summary.table["job"]}
            failed += [f"job {job} left no run" for job in job_numbers(self.sweep_dir) if job not in recorded]
            driver.failed_jobs.extend(failed)
            self.client.log_batch(self.parent, metrics=sweep_report.summary_metrics(summary.table))
            if failed:
                print(f"nst: {len(failed)} of {len(recorded | set(job_numbers(self.sweep_dir)))} jobs did not "
                      f"finish: {', '.join(failed)}", file=sys.stderr)
            address = store.run_address(self.client.tracking_uri, self.experiment_id, self.parent)
            print(f"nst: sweep report {summary.page}")
            print(f"nst: sweep grid {summary.folder / 'grid.png'}\nnst: MLflow sweep {address}"
                  f"{store.served_by(self.client.tracking_uri)}")
            self.publish_study(summary.folder)
        except Exception as exc:
            status = "FAILED"
            driver.failed_jobs.append(f"the sweep's summary: {exc}")
            print(f"nst: error: could not summarise the sweep: {exc}", file=sys.stderr)
            log.exception("could not summarise the sweep")
            raise
        finally:
            self.client.set_terminated(self.parent, status)
            self.close()

    def publish_study(self, folder: Path) -> None:
        """A search's study (``nst.jobs.search`` wrote it in the sweep's folder): its Pareto front and page on
        the parent."""
        from nst.compare import pareto

        study = pareto.read_study(self.sweep_dir)
        if study is not None:
            self.client.set_tag(self.parent, tags.TAG_STUDY, study.name)
            print(f"nst: Pareto front {pareto.publish_study(self.client, self.parent, study, folder)}")

    def end_orphans(self, status: str, reason: str) -> list:
        """End the children left RUNNING with ``status`` and ``reason`` (a child whose worker process is gone:
        "process died ...", naming it); return the children as they now are, asking the store again only
        when one was left RUNNING (the end of a sweep then queries its children once, not twice)."""
        children = store.child_runs(self.client, self.parent)
        orphans = [run for run in children if run.info.status == "RUNNING"]
        for run in orphans:
            self._end_run(run, status, ownership.owner_gone(run.data.tags, run.info.start_time) or reason)
        return store.child_runs(self.client, self.parent) if orphans else children

    def end_job(self, job: int, status: str, reason: str) -> list[str]:
        """End with ``status`` and ``reason`` the runs of sweep job ``job`` left RUNNING (a launcher saw the job's
        process end without ending them); the ids of those ended, the runs that ended themselves untouched."""
        running = [run for run in store.child_runs(self.client, self.parent)
                   if run.info.status == "RUNNING" and run.data.tags.get(tags.TAG_JOB) == str(job)]
        return [run.info.run_id for run in running if self._end_run(run, status, reason)]

    def _end_run(self, run, status: str, reason: str) -> bool:
        """End a RUNNING child with ``status`` and ``reason``, unless its folder says it FINISHED (then it is
        recorded from there); whether it was ended so."""
        if _recorded_from_folder(run):
            return False
        self.client.set_tag(run.info.run_id, tags.TAG_FAILURE, reason)
        self.client.set_terminated(run.info.run_id, status)
        return True

    def close(self) -> None:
        store.let_go(self.parent)
        global _open
        if _open is self:
            _open = None

    def abort(self, status: str, reason: str) -> None:
        """The multirun died (interrupt, a killed worker): end runs left RUNNING, keep what finished."""
        from nst.compare import sweep_report  # imports pandas: only in a sweep

        try:
            self.end_orphans(status, reason)
            if store.sweep_runs(self.client, self.parent):
                sweep_report.summarise_sweep(self.client, self.parent, self.sweep_dir)
        except Exception:  # noqa: BLE001 - closing the parent matters more than its summary
            log.exception("could not summarise the aborted sweep")
        self.client.set_tag(self.parent, tags.TAG_FAILURE, reason)
        self.client.set_terminated(self.parent, status)
        self.close()


def sweeper_params(config: DictConfig) -> dict:
    """A sweep file's ``hydra.sweeper.params`` ({} when there are none)."""
    params = OmegaConf.select(config, "hydra.sweeper.params")
    return OmegaConf.to_container(params, resolve=True) if params is not None else {}


def search_space(config: DictConfig) -> dict | None:
    """A search's space (``nst.jobs.search.parse_space``: the sweep file's and the command line's), None
    for a grid."""
    if OmegaConf.select(config, "hydra.sweeper.n_trials") is None:
        return None
    from nst.jobs import search

    search.check_settings(OmegaConf.to_container(config.hydra.sweeper, resolve=True))
    return search.parse_space(search.split_arguments(config.hydra.overrides.task, sweeper_params(config))[1])


def _recorded_from_folder(run) -> bool:
    """Whether ``run``, left RUNNING by a worker that died after writing its result, was recorded from its folder
    (``nst-report --relog``'s way): its run.json says FINISHED, so the store must not say FAILED."""
    folder = Path(run.data.tags.get(tags.TAG_OUTPUT_DIR, ""))
    try:
        finished = json.loads((folder / RECORD_JSON).read_text()).get("status") == "FINISHED"
    except (OSError, ValueError):
        return False
    if finished:
        try:
            relog(folder)
            return True
        except NSTError as exc:
            log.warning("could not record %s from its folder: %s", folder, exc)
    return False


def swept_values(overrides: list[str], params: dict) -> dict[str, list]:
    """Each swept key with its values (plain values, as the jobs get them), in the order given: the command
    line's sweeps (``loss.style_weight=1,100``) and a sweep file's ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    texts = [*overrides, *(f"{key}={value}" for key, value in params.items())]
    found: dict[str, list] = {}
    for override in OverridesParser.create().parse_overrides(texts):
        if override.is_discrete_sweep():
            found[override.key_or_group] = sweep_values(override)
    return found


def max_jobs() -> int:
    """The most jobs one sweep may have: ``NST_MAX_JOBS``, else ``MAX_JOBS``."""
    text = os.environ.get("NST_MAX_JOBS", str(MAX_JOBS))
    if not text.isdigit() or int(text) < 1:
        raise ConfigError("NST_MAX_JOBS", text, "a whole number of jobs >= 1")
    return int(text)


def check_job_count(values: dict[str, list]) -> None:
    """A sweep whose values expand to no job, or to more than ``max_jobs``, is refused before anything runs
    (Hydra would record an empty sweep, or spend minutes setting up a huge one)."""
    empty = [key for key, found in values.items() if not found]
    if empty:
        raise ConfigError(empty[0], "an empty sweep", "values that give at least one job (range(start, stop) "
                                                      "counts up from start and stops before stop)")
    count = math.prod(len(found) for found in values.values())
    if count > max_jobs():
        sizes = " x ".join(f"{len(found)} {key.lstrip('+~')}" for key, found in values.items())
        raise ConfigError("the sweep", f"{count} jobs ({sizes})",
                          f"at most {max_jobs()} jobs in one sweep (NST_MAX_JOBS=<n> raises the limit)")


def check_trial_count(trials) -> None:
    """A search of more trials than ``max_jobs`` is refused before anything runs."""
    if isinstance(trials, int) and trials > max_jobs():
        raise ConfigError("hydra.sweeper.n_trials", trials,
                          f"at most {max_jobs()} trials in one command (NST_MAX_JOBS=<n> raises the limit)")


def sweep_naming(client, experiment_id: str, config: DictConfig, overrides: list[str],
                 swept: dict[str, bool]) -> tuple[str, dict[str, str]]:
    """The parent's name (``naming.sweep_name``) and the tags that name the sweep's runs: its readable name,
    what it does not vary and, when an earlier sweep of the experiment varied the same keys (so its runs
    have the same names), what this one differs by, which its runs' names then carry."""
    keys = {key.lstrip("+~") for key in swept}
    values = OmegaConf.to_container(OmegaConf.masked_copy(config, [k for k in config if k != "hydra"]), resolve=True)
    setting = {key: value for key, value in store.job_params(values, overrides).items()  # what shapes the results
               if key not in keys and key.partition(".")[0] not in {*keys, *store.NON_SEMANTIC_KEYS}}
    name = naming.sweep_name(OmegaConf.select(config, "hydra.runtime.choices.sweep"), values, list(swept))
    earlier = [run for run in store.sweep_parents(client, experiment_id) if set(store.swept(run)) == set(swept)]
    differs = ""
    if earlier:
        previous = json.loads(earlier[0].data.tags.get(tags.TAG_SWEEP_SETTING, "null"))
        differs = naming.what_differs(setting, previous) if previous is not None else ""
        differs = differs or f"#{len(earlier) + 1}"  # the same settings again: the sweep's number
        if any(run.info.run_name == name for run in earlier):
            name = f"{name}{labels.SEPARATOR}{differs}"
    naming_tags = {tags.TAG_SWEEP_NAME: name, tags.TAG_SWEEP_SETTING: json.dumps(setting, sort_keys=True)}
    if differs:
        naming_tags[tags.TAG_SWEEP_DIFFERS] = differs
    return name, naming_tags


def describe(config: DictConfig, values: dict[str, list], searched: bool = False) -> str:
    """The parent run's description (MLflow shows it on the run's page): pair, backbone, size, epochs,
    and what the sweep varies (a search: the space its trials come from, its sampler and trials)."""
    pair = " + ".join(str(OmegaConf.select(config, key, default="?")) for key in ("content", "style"))
    varied = "; ".join(f"{labels.name(key)} ({key.lstrip('+~')}) in {', '.join(labels.short(v) for v in found)}"
                       for key, found in values.items())
    sweeper = config.hydra.sweeper
    what = f"Optuna search ({sweeper.sampler}, {sweeper.n_trials} trials)" if searched else "Sweep"
    return tags.literal(f"{what} of {pair} with backbone {OmegaConf.select(config, 'model.name')}, "
                        f"{OmegaConf.select(config, 'image.size')} px, {OmegaConf.select(config, 'epochs')} epochs. "
                        f"Varied: {varied or 'nothing'}.")


def job_numbers(sweep_dir: Path) -> list[int]:
    """The jobs Hydra set up in ``sweep_dir``: its numbered folders holding a ``.hydra`` folder."""
    return sorted(int(path.parent.name) for path in sweep_dir.glob("*/.hydra") if path.parent.name.isdigit())


def end_open_job(job: int, status: str, reason: str) -> list[str]:
    """End the runs of job ``job`` of this process's open sweep left RUNNING (``SweepCallback.end_job``); the ids
    of those ended, none without an open sweep."""
    return _open.end_job(job, status, reason) if _open is not None and _open.parent is not None else []


def abort_open_sweep(status: str, reason: str) -> None:
    """Close this process's open sweep, if any, with ``status`` (KILLED or FAILED)."""
    if _open is not None and _open.parent is not None:
        _open.abort(status, reason)
