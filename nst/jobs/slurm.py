"""``hydra/launcher=slurm``: sweep jobs as SLURM jobs (hydra-submitit-launcher), waited for as nst needs.

hydra-submitit-launcher's ``SlurmLauncher`` takes its jobs' results in job order: the first job that
was cancelled (``scancel``) or died (``kill -9``, the OOM killer, a lost node) raises, which aborts the
sweep while the other jobs run on, and its MLflow run stays RUNNING until the sweep ends. Here every
job is waited for, ``sacct`` being asked about all of them every ``POLL_S``, and each is taken as
soon as it ends: a job that left no result is reported failed (its run, if still RUNNING, is ended
FAILED at once with SLURM's reason) and the sweep goes on to its report, exiting 1 like a failed job
under any other launcher. In the SLURM job, nst's handler takes SIGTERM (what ``scancel`` and a time
limit send) as it takes Ctrl-C, where submitit ignores it: the run ends KILLED with its partial image.

Hydra accepts launchers only from the ``hydra_plugins`` package, so ``hydra_plugins/nst_launcher``
re-exports this class.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import OmegaConf

from nst import interrupts
from nst.jobs import driver, sweep_callback
from nst.messages import say
from nst.tracking import ownership

log = logging.getLogger(__name__)

POLL_S = 5.0  # how often sacct is asked about the sweep's jobs
# how long a job that SLURM says ended, without a result, may stay listed by squeue (its processes still
# ending: a cancelled run being recorded KILLED) before it is taken as it is
SETTLE_S = 60.0
CANCEL_WAIT_S = 60.0  # after Ctrl-C, how long cancelled jobs are given to end their runs themselves
SUCCEEDED = "COMPLETED"  # the sacct state of a job whose process exited 0


class SlurmLauncher(SubmititSlurmLauncher):
    """hydra-submitit-launcher's SLURM launcher that waits for every job and survives the loss of some."""

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Run one job in its SLURM job, SIGTERM and SIGINT interrupting it as Ctrl-C does nst's command."""
        interrupts.take_over()
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt as exc:  # the run has ended KILLED; no result, so the launcher reports the job
            print(f"nst: interrupted ({exc or 'SIGINT'}); its run, if it had started, ended KILLED", file=sys.stderr)
            raise SystemExit(130) from exc

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit the jobs and wait for all of them; on Ctrl-C cancel those still queued or running first."""
        jobs = self.submit(job_overrides, initial_job_idx)
        try:
            return wait_for_jobs(jobs, range(initial_job_idx, initial_job_idx + len(jobs)), job_overrides)
        except KeyboardInterrupt:
            cancel(jobs)
            raise

    def submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """Submit the jobs as one SLURM job array, as hydra-submitit-launcher does; its submitit jobs."""
        import submitit  # as the plugin does: only when a sweep is launched

        assert self.config is not None and len(job_overrides) > 0
        init_keys = {"max_num_timeout"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
                                         **{f"{self._EXECUTOR}_{key}": value for key, value in self.params.items()
                                            if key in init_keys})
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(**{key if key in base else f"{self._EXECUTOR}_{key}": value
                                      for key, value in self.params.items()
                                      if key not in init_keys | {"submitit_folder"}})
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
        job_params = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return executor.map_array(self, *zip(*job_params, strict=True))


def wait_for_jobs(jobs: Sequence, numbers: Sequence[int], job_overrides: Sequence[Sequence[str]],
                  poll_s: float = POLL_S) -> list[JobReturn]:
    """Each job's JobReturn, in job order, once all have ended; a job is taken as soon as sacct says it ended."""
    returns: list[JobReturn | None] = [None] * len(jobs)
    waiting = dict(enumerate(jobs))
    ended_at: dict[int, float] = {}  # when a job without a result was first seen ended
    while waiting:
        jobs[0].watcher.update()  # one sacct call for every job not yet ended
        lost = [position for position, job in waiting.items() if _ended(job) and not _has_result(job)]
        settling = still_listed([waiting[position].job_id for position in lost]) if lost else set()
        now = time.monotonic()
        for position, job in list(waiting.items()):
            if not _ended(job):
                continue
            if job.job_id in settling and now - ended_at.setdefault(position, now) < SETTLE_S:
                continue
            returns[position] = take(job, numbers[position], job_overrides[position])
            del waiting[position]
        if waiting:
            time.sleep(poll_s)
    return returns  # type: ignore[return-value]


