"""The job driver: the one way a job is run, from the CLI, the batched launcher or a Ray/SLURM worker.

For a group of jobs (one job, or jobs the batched launcher found compatible):

1. parse each job's config once into a ``RunSpec`` (``nst.config.parse``) and
   prepare its inputs (``nst.run.prepare``); a refused job is recorded FAILED;
2. recording on or off: with tracking, open the store once, skip a sweep job
   whose identical config already FINISHED (resume), start an MLflow run per job;
3. execute them as one batch (``nst.run.execute_batch``) with each job's
   recorder handed in as the engine's callback;
4. end each run by its outcome (FINISHED, FAILED, KILLED), and turn outcomes
   into what Hydra expects: the final loss, or an exit status for a single run.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nst.engine.run import CONFIG_YAML, BatchJob, Inputs, RunOutcome, execute_batch
from nst.engine.run import prepare as prepare_spec
from nst.engine.spec import TrackingSpec
from nst.errors import NonFiniteLossError, NSTError, TrackingError, UnrecordedRunError
from nst.jobs import hydra_state
from nst.jobs.config import parse, tracking_spec
from nst.messages import say
from nst.tracking import store
from nst.tracking.recorder import NoRecording, Recording, RunRecorder, relog_folder
from nst.tracking.run_folder import RunFolder

log = logging.getLogger(__name__)

Outcome = RunOutcome | BaseException | None  # None: skipped by resume
# Jobs of a multirun that failed in this process; the CLI exits 1 when there are any (with tracking, the
# sweep callback also finds failed jobs in the store, those of other worker processes included)
failed_jobs: list[str] = []


@dataclass
class Job:
    """A job as Hydra set it up: its config, its folder, and what Hydra knew about it then.

    The batched launcher captures every job first and runs them later, when
    Hydra's global state describes another job, so the tags are taken at once.
    """

    cfg: DictConfig
    output_dir: Path
    tags: dict[str, str] = field(default_factory=dict)
    sweep_id: str | None = None

    @classmethod
    def current(cls, cfg: DictConfig, output_dir: Path) -> Job:
        return cls(cfg, Path(output_dir), hydra_state.job_tags(), hydra_state.current_sweep_id())

    @cached_property
    def config(self) -> dict[str, Any]:
        """The resolved config as a plain dict (params of a run, refused or not)."""
        return OmegaConf.to_container(self.cfg, resolve=True)

    @cached_property
    def tracking(self) -> TrackingSpec:
        return tracking_spec(self.cfg)


@dataclass
class _Member:
    position: int
    inputs: Inputs
    recorder: RunRecorder
    folder: RunFolder  # the video, progress images and printed lines, with or without tracking


def prepare(cfg: DictConfig) -> Inputs:
    """Parse and check ``cfg``, and load its images; raises ``NSTError`` before any heavy work."""
    return prepare_spec(parse(cfg))


def run(cfg: DictConfig, output_dir: Path) -> RunOutcome | None:
    """Run one job (recorded unless ``tracking.enabled=false``); None when resume skipped it.

    Whatever happens, its MLflow run ends FINISHED, FAILED or KILLED, never RUNNING;
    a failure is raised after it is recorded.
    """
    (outcome,) = run_jobs([Job.current(cfg, output_dir)])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_jobs(jobs: Sequence[Job]) -> list[Outcome]:
    """Run compatible jobs as one batch; per job its ``RunOutcome``, None (skipped) or its error.

    Only errors that stop the whole batch (an unusable store, an interrupt) are raised, and
    then every run this batch created has ended (FAILED or KILLED) first.
    """
    recording = Recording(jobs[0].tracking) if jobs[0].tracking.enabled else NoRecording()
    outcomes: list[Outcome] = [None] * len(jobs)
    members: list[_Member] = []
    try:
        for position, job in enumerate(jobs):
            try:
                inputs = prepare(job.cfg)
            except NSTError as exc:
                recording.refused(job, job.tracking, exc)
                outcomes[position] = exc
                continue
            recorder = recording.begin(job, job.tracking, inputs)
            if recorder is not None:
                folder = RunFolder.of(job.output_dir, inputs)
                members.append(_Member(position, inputs, recorder, folder))
        if members:
            for member, outcome in zip(members, _execute(members, jobs), strict=True):
                outcomes[member.position] = outcome
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        for member in members:
            if not member.recorder.ended:
                if interrupted:
                    try:  # the video so far, before the recorder logs the folder
                        member.folder.finish()
                    except Exception as video_error:  # noqa: BLE001 - ending the run matters more
                        log.warning("no video for %s: %s", member.folder.output_dir, video_error)
                member.recorder.fail("interrupted" if interrupted else f"{type(exc).__name__}: {exc}",
                                     "KILLED" if interrupted else "FAILED", partial=interrupted)
        raise
    return outcomes


def _execute(members: list[_Member], jobs: Sequence[Job]) -> list[RunOutcome | BaseException]:
    """The batch through the engine, each member's recorder ended by its outcome."""
    batch = [BatchJob(m.inputs, jobs[m.position].output_dir, [*m.folder.callbacks, *m.recorder.callbacks],
                      m.recorder.on_ready) for m in members]
    results: list[RunOutcome | BaseException] = execute_batch(batch)
    for index, (member, result) in enumerate(zip(members, results, strict=True)):
        # the video is on disk before the recorder logs the run's folder
        if isinstance(result, NonFiniteLossError):
            member.folder.finish(result.last_finite_image, result.evaluation - 1 if result.evaluation else None)
            member.recorder.fail(str(result), final=result.last_finite_image)
        elif isinstance(result, BaseException):
            member.recorder.fail(f"{type(result).__name__}: {result}")
        else:
            member.folder.finish(result.result.image, result.result.evaluations)
            try:
                member.recorder.finish(result, member.inputs)
            except UnrecordedRunError as exc:  # its files are on disk; the other members still get recorded
                results[index] = exc
                continue
            # a sweep says where its report is when it ends, a single run where its page is
            say_where(result, None if jobs[member.position].sweep_id else member.recorder.address)
    return results


