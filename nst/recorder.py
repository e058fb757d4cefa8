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
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from nst import store
from nst.images import save_png, tensor_to_pil
from nst.pictures import loss_curve, triptych, write_video
from nst.run import PARTIAL_PNG, Inputs, RunOutcome
from nst.spec import TrackingSpec

log = logging.getLogger(__name__)


class JobInfo(Protocol):
    """What the recorder needs of a job (``nst.jobs.Job``): its resolved config, folder and tags."""

    config: Mapping[str, Any]
    output_dir: Path
    tags: dict[str, str]
    sweep_id: str | None


class RunRecorder:
    """Logs one run: params, per-evaluation metrics, image steps, final artifacts, status.

    Metrics are buffered and written in batches (at each image step and at the
    end), so a run costs a few dozen store transactions, not one per evaluation.
    """

    def __init__(self, client, run_id: str, output_dir: Path, log_every: int = 10, video: bool = True):
        self.client, self.run_id, self.output_dir = client, run_id, Path(output_dir)
        self.log_every = max(1, int(log_every))
        self.video = video
        self.pending: list = []
        self.frames: list[Image.Image] = []
        self.last_image: torch.Tensor | None = None

    # --- the engine's callbacks ---

    @property
    def callbacks(self) -> list:
        return [self.on_evaluation]

    def on_evaluation(self, record: dict, image: torch.Tensor) -> None:
        from mlflow.entities import Metric  # MLflow takes seconds to import: only when recording

        step = int(record["evaluation"])
        now = int(time.time() * 1000)
        for key, value in record.items():
            if key in ("evaluation", "epoch") or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.pending.append(Metric(key, float(value), now, step))
        self.last_image = image
        if step == 1 or step % self.log_every == 0:
            self.log_step_image(image, step)
            self.flush()

    def on_ready(self, record: dict) -> None:
        """The run record (backbone actually used, weights, ...) as ``run.*`` params."""
        store.log_params(self.client, self.run_id, store.flatten(json.loads(json.dumps(record, default=str)), "run."))

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

    def log_step_image(self, image: torch.Tensor, step: int) -> None:
        picture = tensor_to_pil(image)
        self.frames.append(picture)
        self.client.log_image(self.run_id, picture, key="progress", step=step, synchronous=True)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), 1000):
            self.client.log_batch(self.run_id, metrics=pending[start:start + 1000], synchronous=True)

    def log_file(self, path: Path, folder: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), folder)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), folder)

    def log_picture(self, picture: Image.Image, name: str) -> None:
        self.client.log_image(self.run_id, picture, artifact_file=name)

    def keep_outputs(self, final: torch.Tensor | None, step: int | None) -> None:
        """The last image as an image step, the optimisation as a video, and the run's folder."""
        if final is not None and step is not None and (not self.frames or step % self.log_every != 0):
            self.log_step_image(final, step)
        if self.video and len(self.frames) >= 2:
            self.log_file(write_video(self.frames, self.output_dir / "optimisation"))
        for path in sorted(self.output_dir.iterdir()):
            if path.name != ".hydra" and path.suffix not in (".mp4", ".gif"):
                self.log_file(path)
        self.log_file(self.output_dir / ".hydra", ".hydra")

    # --- the end of the run ---

    def finish(self, outcome: RunOutcome, inputs: Inputs) -> None:
        result = outcome.result
        self.log_picture(tensor_to_pil(result.image), "result/result.png")
        self.log_picture(triptych(inputs.content, inputs.style, result.image), "result/triptych.png")
        self.log_picture(loss_curve(result.history), "result/loss_curve.png")
        self.keep_outputs(result.image, result.evaluations)
        self.client.log_metric(self.run_id, "evaluations", result.evaluations, step=result.evaluations)
        self.end("FINISHED")

    def fail(self, reason: str, status: str = "FAILED", final: torch.Tensor | None = None,
             step: int | None = None, partial: bool = False) -> None:
        """End FAILED (or KILLED) with the reason; keep the last finite or partial image and the files."""
        self.client.set_tag(self.run_id, store.TAG_FAILURE, reason[:5000])
        if partial and self.last_image is not None:
            save_png(self.last_image, self.output_dir / PARTIAL_PNG)
            final = self.last_image
        if final is not None or partial:
            self.keep_outputs(final, step)
        self.end(status)

    def end(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


class Recording:
    """The MLflow side of a batch of jobs: one store connection, one run per job.

    The store is opened first, so an unreachable server fails before any work.
    """

    def __init__(self, tracking: TrackingSpec):
        self.client, self.experiment_id = store.connect(tracking)

    def _tags(self, tags: dict[str, str], sweep_id: str | None) -> dict[str, str]:
        tags = {store.TAG_ROLE: "run", **store.environment_tags(), **tags}
        parent = store.parent_run_id(self.client, self.experiment_id, sweep_id)
        if parent:
            tags[store.PARENT_TAG] = parent
            tags[store.TAG_SWEEP] = sweep_id or ""
        return tags

    def start(self, job: JobInfo, tracking: TrackingSpec, extra: dict[str, str]) -> RunRecorder:
        """Create the job's MLflow run (a child of its sweep's parent run, if any) with its params."""
        tags = self._tags(job.tags, job.sweep_id)
        overrides = json.loads(tags.get(store.TAG_OVERRIDES, "[]"))
        run_name = " ".join(o for o in overrides if not o.startswith(("content=", "style="))) or "run"
        run = self.client.create_run(self.experiment_id, run_name=run_name[:250], tags={**tags, **extra})
        store.log_params(self.client, run.info.run_id, store.job_params(job.config))
        return RunRecorder(self.client, run.info.run_id, job.output_dir, tracking.log_every, tracking.video)

    def refused(self, job: JobInfo, tracking: TrackingSpec, error: Exception) -> None:
        """A job whose values or files were refused: a FAILED run saying why."""
        self.start(job, tracking, {store.TAG_FAILURE: str(error)[:5000]}).end("FAILED")

    def reuse(self, job: JobInfo, tracking: TrackingSpec, config_hash: str) -> bool:
        """Resume: whether a sweep job with this fingerprint already FINISHED (then the parent notes it)."""
        if job.sweep_id is None or not tracking.resume:
            return False
        existing = store.find_finished(self.client, self.experiment_id, config_hash)
        if not existing:
            return False
        log.info("skipping: the same config already FINISHED as MLflow run %s", existing)
        print(f"nst: skipped, identical config already FINISHED as run {existing}")
        parent = store.parent_run_id(self.client, self.experiment_id, job.sweep_id)
        if parent and store.TAG_JOB in job.tags:
            self.client.set_tag(parent, store.TAG_REUSED + job.tags[store.TAG_JOB], existing)
        return True

    def begin(self, job: JobInfo, tracking: TrackingSpec, inputs: Inputs) -> RunRecorder | None:
        """The job's recorder, or None when resume found it already FINISHED."""
        config_hash = store.fingerprint(inputs.spec.config, inputs.input_files())
        if self.reuse(job, tracking, config_hash):
            return None
        recorder = self.start(job, tracking, {store.TAG_HASH: config_hash})
        recorder.log_inputs(inputs)
        return recorder


class NullRecorder:
    """A run that is not recorded: no callbacks for the engine, nothing to end."""

    callbacks: list = []
    on_ready = None

    def finish(self, outcome: RunOutcome, inputs: Inputs) -> None:
        pass

    def fail(self, reason: str, status: str = "FAILED", final: torch.Tensor | None = None,
             step: int | None = None, partial: bool = False) -> None:
        pass


class NoRecording:
    """``tracking=none``: every job runs, nothing is recorded beyond its folder."""

    def refused(self, job: JobInfo, tracking: TrackingSpec, error: Exception) -> None:
        pass

    def begin(self, job: JobInfo, tracking: TrackingSpec, inputs: Inputs) -> NullRecorder:
        return NullRecorder()
