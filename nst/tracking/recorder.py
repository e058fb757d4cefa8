"""Recording runs in MLflow: the callback object the engine reports to, and the run's bookkeeping.

The engine (``nst.run``) reports only through callbacks: ``RunRecorder.on_evaluation``
for every function evaluation and ``RunRecorder.on_ready`` with the run record.
The job driver (``nst.jobs``) opens one ``Recording`` per batch of jobs (the store
connection), asks it whether a job already finished (resume), starts a
``RunRecorder`` per job and hands it the outcome. ``NoRecording`` and
``NullRecorder`` are the same interfaces doing nothing, for ``tracking=none``.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from nst.engine.run import (
    LOSSES_CSV,
    PARTIAL_PNG,
    RECORD_JSON,
    RESULT_PNG,
    Inputs,
    RunOutcome,
    result_png,
)
from nst.engine.spec import TrackingSpec
from nst.errors import TrackingError, UnrecordedRunError
from nst.figures import labels
from nst.figures.grid import triptych
from nst.figures.plots import loss_curve
from nst.images import measures
from nst.images.files import load_image, pil_to_tensor, save_png, tensor_to_pil
from nst.messages import say
from nst.tracking import ownership, store

log = logging.getLogger(__name__)


class JobInfo(Protocol):
    """What the recorder needs of a job (``nst.jobs.Job``): its resolved config, folder and tags."""

    config: Mapping[str, Any]
    output_dir: Path
    tags: dict[str, str]
    sweep_id: str | None


def metrics(record: dict, timestamp_ms: int) -> list:
    """An evaluation's record (a row of losses.csv) as MLflow metrics at its evaluation number."""
    from mlflow.entities import Metric  # MLflow takes seconds to import: only when recording

    step = int(record["evaluation"])
    return [Metric(key, float(value), timestamp_ms, step) for key, value in record.items()
            if key not in ("evaluation", "epoch") and isinstance(value, int | float) and math.isfinite(value)]


PROGRESS = "progress"  # the key of the progress images, the MLflow UI's image chart and step slider
TAG_IMAGE_STEPS = "nst.image_steps"  # {"every": N, "terminal": T}: the run's step grid


