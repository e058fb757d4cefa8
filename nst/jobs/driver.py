"""The job driver: the one way a job is run, from the CLI, the batched launcher or a Ray/SLURM worker.

For a group of jobs (one job, or jobs the batched launcher found compatible):

1. spec: parse each job's config once into a ``RunSpec`` (``nst.jobs.config.parse``);
2. inputs: check and load them (``nst.engine.inputs.load_inputs``); a refused job is recorded FAILED;
3. record: with tracking, open the store once, skip a sweep job whose identical config
   already FINISHED (resume), start an MLflow run per job;
4. run: the jobs as the members of one batch (``nst.engine.run.execute_batch``), each
   with its recorder and run folder handed in as the engine's callbacks;
5. end each run by its outcome (FINISHED, FAILED, KILLED), and turn outcomes
   into what Hydra expects: the final loss, or an exit status for a single run.

Failures are handled in one place per caller: ``run_hydra_job`` (a job of the ``nst``
app) and ``run_group`` (the batched launcher's group).
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from nst import interrupts, phases
from nst.engine.inputs import Inputs, load_inputs
from nst.engine.optimization import CONVERGED
from nst.engine.run import Member, RunOutcome, execute_batch
from nst.engine.run_files import add_to_record
from nst.errors import NonFiniteLossError, NSTError, UnrecordedRunError
from nst.jobs import hydra_state, workers
from nst.jobs.config import parse, tracking_spec
from nst.messages import say
from nst.tracking import store, tags
from nst.tracking.recorder import RUN_ID, NoRecording, Recording, ReusedRun, RunRecorder
from nst.tracking.run_folder import RunFolder
from nst.tracking.store import TrackingSpec

log = logging.getLogger(__name__)

JobOutcome = RunOutcome | ReusedRun | BaseException  # ReusedRun: skipped by resume
# What failed in this process: jobs of a multirun, and the sweep's summary (``nst.jobs.sweep_callback``,
# which also finds in the store the failed jobs of other worker processes). The CLI exits 1 if any.
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
class _Started:
    """A job that will run: its place in the group, the engine's member, and what records it."""

    position: int
    member: Member
    recorder: RunRecorder
    folder: RunFolder  # the video, progress images and printed lines, with or without tracking


def run(cfg: DictConfig, output_dir: Path) -> RunOutcome | ReusedRun:
    """Run one job (recorded unless ``tracking.enabled=false``); the run resume found, when it skipped it.

    Whatever happens, its MLflow run ends FINISHED, FAILED or KILLED, never RUNNING;
    a failure is raised after it is recorded.
    """
    (outcome,) = run_jobs([Job.current(cfg, output_dir)])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def run_jobs(jobs: Sequence[Job]) -> list[JobOutcome]:
    """Run compatible jobs as one batch; per job its ``RunOutcome``, the ``ReusedRun`` resume skipped it
    for, or its error.

    Only errors that stop the whole batch (an unusable store, an interrupt) are raised, and
    then every run this batch created has ended (FAILED or KILLED) first. The store is opened
    once the first job's inputs are checked, before any heavy work.
    """
    recording: Recording | NoRecording | None = None
    outcomes: list[JobOutcome | None] = [None] * len(jobs)
    started: list[_Started] = []
    try:
        for position, job in enumerate(jobs):
            try:
                inputs = load_inputs(parse(job.cfg))
            except NSTError as exc:
                if job.sweep_id is not None:  # a sweep's table shows its refused jobs; a single run has its line
                    recording = recording or _recording(job)
                    recording.refused(job, job.tracking, exc)
                outcomes[position] = exc
                continue
            phases.lap(phases.CONFIG)
            recording = recording or _recording(job)
            recorder = recording.begin(job, job.tracking, inputs)
            phases.lap(phases.STORE)
            if isinstance(recorder, ReusedRun):
                outcomes[position] = recorder
            else:
                folder = RunFolder.of(job.output_dir, inputs)
                member = Member(inputs, job.output_dir, [*folder.callbacks, *recorder.callbacks], recorder.on_ready,
                                partial(_end, folder, recorder, inputs, None if job.sweep_id else recorder.address))
                started.append(_Started(position, member, recorder, folder))
        if started:
            ended = execute_batch([entry.member for entry in started])
            for entry, outcome in zip(started, ended, strict=True):
                outcomes[entry.position] = outcome
    except BaseException as exc:
        _end_interrupted(started, exc)
        raise
    _keep_phases([entry.member.output_dir for entry in started])
    return outcomes


def _recording(job: Job) -> Recording | NoRecording:
    return Recording(job.tracking) if job.tracking.enabled else NoRecording()


def _keep_phases(folders: Sequence[Path]) -> None:
    """The batch's phases (``nst.phases``: it ends there) in each run's run.json, and in the debug log."""
    timings = phases.take()
    log.debug("phases: %s", phases.summary(timings))
    for folder in folders:
        add_to_record(folder, phases=timings)


