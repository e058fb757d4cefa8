"""``sweep=pareto``: a Hydra sweeper that searches for the content-style Pareto front with Optuna.

A grid runs every combination; a search asks Optuna (ask-and-tell) for ``n_trials`` settings from a space
(``hydra.sweeper.params``, in Hydra's override syntax: ``tag(log, interval(1e-2, 1e4))``, ``choice(...)``,
``range(...)``), runs them as ordinary jobs through whichever launcher is configured, ``n_jobs`` at a time,
and tells Optuna each job's two objectives: the automatic measures every run logs (``auto.*`` metrics), which
mean the same whatever a trial's weights and layers. A job that failed is told to Optuna as failed and the
search goes on.

The study is kept in an Optuna storage beside the MLflow store (``<output_dir>/optuna.db`` by default) under
a name made from the command, so the same command run again adds ``n_trials`` more trials to it; a trial an
interrupted command left unfinished is asked again first, and a job whose config already FINISHED is reused
by the jobs' own resume. When the search ends, the whole study is written to ``<sweep dir>/study/``
(``trials.csv``, ``study.json`` with Optuna's hyperparameter importances per objective), which the sweep's
parent run publishes (``nst.compare.pareto``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf

from nst.errors import ConfigError
from nst.messages import say

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2", "random")
DIRECTIONS = ("maximize", "minimize")
SYNTAX = "choice(a, b, ...), range(start, stop[, step]), interval(low, high), tag(log, interval(low, high)) " \
         "or tag(int, interval(low, high))"


@dataclass(frozen=True)
class Dimension:
    """One searched key: Optuna's distribution of it and, for a choice, each option's override text."""

    key: str
    text: str  # as written in the sweep file or on the command line
    distribution: Any  # optuna.distributions.BaseDistribution
    log: bool = False

    def override(self, value) -> str:
        """The job's override for the value Optuna suggested."""
        return f"{self.key}={value!r}" if isinstance(value, float) else f"{self.key}={value}"


def parse_space(params: Mapping[str, Any]) -> dict[str, Dimension]:
    """The search space of ``hydra.sweeper.params`` (and of sweeps typed on the command line); one
    ``ConfigError`` naming the key and the syntax for anything else."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    parser = OverridesParser.create()
    space = {}
    for key, text in params.items():
        where = f"hydra.sweeper.params.{key}"
        try:
            value = parser.parse_override(f"{key}={text}").value()
        except Exception as exc:  # noqa: BLE001 - Hydra's grammar errors are long; the syntax is what helps
            raise ConfigError(where, text, SYNTAX) from exc
        if isinstance(value, ChoiceSweep | RangeSweep):
            options = [Override._get_value_element_as_str(option) for option in _options(value)]
            if not options:
                raise ConfigError(where, text, f"at least one value: {SYNTAX}")
            space[key] = Dimension(key, str(text), CategoricalDistribution(list(dict.fromkeys(options))))
        elif isinstance(value, IntervalSweep):
            low, high, log_scale = value.start, value.end, "log" in value.tags
            if not low < high or (log_scale and low <= 0):
                raise ConfigError(where, text, "an interval with low < high (and low > 0 on a log scale)")
            kind = IntDistribution if "int" in value.tags else FloatDistribution
            bounds = (int(low), int(high)) if kind is IntDistribution else (float(low), float(high))
            space[key] = Dimension(key, str(text), kind(*bounds, log=log_scale), log_scale)
        else:
            raise ConfigError(where, text, SYNTAX)
    return space


def _options(sweep: ChoiceSweep | RangeSweep) -> list:
    if isinstance(sweep, ChoiceSweep):
        return list(sweep.list)
    step = sweep.step or 1
    values, current = [], sweep.start
    while (current < sweep.stop) if step > 0 else (current > sweep.stop):
        values.append(current)
        current += step
    return values


def split_arguments(arguments: Sequence[str], params: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The command line's fixed overrides, and the search space's entries: the sweep file's ``params``, less
    the keys the command line fixes (``init=content``), with its sweeps (``key=1,10``, ``key=interval(...)``)
    joining them or replacing the file's entry for the same key."""
    parser = OverridesParser.create()
    fixed, searched = [], dict(params)
    for text, override in zip(arguments, parser.parse_overrides(list(arguments)), strict=True):
        key = override.get_key_element()
        if override.is_sweep_override():
            searched[key] = text.partition("=")[2]
        else:
            fixed.append(text)
            searched.pop(key, None)
    return fixed, searched