@dataclass(frozen=True)
class StepGrid:
    """Where a run's progress images sit on the MLflow UI's step slider: 0, ``every``, 2 x ``every``, ...,
    ``terminal``, a grid every member of a sweep shares.

    The old images sat at evaluation 1, every multiple of ``log_every`` and the run's last evaluation, so
    the slider showed a run only where its own evaluations fell: in a 6-job ratio sweep, 5 of 6 runs at
    step 90 (one had stopped at 89), none at step 0. Now the starting image is step 0, an intermediate
    image is logged only on the grid and below ``terminal`` (the schedule's most evaluations rounded up to
    the grid), and the result fills every step from its run's last image to ``terminal``: a run that
    converged early keeps showing its result, and every run has its result at the same last step.
    """

    every: int
    terminal: int

    @classmethod
    def planned(cls, every: int, evaluations: int) -> StepGrid:
        return cls(every, every * math.ceil(evaluations / every))

    def steps(self, evaluation: int) -> list[int]:
        """The steps that show ``evaluation``'s image: 0 for the starting image, a multiple of ``every``."""
        found = [0] if evaluation == 1 else []
        if evaluation % self.every == 0 and evaluation < self.terminal:
            found.append(evaluation)
        return found

    def after(self, step: int | None) -> list[int]:
        """The grid's steps after ``step`` (None: all of them), ``terminal`` included: where the result goes."""
        return list(range(0 if step is None else step + self.every, self.terminal + 1, self.every))

    def tag(self) -> str:
        return json.dumps({"every": self.every, "terminal": self.terminal})

    @classmethod
    def of(cls, tags: Mapping[str, str]) -> StepGrid | None:
        """A run's grid from its tag; None for a run recorded before the grid existed."""
        try:
            found = json.loads(tags[TAG_IMAGE_STEPS])
            return cls(int(found["every"]), int(found["terminal"]))
        except (KeyError, TypeError, ValueError):
            return None


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

    def __init__(self, client, run_id: str, output_dir: Path, grid: StepGrid):
        self.client, self.run_id, self.output_dir = client, run_id, Path(output_dir)
        self.grid = grid
        self.pending: list = []
        self.writer: Writer | None = None
        self.last_image: torch.Tensor | None = None
        self.last_step: int | None = None  # the last step of the slider that has an image
        self.ended = False
        self.address: str | None = None  # the run's page in the MLflow UI

    # --- the engine's callbacks ---

    @property
    def callbacks(self) -> list:
        return [self.on_evaluation]

    def on_evaluation(self, record: dict, image: torch.Tensor) -> None:
        self.pending += metrics(record, int(time.time() * 1000))
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
        ``nst.outputs``, included)."""
        if last is not None:
            self.log_step_picture(last, steps)
        for path in sorted(self.output_dir.iterdir()):
            if path.name != ".hydra":
                self.log_file(path, path.name if path.is_dir() else None)
        self.log_file(self.output_dir / ".hydra", ".hydra")

    def log_result(self, image: torch.Tensor, history: list[dict], evaluations: int,
                   overview: Image.Image | None = None, last: Image.Image | None = None,
                   measured: Mapping[str, float] | None = None) -> None:
        """The result, its loss curve (and the content-style-result overview), the folder, the evaluation
        count and the automatic measures (``nst.measures``), those two at the last evaluation."""
        from mlflow.entities import Metric

        self.log_picture(last or tensor_to_pil(image), "result/result.png")  # last: the same picture
        if overview is not None:
            self.log_picture(overview, "result/triptych.png")
        self.log_picture(loss_curve(history), "result/loss_curve.png")
        self.keep_outputs(last, self.grid.after(self.last_step))
        now = int(time.time() * 1000)
        values = {"evaluations": evaluations, **(measured or {})}
        self.log_metrics([Metric(key, float(value), now, evaluations) for key, value in values.items()
                          if math.isfinite(value)])  # a NaN (SSIM of a result under 11 px) is left out

    # --- the end of the run ---

    def finish(self, outcome: RunOutcome, inputs: Inputs) -> None:
        """Record the result and end FINISHED; raises ``UnrecordedRunError`` (the files are kept) if the
        store still refuses."""
        result = outcome.result
        overview = triptych(inputs.content, inputs.style, result.image)
        last = tensor_to_pil(result.image)
        measured = measures.measure(last, tensor_to_pil(inputs.content), tensor_to_pil(inputs.style))  # 1st style
        try:
            self.end_with(lambda: self.log_result(result.image, result.history, result.evaluations, overview, last,
                                                  measured), "FINISHED")
        except TrackingError as exc:
            raise UnrecordedRunError(
                f"the run ended and its files are in {self.output_dir} (result.png, losses.csv, run.json), but "
                f"the MLflow store did not record it: {exc}. Once the store works, record it with: "
                f"nst-report --relog {self.output_dir}") from exc

    def fail(self, reason: str, status: str = "FAILED", final: torch.Tensor | None = None,
             partial: bool = False) -> None:
        """End FAILED (or KILLED) with the reason; keep the last finite or partial image (at the slider's
        next step) and the files.

        Called while something else went wrong: a store that refuses is reported, not raised (the run is
        then ended FAILED by the next command that opens the store, once this process is gone).
        """
        if partial and self.last_image is not None:
            save_png(self.last_image, self.output_dir / PARTIAL_PNG)
            final = self.last_image
        keep = final is not None or partial
        last = tensor_to_pil(final) if final is not None else None

        def record() -> None:
            self.client.set_tag(self.run_id, store.TAG_FAILURE, reason[:5000])
            if keep:
                self.keep_outputs(last, self.grid.after(self.last_step)[:1])

        try:
            self.end_with(record, status)
        except TrackingError as exc:
            print(f"nst: warning: the MLflow store did not record the end of run {self.run_id}: {exc}",
                  file=sys.stderr)

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

    The store is opened first, so an unreachable server fails before any work.
    """

    def __init__(self, tracking: TrackingSpec):
        self.client, self.experiment_id = store.connect(tracking)

    def start(self, job: JobInfo, tracking: TrackingSpec, extra: dict[str, str],
              inputs: Inputs | None = None) -> RunRecorder:
        """Create the job's MLflow run (a child of its sweep's parent run, if any) with its params and inputs.

        A sweep's child is named by its swept values (``β=1e4 · α/β=1e-4``) and has them as ``sweep.*``
        params. From the moment the run exists, a failure ends it FAILED with the reason before it is raised.
        """
        member = inputs.spec.member if inputs else None
        grid = StepGrid.planned(member.frame_every if member else 1, member.planned_evaluations if member else 1)
        tags = {store.TAG_ROLE: "run", **store.environment_tags(), **job.tags,
                store.TAG_OUTPUT_DIR: str(Path(job.output_dir).resolve()), TAG_IMAGE_STEPS: grid.tag(), **extra}
        parent = store.sweep_parent(self.client, self.experiment_id, job.sweep_id)
        swept = store.swept(parent) if parent is not None else {}
        if parent is not None:
            tags.update({store.PARENT_TAG: parent.info.run_id, store.TAG_SWEEP: job.sweep_id or ""})
        run_name = labels.label(list(swept), job.config, job.tags) if swept else _single_name(tags, job.config)
        run = self.client.create_run(self.experiment_id, run_name=run_name[:250], tags=tags)
        recorder = RunRecorder(self.client, run.info.run_id, job.output_dir, grid)
        recorder.address = store.run_address(self.client.tracking_uri, self.experiment_id, recorder.run_id)
        try:
            store.keep_alive(self.client, recorder.run_id)
            overrides = json.loads(job.tags.get(store.TAG_OVERRIDES, "[]"))
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
        self.start(job, tracking, {store.TAG_FAILURE: str(error)[:5000]}).end_with(lambda: None, "FAILED")

    def reuse(self, job: JobInfo, tracking: TrackingSpec, config_hash: str) -> bool:
        """Resume: whether a sweep job with this fingerprint already FINISHED (then the parent notes it)."""
        if job.sweep_id is None or not tracking.resume:
            return False
        existing = store.find_finished(self.client, self.experiment_id, config_hash)
        if not existing:
            return False
        say(f"nst: skipped, identical config already FINISHED as run {existing}", log)
        parent = store.sweep_parent(self.client, self.experiment_id, job.sweep_id)
        if parent is not None and store.TAG_JOB in job.tags:
            self.client.set_tag(parent.info.run_id, store.TAG_REUSED + job.tags[store.TAG_JOB], existing)
        return True

    def begin(self, job: JobInfo, tracking: TrackingSpec, inputs: Inputs) -> RunRecorder | None:
        """The job's recorder, or None when resume found it already FINISHED."""
        config_hash = store.fingerprint(inputs.spec.config, inputs.input_files())
        if self.reuse(job, tracking, config_hash):
            return None
        return self.start(job, tracking, {store.TAG_HASH: config_hash}, inputs)


