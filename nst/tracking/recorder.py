"""Recording runs in MLflow: the callback object the engine reports to, and the run's bookkeeping.

The engine (``nst.engine.run``) reports only through callbacks: ``RunRecorder.on_evaluation``
for every function evaluation and ``RunRecorder.on_ready`` with the run record.
The job driver (``nst.jobs``) opens one ``Recording`` per batch of jobs (the store
connection), asks it whether a job already finished (resume), starts a
``RunRecorder`` per job and hands it the outcome. ``NoRecording`` and
``NullRecorder`` are the same interfaces doing nothing, for ``tracking=none``.
Where images sit on the step slider is ``nst.tracking.steps``, a run's name
``nst.tracking.naming``, and recording a run's folder later ``nst.tracking.relog``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from nst.engine.inputs import Inputs
from nst.engine.optimization import CONVERGED
from nst.engine.run import RunOutcome
from nst.errors import TrackingError, UnrecordedRunError
from nst.figures import labels
from nst.figures.grid import triptych
from nst.figures.plots import loss_curve
from nst.files import is_partial
from nst.images.files import tensor_to_pil
from nst.messages import say
from nst.tracking import store, tags
from nst.tracking.naming import MAX_NAME, run_name
from nst.tracking.steps import PROGRESS, StepGrid
from nst.tracking.store import TrackingSpec

log = logging.getLogger(__name__)

RUN_ID = "mlflow_run_id"  # in run.json: the run's MLflow run


class JobInfo(Protocol):
    """What the recorder needs of a job (``nst.jobs.Job``): its resolved config, folder and tags."""

    config: Mapping[str, Any]
    output_dir: Path
    tags: dict[str, str]
    sweep_id: str | None


def metrics(record: dict, timestamp_ms: int, weights: Mapping[str, float] | None = None) -> list:
    """An evaluation's record (a row of losses.csv) as MLflow metrics at its evaluation number, with what
    makes runs comparable in MLflow's charts (whose axes are linear): ``total_per_weight`` (the total divided
    by alpha + beta, as ``weights`` in run.json give them: the total itself grows with beta) and ``log10/``
    companions of the content, style and per-weight losses."""
    from mlflow.entities import Metric  # MLflow takes seconds to import: only when recording

    step = int(record["evaluation"])
    values = {key: float(value) for key, value in record.items()
              if key not in ("evaluation", "epoch") and isinstance(value, int | float) and math.isfinite(value)}
    weight = (weights or {}).get("content", 0.0) + (weights or {}).get("style", 0.0)
    if weight > 0 and "total" in values:
        values["total_per_weight"] = values["total"] / weight
    values.update({f"log10/{key}": math.log10(values[key]) for key in ("content", "style", "total_per_weight")
                   if values.get(key, 0.0) > 0})
    return [Metric(key, value, timestamp_ms, step) for key, value in values.items()]


class RunRecorder:
    """Logs one run: params, per-evaluation metrics, image steps, final artifacts, status.

    Metrics are buffered and written in batches (at each image step and at the
    end), so a run costs a few dozen store transactions, not one per evaluation.
    During the optimisation the writes are made by a ``Writer`` thread, so a slow or
    locked store delays the records, never the optimisation; a write the store
    refuses (locked beyond the wait, disk full) is kept, with every later one, and
    tried again when the run ends, after the engine has put result.png, losses.csv
    and run.json in the run's folder.
    """

    def __init__(self, client, run_id: str, output_dir: Path, grid: StepGrid, *, address: str | None = None,
                 last_step: int | None = None, pending: list | None = None):
        """A new run has no image and no metric yet; a run recorded before (``nst.tracking.relog``) passes
        the last step of the slider that has an image and the metrics the store still lacks."""
        self.client, self.run_id, self.output_dir = client, run_id, Path(output_dir)
        self.grid = grid
        self.pending: list = list(pending or [])
        self.writer: Writer | None = None
        self.last_image: torch.Tensor | None = None
        self.last_step = last_step  # the last step of the slider that has an image
        self.ended = False
        self.address = address  # the run's page in the MLflow UI
        self.weights: dict[str, float] = {}  # alpha, beta (and TV) from the run record

    # --- the engine's callbacks ---

    @property
    def callbacks(self) -> list:
        return [self.on_evaluation]

    def on_evaluation(self, record: dict, image: torch.Tensor) -> None:
        self.pending += metrics(record, int(time.time() * 1000), self.weights)
        self.last_image = image
        steps = self.grid.steps(int(record["evaluation"]))
        if steps:
            picture = tensor_to_pil(image)
            batch, self.pending = self.pending, []
            self.last_step = steps[-1]
            self.write(lambda: self.log_step_picture(picture, steps))
            self.write(lambda: self.log_metrics(batch))

    def on_ready(self, record: dict) -> None:
        """The backbone actually used, the device and the batch as ``run.*`` params (the whole record is
        run.json, logged with the run's folder)."""
        self.weights = dict(record.get("loss_weights", {}))
        record[RUN_ID] = self.run_id  # the folder's run.json names its MLflow run
        params = store.flatten({key: record[key] for key in store.CORE_RECORD if key in record}, "run.")
        self.write(lambda: store.log_params(self.client, self.run_id, params))

    def write(self, action: Callable[[], None]) -> None:
        """A store write made by the writer thread, in order, while the optimisation goes on."""
        if self.writer is None:
            self.writer = Writer()
        self.writer.submit(action)

    # --- logging ---

    def log_inputs(self, inputs: Inputs) -> None:
        """The images as the run used them: content, styles, masks."""
        self.log_picture(tensor_to_pil(inputs.content), "inputs/content.png")
        self.log_picture(tensor_to_pil(inputs.style), "inputs/style.png")
        for number, extra_style in enumerate(inputs.styles[1:], start=2):
            self.log_picture(tensor_to_pil(extra_style), f"inputs/style_{number}.png")
        for number, mask in enumerate(inputs.masks or [], start=1):
            if mask is not None:
                self.log_picture(tensor_to_pil(mask.expand(-1, 3, -1, -1)), f"inputs/mask_{number}.png")

    def log_step_picture(self, picture: Image.Image, steps: list[int]) -> None:
        for step in steps:
            self.client.log_image(self.run_id, picture, key=PROGRESS, step=step, synchronous=True)

    def log_metrics(self, metrics: list) -> None:
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000], synchronous=True)

    def flush(self) -> None:
        """Write the buffered metrics; they leave the buffer only once the store took them."""
        self.log_metrics(self.pending)
        self.pending = []

    def log_file(self, path: Path, folder: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_picture(self, picture: Image.Image, name: str) -> None:
        self.client.log_image(self.run_id, picture, artifact_file=name)

    def keep_outputs(self, last: Image.Image | None, steps: list[int]) -> None:
        """The last image at the slider's remaining ``steps``, and the run's folder (its video, written by
        ``nst.tracking.run_folder``, included)."""
        if last is not None:
            self.log_step_picture(last, steps)
        for path in sorted(self.output_dir.iterdir()):
            if path.name != ".hydra" and not is_partial(path):
                self.log_file(path, path.name if path.is_dir() else None)
        self.log_file(self.output_dir / ".hydra", ".hydra")

    def log_result(self, image: torch.Tensor, history: list[dict], evaluations: int,
                   overview: Image.Image | None = None, last: Image.Image | None = None,
                   measured: Mapping[str, float] | None = None, stopped: str | None = None) -> None:
        """The result, its loss curve (and the content-style-result overview), the folder, and the final
        values at step 0 (a single value at step 0 is a bar chart in MLflow, not a lone point on a step axis):
        the evaluation count, ``converged`` (1: stopped by the convergence test, 0: ran out of budget) and
        the automatic measures (the run record's ``measures``)."""
        from mlflow.entities import Metric

        self.log_picture(last or tensor_to_pil(image), "result/result.png")  # last: the same picture
        if overview is not None:
            self.log_picture(overview, "result/triptych.png")
        self.log_picture(loss_curve(history), "result/loss_curve.png")
        self.keep_outputs(last, self.grid.after(self.last_step))
        now = int(time.time() * 1000)
        values = {"evaluations": evaluations, **({"converged": float(stopped == CONVERGED)} if stopped else {}),
                  **(measured or {})}
        self.log_metrics([Metric(key, float(value), now, 0) for key, value in values.items()
                          if math.isfinite(value)])  # a NaN (SSIM of a result under 11 px) is left out

    # --- the end of the run ---

    def finish(self, outcome: RunOutcome, inputs: Inputs) -> None:
        """Record the result and end FINISHED; raises ``UnrecordedRunError`` (the files are kept) if the
        store still refuses."""
        result = outcome.optimization
        overview = triptych(inputs.content, inputs.style, result.image)
        last = tensor_to_pil(result.image)
        measured = outcome.record.get("measures")
        stuck = outcome.record.get("stuck_layers")

        def record() -> None:
            if stuck:
                self.client.set_tag(self.run_id, tags.TAG_STUCK_LAYERS, json.dumps(stuck))
            self.log_result(result.image, result.history, result.evaluations, overview, last, measured,
                            result.stopped)

        try:
            self.end_with(record, "FINISHED")
        except TrackingError as exc:
            raise UnrecordedRunError(
                f"the run ended and its files are in {self.output_dir} (result.png, losses.csv, run.json), but "
                f"the MLflow store did not record it: {exc}. Once the store works, record it with: "
                f"nst-report --relog {self.output_dir}") from exc

    def fail(self, reason: str, status: str = "FAILED", final: torch.Tensor | None = None,
             partial: bool = False) -> None:
        """End FAILED (or KILLED) with the reason; keep the last finite or partial image (at the slider's
        next step) and the files.

        Called while something else went wrong: when the store refuses the run's records (a full disk), the
        reason and the status alone are tried; a store that refuses those too is reported, not raised (the
        run is then ended FAILED by the next command that opens the store, once this process is gone).
        """
        if partial and self.last_image is not None:  # the engine wrote it as partial.png
            final = self.last_image
        keep = final is not None or partial
        last = tensor_to_pil(final) if final is not None else None

        def record() -> None:
            self.client.set_tag(self.run_id, tags.TAG_FAILURE, reason[:5000])
            if keep:
                self.keep_outputs(last, self.grid.after(self.last_step)[:1])

        try:
            self.end_with(record, status)
        except TrackingError as exc:
            try:  # its records did not all fit (a full disk): at least the reason and the end, two small writes
                self.client.set_tag(self.run_id, tags.TAG_FAILURE, reason[:5000])
                self.client.set_terminated(self.run_id, status)
            except TrackingError:
                print(f"nst: warning: the MLflow store did not record the end of run {self.run_id}: {exc}; the "
                      f"next nst or nst-report that opens the store ends it FAILED", file=sys.stderr)

    def end_with(self, record: Callable[[], None], status: str) -> None:
        """The run's writes (those the store refused tried again), then ``record``, then the status; the
        heartbeat stops either way."""
        try:
            refused = self.writer.close() if self.writer is not None else []
            self.writer = None
            while refused:
                refused[0]()
                refused.pop(0)
            record()
            self.end(status)
        finally:
            self.ended = True
            store.let_go(self.run_id)

    def end(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


class Recording:
    """The MLflow side of a batch of jobs: one store connection, one run per job.

    The store is opened with the first job, before any work, so an unreachable server fails a single run at
    once; a job of a sweep waits for it (``NST_STORE_WAIT``) instead, since the command that launched the sweep
    found it answering: a server restarted while a launcher (SLURM) starts jobs in new processes.
    """

    def __init__(self, tracking: TrackingSpec):
        self.tracking = tracking
        self.client, self.experiment_id = None, ""

    def open(self, job: JobInfo) -> None:
        """Connect for ``job``'s run, the first time."""
        if self.client is None:
            self.client, self.experiment_id = store.connect(self.tracking, wait=job.sweep_id is not None)

    def start(self, job: JobInfo, tracking: TrackingSpec, extra: dict[str, str],
              inputs: Inputs | None = None) -> RunRecorder:
        """Create the job's MLflow run (a child of its sweep's parent run, if any) with its params and inputs.

        A sweep's child is named by its swept values (``nst.tracking.naming``) and has them as ``sweep.*``
        params. From the moment the run exists, a failure ends it FAILED with the reason before it is raised.
        """
        self.open(job)
        member = inputs.spec.member if inputs else None
        grid = StepGrid.planned(member.frame_every if member else 1, member.planned_evaluations if member else 1)
        run_tags = {tags.TAG_ROLE: "run", **store.environment_tags(), **job.tags,
                    tags.TAG_OUTPUT_DIR: str(Path(job.output_dir).resolve()), tags.TAG_IMAGE_STEPS: grid.tag(),
                    **extra}
        parent = store.sweep_parent(self.client, self.experiment_id, job.sweep_id)
        swept = store.swept(parent) if parent is not None else {}
        name = run_name(job.config, job.tags, swept)
        if parent is not None:
            run_tags.update({tags.PARENT_TAG: parent.info.run_id, tags.TAG_SWEEP: job.sweep_id or "",
                             tags.TAG_SWEEP_NAME: parent.data.tags.get(tags.TAG_SWEEP_NAME, parent.info.run_name)})
            differs = parent.data.tags.get(tags.TAG_SWEEP_DIFFERS)  # an earlier sweep's runs have the same names
            name = f"{name}{labels.SEPARATOR}{differs}"[:MAX_NAME] if differs else name
        run = self.client.create_run(self.experiment_id, run_name=name, tags=run_tags)
        recorder = RunRecorder(self.client, run.info.run_id, job.output_dir, grid, address=store.run_address(
            self.client.tracking_uri, self.experiment_id, run.info.run_id))
        try:
            store.keep_alive(self.client, recorder.run_id)
            overrides = json.loads(job.tags.get(tags.TAG_OVERRIDES, "[]"))
            store.log_params(self.client, recorder.run_id, {**store.job_params(job.config, overrides),
                                                            **labels.sweep_params(swept, job.config, job.tags)})
            if inputs is not None:
                recorder.log_inputs(inputs)
        except BaseException as exc:
            recorder.fail(f"{type(exc).__name__}: {exc}")
            raise
        return recorder

    def refused(self, job: JobInfo, tracking: TrackingSpec, error: Exception) -> None:
        """A job whose values or files were refused: a FAILED run saying why."""
        self.start(job, tracking, {tags.TAG_FAILURE: str(error)[:5000]}).end_with(lambda: None, "FAILED")

    def reuse(self, job: JobInfo, tracking: TrackingSpec, config_hash: str) -> ReusedRun | None:
        """Resume: the run of a sweep job whose fingerprint already FINISHED (then the parent notes it), else
        None."""
        self.open(job)
        if job.sweep_id is None or not tracking.resume:
            return None
        existing = store.find_finished(self.client, self.experiment_id, config_hash)
        if not existing:
            return None
        say(f"nst: skipped, identical config already FINISHED as run {existing}", log)
        parent = store.sweep_parent(self.client, self.experiment_id, job.sweep_id)
        if parent is not None and tags.TAG_JOB in job.tags:
            self.client.set_tag(parent.info.run_id, tags.TAG_REUSED + job.tags[tags.TAG_JOB], existing)
        return ReusedRun(existing, dict(self.client.get_run(existing).data.metrics))

    def begin(self, job: JobInfo, tracking: TrackingSpec, inputs: Inputs) -> RunRecorder | ReusedRun:
        """The job's recorder, or the run resume found already FINISHED with its config."""
        config_hash = store.fingerprint(inputs.spec.config, inputs.input_files())
        return self.reuse(job, tracking, config_hash) or self.start(job, tracking, {tags.TAG_HASH: config_hash},
                                                                   inputs)


@dataclass(frozen=True)
class ReusedRun:
    """A sweep job resume skipped: the FINISHED run of the same config, and that run's latest metrics."""

    run_id: str
    metrics: dict[str, float]


class Writer:
    """Store writes made in order by one background thread while the optimisation goes on.

    MLflow waits inside each write for a locked store, so a write made in the optimisation's own
    thread would freeze it. The first write the store refuses is reported once; it and every write
    after it are kept, in order, for ``close``'s caller to try again.
    """

    def __init__(self) -> None:
        self.queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.refused: list[Callable[[], None]] = []
        self.bug: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="nst-recorder", daemon=True)
        self.thread.start()

    def submit(self, action: Callable[[], None]) -> None:
        self.queue.put(action)

    def _loop(self) -> None:
        while (action := self.queue.get()) is not None:
            if self.refused or self.bug is not None:
                self.refused.append(action)
                continue
            try:
                action()
            except TrackingError as exc:
                print(f"nst: warning: {exc}; the optimisation goes on, and its records are written when it ends",
                      file=sys.stderr)
                self.refused.append(action)
            except BaseException as exc:  # noqa: BLE001 - a bug: raised in the run's own thread by close
                self.bug = exc

    def close(self) -> list[Callable[[], None]]:
        """Wait for the queued writes; those the store refused, in order (a bug in one is raised here)."""
        self.queue.put(None)
        self.thread.join()
        if self.bug is not None:
            raise self.bug
        return self.refused


class NullRecorder:
    """A run that is not recorded: no callbacks for the engine, nothing to end."""

    callbacks: list = []
    on_ready = None
    ended = False
    address = None

    def finish(self, outcome: RunOutcome, inputs: Inputs) -> None:
        pass

    def fail(self, reason: str, status: str = "FAILED", final: torch.Tensor | None = None,
             partial: bool = False) -> None:
        pass


class NoRecording:
    """``tracking=none``: every job runs, nothing is recorded beyond its folder."""

    def refused(self, job: JobInfo, tracking: TrackingSpec, error: Exception) -> None:
        pass

    def begin(self, job: JobInfo, tracking: TrackingSpec, inputs: Inputs) -> NullRecorder:
        return NullRecorder()