def study_name(fixed: Sequence[str], space: Mapping[str, Dimension], objectives: Mapping[str, str],
               sampler: str, seed: int) -> str:
    """The name the same command always gives its study: its fixed overrides, space, objectives, sampler and
    seed (not ``n_trials``: running it again adds trials to the same study)."""
    identity = json.dumps([sorted(fixed), {k: d.text for k, d in sorted(space.items())}, dict(objectives),
                           sampler, seed])
    return f"nst-pareto-{hashlib.sha1(identity.encode()).hexdigest()[:12]}"


def default_storage(output_dir: str | Path) -> str:
    """The Optuna storage beside the local MLflow store: ``<output_dir>/optuna.db``."""
    return f"sqlite:///{Path(output_dir).resolve() / 'optuna.db'}"


def make_sampler(name: str, seed: int, startup_trials: int):
    """Optuna's sampler ``name``, seeded. ``startup_trials`` is TPE's number of random trials before its
    model, NSGA-II's population."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, startup_trials))
    return optuna.samplers.RandomSampler(seed=seed)


def check_settings(settings: Mapping[str, Any]) -> None:
    """Refuse, in one line naming the ``hydra.sweeper`` key, settings no search can run with."""
    for key, allowed in (("n_trials", "a whole number of trials >= 1"), ("n_jobs", "a whole number of jobs per round >= 1"),
                         ("startup_trials", "a whole number >= 1")):
        value = settings.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"hydra.sweeper.{key}", value, allowed)
    if settings.get("sampler") not in SAMPLERS:
        raise ConfigError("hydra.sweeper.sampler", settings.get("sampler"), f"one of {', '.join(SAMPLERS)}")
    objectives = settings.get("objectives") or {}
    if len(objectives) != 2 or any(direction not in DIRECTIONS for direction in objectives.values()):
        raise ConfigError("hydra.sweeper.objectives", dict(objectives),
                          "two metrics, each maximize or minimize (auto.ssim_content: maximize)")


def objective_values(job: JobReturn, objectives: Sequence[str]) -> list[float] | None:
    """A job's objective values (its ``auto.*`` measures, ``nst.jobs.driver.job_result``); None when the job
    failed or left one out or non-finite."""
    if job.status != JobStatus.COMPLETED or not isinstance(job.return_value, dict):
        return None
    measures = job.return_value.get("measures") or {}
    values = [measures.get(name) for name in objectives]
    if any(value is None or not math.isfinite(value) for value in values):
        return None
    return [float(value) for value in values]


class ParetoSweeper(Sweeper):
    """Optuna's ask-and-tell over nst jobs: ``n_trials`` trials, ``n_jobs`` launched at a time."""

    def __init__(self, n_trials: int = 12, n_jobs: int = 1, seed: int = 0, sampler: str = "tpe",
                 startup_trials: int = 8, storage: str | None = None, study_name: str | None = None,
                 objectives: Mapping[str, str] | None = None, params: Mapping[str, Any] | None = None) -> None:
        self.n_trials, self.n_jobs, self.seed = n_trials, n_jobs, seed
        self.sampler, self.startup_trials = sampler, startup_trials
        self.storage, self.name = storage, study_name
        self.objectives = dict(objectives or {})
        self.params = dict(params or {})
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.config, self.hydra_context, self.config_loader = config, hydra_context, hydra_context.config_loader
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        check_settings(vars(self))
        fixed, searched = split_arguments(arguments, self.params)
        space = parse_space(searched)
        if not space:
            raise ConfigError("hydra.sweeper.params", {}, f"at least one key to search: {SYNTAX}")
        name = self.name or study_name(fixed, space, self.objectives, self.sampler, self.seed)
        storage = self.storage or default_storage(self.config.paths.output_dir)
        study = open_study(storage, name, self.objectives)
        study.sampler = make_sampler(self.sampler, self.seed + len(study.trials), self.startup_trials)
        say(f"nst: study {name} in {storage}: {len(study.trials)} trial(s) so far, {self.n_trials} more "
            f"({self.sampler}, {self.n_jobs} at a time)", log)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        distributions = {key: dimension.distribution for key, dimension in space.items()}
        returns: list[JobReturn] = []
        try:
            while len(returns) < self.n_trials:
                trials = [study.ask(distributions) for _ in range(min(self.n_jobs, self.n_trials - len(returns)))]
                batch = [[*fixed, *(space[key].override(trial.params[key]) for key in space)] for trial in trials]
                self.validate_batch_is_legal(batch)
                launched = self.launcher.launch(batch, initial_job_idx=len(returns))
                for trial, job in zip(trials, launched, strict=True):
                    self.tell(study, trial, job, len(returns))
                    returns.append(job)
        finally:
            retry_unfinished(study)  # an interrupt: the round's trials are asked again next time
            write_study(study, space, self.objectives, sweep_dir,
                        {"name": name, "storage": storage, "sampler": self.sampler, "seed": self.seed})
        return returns

    def tell(self, study, trial, job: JobReturn, number: int) -> None:
        """Tell Optuna the job's objective values, or that it failed; say which."""
        import optuna

        result = job.return_value if job.status == JobStatus.COMPLETED else None
        if isinstance(result, dict) and result.get("run_id"):
            trial.set_user_attr("run_id", result["run_id"])
        trial.set_user_attr("job", number)
        values = objective_values(job, list(self.objectives))
        if values is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            say(f"nst: trial {trial.number} (job {number}) failed; the search goes on", log, logging.WARNING,
                sys.stderr)
            return
        study.tell(trial, values)
        shown = ", ".join(f"{key} {value:.4g}" for key, value in zip(self.objectives, values, strict=True))
        say(f"nst: trial {trial.number} (job {number}): {shown}", log)