class Writer:
    """Store writes made in order by one background thread while the optimisation goes on.

    Measured before: a ``sqlite3`` shell holding the store's lock for 30 s froze the
    optimisation for those 30 s (MLflow waits inside each write), and its ``elapsed_s``
    came out four times too long. The first write the store refuses is reported once;
    it and every write after it are kept, in order, for ``close``'s caller to try again.
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


def align_steps(client, runs: list) -> None:
    """Every FINISHED member of a sweep shows its result up to the sweep's last step.

    Members whose schedules differ (an epochs sweep) have different terminal steps; the
    shorter ones get their result repeated at the steps up to the longest one's.
    """
    grids = {run.info.run_id: StepGrid.of(run.data.tags) for run in runs}
    terminal = max((grid.terminal for grid in grids.values() if grid is not None), default=0)
    for run in runs:
        grid = grids[run.info.run_id]
        if run.info.status != "FINISHED" or grid is None or grid.terminal >= terminal:
            continue
        with tempfile.TemporaryDirectory() as scratch:
            picture = load_image(client.download_artifacts(run.info.run_id, "result/result.png", scratch))
        steps = StepGrid(grid.every, terminal).after(grid.terminal)
        for step in steps:
            client.log_image(run.info.run_id, picture, key=PROGRESS, step=step, synchronous=True)
        client.set_tag(run.info.run_id, TAG_IMAGE_STEPS, StepGrid(grid.every, terminal).tag())


def relog_folder(client, experiment_id: str, folder: Path, frame_every: int) -> tuple[str, bool]:
    """Record in the store a run whose folder holds its files (``nst-report --relog``); the run's id,
    and whether anything was recorded now.

    The run nst created for the folder is completed (the metrics the store lacks, the result,
    the folder, its status); a folder with no run gets a new one. A run that ended by itself is
    left as it is; one ended FAILED only because its process was gone is completed.
    """
    folder = folder.resolve()
    if not (folder / RECORD_JSON).is_file():
        raise TrackingError(f"{folder} holds no {RECORD_JSON}: not the folder of a run that ended "
                            f"(nothing to record)")
    record = json.loads((folder / RECORD_JSON).read_text())
    import pandas as pd  # 0.7 s to import: only when a folder is recorded again

    history = pd.read_csv(folder / LOSSES_CSV).to_dict("records") if (folder / LOSSES_CSV).is_file() else []
    run = _folder_run(client, experiment_id, folder)
    if run is not None and run.info.status != "RUNNING" and not store.ended_as_dead(run):
        return run.info.run_id, False
    if run is None:
        run_id = client.create_run(experiment_id, run_name=folder.name, tags={
            store.TAG_ROLE: "run", store.TAG_OUTPUT_DIR: str(folder), **store.environment_tags()}).info.run_id
    else:
        run_id = run.info.run_id
        if store.TAG_FAILURE in run.data.tags:
            client.delete_tag(run_id, store.TAG_FAILURE)
    grid = StepGrid.of(run.data.tags) if run is not None else None
    grid = grid or StepGrid.planned(frame_every, max(1, len(history)))
    recorder = RunRecorder(client, run_id, folder, grid)
    recorder.last_step = max(store.step_images(client, run_id, PROGRESS), default=None)
    logged = {metric.step for metric in client.get_metric_history(run_id, "total")}
    now = int(time.time() * 1000)
    recorder.pending = [m for row in history if int(row["evaluation"]) not in logged for m in metrics(row, now)]
    client.set_tag(run_id, "nst.relogged", ownership.now_iso())
    if record.get("status") == "FINISHED" and result_png(folder, record).is_file():
        image = pil_to_tensor(load_image(result_png(folder, record), "result"))
        logged = _logged_inputs(client, run_id)
        overview = triptych(*logged, image) if logged else None
        measured = measures.measure(tensor_to_pil(image), *map(tensor_to_pil, logged)) if logged else None
        recorder.end_with(lambda: recorder.log_result(image, history, int(record["evaluations"]), overview,
                                                      measured=measured), "FINISHED")
    else:
        reason = record.get("failure") or f"the run did not finish (no {RESULT_PNG})"

        def failed() -> None:
            client.set_tag(run_id, store.TAG_FAILURE, reason[:5000])
            recorder.keep_outputs(None, [])

        recorder.end_with(failed, "FAILED")
    return run_id, True


def _logged_inputs(client, run_id: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The content and (first) style images the run logged when it started, if it did."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            content, style = (pil_to_tensor(load_image(client.download_artifacts(run_id, f"inputs/{name}.png", scratch)))
                              for name in ("content", "style"))
        except Exception:  # noqa: BLE001 - a run created by the relog itself has no inputs
            return None
    return content, style


def _folder_run(client, experiment_id: str, folder: Path):
    """The newest run nst created for ``folder``, or None."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{store.TAG_OUTPUT_DIR}` = '{folder}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0] if found else None


def _single_name(tags: dict[str, str], config: Mapping[str, Any]) -> str:
    """A single run's name: its images, then its other overrides (``tubingen + starry_night · epochs=3``)."""
    def image(value) -> str:
        names = value if isinstance(value, list) else [value]
        return ",".join(Path(str(name)).stem for name in names)

    overrides = json.loads(tags.get(store.TAG_OVERRIDES, "[]"))
    rest = " ".join(o for o in overrides if not o.startswith(("content=", "style=")))
    return labels.SEPARATOR.join(part for part in (f"{image(config.get('content'))} + {image(config.get('style'))}",
                                                   rest) if part)


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