def _ended(job) -> bool:
    """Whether the job wrote its result or SLURM's last answer says it ended (no new sacct call)."""
    return _has_result(job) or job.watcher.is_done(job.job_id, mode="cache")


def _has_result(job) -> bool:
    """Whether the job's process wrote its outcome (a value, or the error it raised)."""
    return job.paths.result_pickle.exists()


def take(job, number: int, overrides: Sequence[str]) -> JobReturn:
    """The JobReturn of an ended job: its own, or for a job that left none, the one ``lost_job`` gives."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    state = state_of(job)
    if _has_result(job) or state == SUCCEEDED:
        try:
            return job.results()[0]
        except (UncompletedJobError, FailedJobError) as exc:
            log.error("job %d (SLURM job %s) left no result: %s", number, job.job_id, exc)
    return lost_job(number, overrides, slurm_reason(job.job_id, state, sacct_exit_code(job.job_id)))


def state_of(job) -> str:
    """The job's state as ``sacct`` last gave it (``CANCELLED by 0``, ``FAILED``, ``UNKNOWN``...)."""
    return job.watcher.get_state(job.job_id, mode="cache")


def slurm_reason(job_id: str, state: str, exit_code: str = "") -> str:
    """What SLURM says ended the job, for its run and the sweep's messages: its id, state and exit code."""
    ended = f"SLURM job {job_id} {state or 'UNKNOWN'}"
    return f"{ended} (exit {exit_code})" if exit_code and exit_code != "0:0" else ended


def lost_job(number: int, overrides: Sequence[str], reason: str) -> JobReturn:
    """Report sweep job ``number``, which SLURM ended without a result, failed; what Hydra gets for it.

    Its run, if still RUNNING, ends FAILED with ``reason`` (it had no chance to end itself: its process
    is gone), its line is printed and the command will exit 1. Hydra gets a COMPLETED JobReturn without
    a value, as from nst's task function for a failed job of a sweep: Hydra's sweepers raise on a FAILED
    one, which would skip the sweep's end (its report, the failed jobs named) and any later batch.
    """
    try:
        ended = sweep_callback.end_open_job(number, "FAILED", f"{ownership.DIED}: {reason}")
    except Exception as exc:  # noqa: BLE001 - the sweep's end finds it still RUNNING and ends it
        log.warning("could not end the run of job %d: %s", number, exc)
        ended = []
    said = "; its run ended FAILED" if ended else ""
    say(f"nst: job {number} did not finish: {reason}{said}", log, logging.WARNING, sys.stderr)
    driver.failed_jobs.append(f"job {number}")
    returned = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
    returned.return_value = None
    return returned


def _slurm_command(*command: str) -> str | None:
    """A SLURM command's output, or None when it failed or is missing (the caller does without)."""
    try:
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("%s failed: %s", command[0], exc)
        return None


def sacct_exit_code(job_id: str) -> str:
    """The job's exit code as sacct gives it (``code:signal``); '' when sacct cannot say."""
    output = _slurm_command("sacct", "-X", "-n", "-P", "-o", "ExitCode", "-j", job_id)
    return output.strip().splitlines()[0].strip() if output and output.strip() else ""


def still_listed(job_ids: Sequence[str]) -> set[str]:
    """Those of ``job_ids`` that squeue still lists (running, or completing: processes not yet ended)."""
    if not job_ids:
        return set()
    output = _slurm_command("squeue", "-h", "-o", "%i", "-j", ",".join(job_ids))
    return {line.strip() for line in (output or "").splitlines()} & set(job_ids)


def cancel(jobs: Sequence) -> None:
    """Cancel the sweep's SLURM jobs that have not ended (Ctrl-C), then give them a while to record
    their runs' end themselves (KILLED, with their partial images) before the sweep is aborted."""
    remaining = [job.job_id for job in jobs if not _ended(job)]
    if not remaining:
        return
    print(f"nst: cancelling {len(remaining)} SLURM job(s): {' '.join(remaining)}", file=sys.stderr)
    _slurm_command("scancel", *remaining)
    deadline = time.monotonic() + CANCEL_WAIT_S
    while still_listed(remaining) and time.monotonic() < deadline:
        time.sleep(1)