def open_study(storage: str, name: str, objectives: Mapping[str, str]):
    """The study ``name`` in ``storage``: created, or loaded to add trials to it, its trials an interrupted
    command left unfinished queued to be asked for again (``retry_unfinished``)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # nst says what each trial gave
    study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                directions=list(objectives.values()))
    retry_unfinished(study)
    return study


def retry_unfinished(study) -> None:
    """Fail the trials left RUNNING (a command interrupted mid-round) and queue their settings again, so the
    next trials asked are those: their jobs, if they FINISHED after all, are reused by the jobs' resume."""
    import optuna

    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)


def write_study(study, space: Mapping[str, Dimension], objectives: Mapping[str, str], sweep_dir: Path,
                about: Mapping[str, Any]) -> None:
    """The whole study (every trial so far, of every command that added to it) as ``trials.csv`` and
    ``study.json`` (with Optuna's importances per objective) in the sweep's ``study`` folder, where
    ``nst.compare.pareto.read_study`` reads it."""
    from nst.compare import pareto  # pandas: imported when a search ends, not when nst starts

    folder = sweep_dir / pareto.STUDY_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    names = list(objectives)
    with open(folder / pareto.TRIALS_CSV, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["trial", "state", "run_id", *(f"params.{key}" for key in space), *names])
        for trial in study.get_trials(deepcopy=False):
            values = trial.values if trial.values is not None else [math.nan] * len(names)
            writer.writerow([trial.number, trial.state.name, trial.user_attrs.get("run_id", ""),
                             *(trial.params.get(key, "") for key in space), *values])
    (folder / pareto.STUDY_JSON).write_text(json.dumps({
        **about, "objectives": dict(objectives), "space": {key: d.text for key, d in space.items()},
        "importances": importances(study, names)}, indent=1))


def importances(study, objectives: Sequence[str]) -> dict[str, dict[str, float]]:
    """Optuna's fANOVA importance of each searched key for each objective ({} for an objective it cannot
    assess yet: fewer than two finished trials, or nothing varied)."""
    import optuna

    found = {}
    for index, name in enumerate(objectives):
        try:
            found[name] = optuna.importance.get_param_importances(
                study, target=lambda trial, index=index: trial.values[index],
                evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
        except (RuntimeError, ValueError) as exc:
            log.info("no importances for %s yet: %s", name, exc)
            found[name] = {}
    return found