def _end(folder: RunFolder, recorder: RunRecorder, inputs: Inputs, address: str | None,
         outcome: RunOutcome | BaseException) -> RunOutcome | BaseException:
    """A member's end once the engine has written its files: the video closed with the last image, then the
    run recorded by its outcome (``Member.on_end``: an interrupt waits for it). A sweep says where its report is
    when it ends, a single run where its page is (``address``, None in a sweep)."""
    if isinstance(outcome, NonFiniteLossError):
        folder.finish(outcome.last_finite_image, outcome.evaluation - 1 if outcome.evaluation else None)
        recorder.fail(str(outcome), final=outcome.last_finite_image)
        phases.lap(phases.RECORD)
        return outcome
    folder.finish(outcome.optimization.image, outcome.optimization.evaluations)
    say_result(outcome)  # before the folder is logged, so that the log MLflow keeps has it
    try:
        recorder.finish(outcome, inputs)
    except UnrecordedRunError as exc:  # its files are on disk; the other members still get recorded
        return exc
    if address:
        say(f"nst: MLflow run {address}{store.served_by(recorder.client.tracking_uri)}", log)
    phases.lap(phases.RECORD)
    return outcome


def _end_interrupted(started: list[_Started], exc: BaseException) -> None:
    """Every run this batch started and did not end: KILLED on Ctrl-C or SIGTERM, with its partial image,
    losses and run.json (the engine wrote them), else FAILED with the error; its video closed either way
    (a partly written one is removed)."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    for entry in started:
        if entry.recorder.ended:
            continue
        try:  # the video so far, before the recorder logs the folder
            entry.folder.finish()
        except Exception as video_error:  # noqa: BLE001 - ending the run matters more
            log.warning("no video for %s: %s", entry.folder.output_dir, video_error)
        entry.recorder.fail(f"interrupted ({exc or 'SIGINT'})" if interrupted else f"{type(exc).__name__}: {exc}",
                            "KILLED" if interrupted else "FAILED", partial=interrupted)


def say_result(outcome: RunOutcome) -> None:
    """A run's result line: its image with its numbers."""
    optimization = outcome.optimization
    ended = "converged" if optimization.stopped == CONVERGED else "budget spent before it converged"
    say(f"nst: result {outcome.result_png} ({optimization.evaluations} evaluations, {ended}, "
        f"{optimization.elapsed_s:.1f} s, final loss {optimization.final.get('total', float('nan')):.4g})", log)


# --- outcomes as Hydra wants them ------------------------------------------------------------


def job_result(outcome: JobOutcome) -> dict[str, Any] | None:
    """What a sweeper reads of a job (Hydra's ``JobReturn.return_value``): its final ``loss``, its automatic
    ``measures`` (the ``auto.*`` metrics) and its MLflow ``run_id`` (None untracked); None for a failed job.
    A job resume skipped gives the numbers of the run it found."""
    if isinstance(outcome, ReusedRun):
        metrics = outcome.metrics
        return {"loss": metrics.get("total"), "run_id": outcome.run_id,
                "measures": {key: value for key, value in metrics.items() if key.startswith("auto.")}}
    if isinstance(outcome, RunOutcome):
        return {"loss": outcome.optimization.final.get("total"), "run_id": outcome.record.get(RUN_ID),
                "measures": dict(outcome.record.get("measures", {}))}
    return None


def report_error(error: BaseException) -> None:
    """One line on stderr (and in the job's log file, not again on the terminal) naming what was refused."""
    say(f"nst: error: {error}", log, logging.ERROR, sys.stderr)


def run_hydra_job(cfg: DictConfig) -> dict[str, Any] | None:
    """Hydra's task function: run the current job, in a single run or as one job of a multirun.

    A single run's user error exits with status 2; in a multirun a failing job is
    recorded FAILED and the other jobs go on (the CLI exits 1 at the end).
    """
    in_sweep = hydra_state.in_multirun()
    interrupts.check()  # one dropped while the previous job ended: no further job starts
    try:
        with workers.job():
            outcome = run(cfg, hydra_state.output_dir())
    except NSTError as exc:
        report_error(exc)
        if in_sweep:
            failed_jobs.append(f"job {hydra_state.job_number()}")
            return None
        _remove_if_only_hydras(hydra_state.output_dir())
        sys.exit(exc.exit_code)
    except Exception:
        if not in_sweep:
            raise
        log.exception("job %s failed", hydra_state.job_number())
        failed_jobs.append(f"job {hydra_state.job_number()}")
        return None
    return job_result(outcome)


HYDRAS_FILES = {".hydra", "cli.log"}  # what Hydra writes in a run folder before the job starts


def _remove_if_only_hydras(folder: Path) -> None:
    """Remove a refused single run's folder when it holds nothing but what Hydra wrote before the job."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= HYDRAS_FILES:
        shutil.rmtree(folder, ignore_errors=True)


def run_group(jobs: list[Job]) -> list[dict[str, Any] | None]:
    """The batched launcher's group: per job its ``job_result``, None when it failed.

    Like the CLI in a multirun, a failing job is reported (and recorded FAILED in
    MLflow) without stopping the sweep.
    """
    numbers = [f"job {job.tags.get(tags.TAG_JOB)}" for job in jobs]
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
    return [job_result(outcome) for outcome in outcomes]