def say_where(outcome: RunOutcome, address: str | None) -> None:
    """A run's last lines: its result image with its numbers and, when given, its page in the MLflow UI."""
    result = outcome.result
    say(f"nst: result {outcome.result_png} ({result.evaluations} evaluations, {result.elapsed_s:.1f} s, "
        f"final loss {result.final.get('total', float('nan')):.4g})", log)
    if address:
        say(f"nst: MLflow run {address}  (make ui serves it)", log)


def relog(folder: Path) -> tuple[str, bool]:
    """Record the run whose files are in ``folder`` in the store its config names (``nst-report --relog``);
    its run id, and whether anything was recorded now (False: the run had ended by itself)."""
    config = folder / CONFIG_YAML
    if not config.is_file():
        raise TrackingError(f"{folder} holds no {CONFIG_YAML}: not the folder of an nst run")
    cfg = OmegaConf.load(config)
    tracking = tracking_spec(cfg)
    if not tracking.enabled:
        raise TrackingError(f"{folder} was run with tracking=none: there is no store to record it in")
    output_dir = Path(tracking.output_dir)
    if not output_dir.is_absolute():  # relative to where the run was started: the folder's ancestor of that name
        output_dir = next((parent for parent in folder.resolve().parents
                           if parent.as_posix().endswith("/" + output_dir.as_posix().strip("./"))), output_dir)
    tracking = replace(tracking, output_dir=str(output_dir))
    # frame_every, or the tracking.log_every of a run recorded before the key moved
    every = OmegaConf.select(cfg, "frame_every") or OmegaConf.select(cfg, "tracking.log_every") or 10
    return relog_folder(*store.connect(tracking), folder, int(every))


# --- outcomes as Hydra wants them ------------------------------------------------------------


def final_loss(outcome: Outcome) -> float | None:
    """What Hydra's sweepers read: the final total loss; None for a skipped or failed job."""
    if outcome is None or isinstance(outcome, BaseException):
        return None
    return outcome.result.final.get("total")


def report_error(error: BaseException) -> None:
    """One line on stderr (and in the job's log file, not again on the terminal) naming what was refused."""
    say(f"nst: error: {error}", log, logging.ERROR, sys.stderr)


def run_hydra_job(cfg: DictConfig) -> float | None:
    """Hydra's task function: run the current job, in a single run or as one job of a multirun.

    A single run's user error exits with status 2; in a multirun a failing job is
    recorded FAILED and the other jobs go on (the CLI exits 1 at the end).
    """
    in_sweep = hydra_state.in_multirun()
    try:
        outcome = run(cfg, hydra_state.output_dir())
    except NSTError as exc:
        report_error(exc)
        if in_sweep:
            failed_jobs.append(f"job {hydra_state.job_number()}")
            return None
        sys.exit(exc.exit_code)
    except Exception:
        if not in_sweep:
            raise
        log.exception("job %s failed", hydra_state.job_number())
        failed_jobs.append(f"job {hydra_state.job_number()}")
        return None
    return final_loss(outcome)


def run_group(jobs: list[Job]) -> list[float | None]:
    """The batched launcher's group: per job the final total loss, or None when it failed or was skipped.

    Like the CLI in a multirun, a failing job is reported (and recorded FAILED in
    MLflow) without stopping the sweep.
    """
    numbers = [f"job {job.tags.get(store.TAG_JOB)}" for job in jobs]
    try:
        outcomes = run_jobs(jobs)
    except NSTError as exc:
        report_error(exc)
        failed_jobs.extend(numbers)
        return [None] * len(jobs)
    except Exception:
        log.exception("batch of %s failed", ", ".join(numbers))
        failed_jobs.extend(numbers)
        return [None] * len(jobs)
    for number, outcome in zip(numbers, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            report_error(outcome)
            failed_jobs.append(number)
    return [final_loss(outcome) for outcome in outcomes]
