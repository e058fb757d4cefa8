"""MLflow tracking of runs, so every run of every sweep can be compared in the MLflow UI.

Default store: an SQLite database and an artifact folder under the output root,
both absolute (MLflow >= 3.13 refuses a bare ``./mlruns``, and with SQLite the
artifacts would otherwise land relative to whatever the working directory is).
``tracking.uri`` points at a tracking server instead.

All calls go through ``MlflowClient`` with explicit run ids rather than the
fluent API's process-global "active run", because a multirun executes several
runs in one process and a joblib sweep in several.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from nst.errors import NSTError
from nst.images import tensor_to_pil

log = logging.getLogger(__name__)

# Tag names shared by runs, sweeps and reports.
TAG_ROLE = "nst.role"  # "run" | "sweep"
TAG_SWEEP = "nst.sweep_id"
TAG_JOB = "nst.job_num"
TAG_HASH = "nst.config_hash"
TAG_OVERRIDES = "nst.overrides"
TAG_FAILURE = "nst.failure"
TAG_REUSED = "nst.reused."  # + job number, on a sweep's parent: a FINISHED run reused by resume
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
# Keys that do not change what a run computes: left out of its fingerprint.
NON_SEMANTIC_KEYS = ("hydra", "paths", "tracking", "progress")


class TrackingError(NSTError):
    """The tracking store cannot be reached or used."""


def store_location(cfg: DictConfig) -> tuple[str, str | None]:
    """The tracking URI and the artifact location for new experiments."""
    uri = OmegaConf.select(cfg, "tracking.uri")
    artifacts = OmegaConf.select(cfg, "tracking.artifact_location")
    if uri:
        return str(uri), (str(artifacts) if artifacts else None)
    root = Path(OmegaConf.select(cfg, "paths.output_dir") or "outputs").expanduser().resolve()
    artifact_root = Path(artifacts).expanduser().resolve() if artifacts else root / "mlartifacts"
    return f"sqlite:///{root / 'mlflow.db'}", artifact_root.as_uri()


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def connect(cfg: DictConfig):
    """Open the store and return ``(client, experiment_id)``; create both on first use.

    Fails fast with the URI in the message when the store cannot be reached.
    """
    uri, artifact_location = store_location(cfg)
    name = str(OmegaConf.select(cfg, "tracking.experiment") or "nst")
    if uri.startswith(("http://", "https://")):
        check_server(uri)
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        _enable_wal(db)
    client = _client(uri)
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return client, client.create_experiment(name, artifact_location=artifact_location)
            except Exception:  # noqa: BLE001 - another process created it first
                experiment = client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        return client, experiment.experiment_id
    except NSTError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure here means the store is unusable
        raise TrackingError(f"cannot use the MLflow tracking store {uri}: {exc}") from exc


def check_server(uri: str, timeout: float = 5.0) -> None:
    """A tracking server must answer /health within seconds (MLflow's own client retries for minutes)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
            problem = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        problem = str(getattr(exc, "reason", exc))
    raise TrackingError(f"the MLflow tracking server {uri} is not reachable ({problem}); start it "
                        f"(`make server` for a local one) or choose another tracking.uri")


def _enable_wal(db: Path) -> None:
    """Write-ahead logging lets parallel jobs read while one writes (fewer 'database is locked')."""
    with sqlite3.connect(db, timeout=60) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def flatten(container: object, prefix: str = "") -> dict[str, str]:
    """``{"loss": {"style_weight": 100}}`` -> ``{"loss.style_weight": "100"}``; lists stay JSON."""
    if isinstance(container, dict):
        out: dict[str, str] = {}
        for key, value in container.items():
            out.update(flatten(value, f"{prefix}{key}." if isinstance(value, dict) else f"{prefix}{key}"))
        return out
    return {prefix.rstrip("."): json.dumps(container) if isinstance(container, list) else str(container)}


def job_params(cfg: DictConfig) -> dict[str, str]:
    """The resolved config without Hydra's own node, flattened."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    return flatten(container)


def fingerprint(cfg: DictConfig, files: Iterable[Path] = ()) -> str:
    """sha256 of what determines a run's result: the semantic config and the input files' bytes."""
    from nst.downloads import sha256_file

    container = OmegaConf.to_container(cfg, resolve=True)
    for key in NON_SEMANTIC_KEYS:
        container.pop(key, None)
    payload = {"config": container, "files": [sha256_file(p) for p in files]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start:start + 100], synchronous=True)


def find_finished(client, experiment_id: str, config_hash: str) -> str | None:
    """The id of a FINISHED run with this fingerprint, if any (resume)."""
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.`{TAG_HASH}` = '{config_hash}' and "
                                            "attributes.status = 'FINISHED'",
                              max_results=1)
    return runs[0].info.run_id if runs else None


class RunTracker:
    """Logs one run: params, per-evaluation metrics, image steps, final artifacts, status.

    Metrics are buffered and written in batches (at each image step and at the
    end), so a run costs a few dozen store transactions, not one per evaluation.
    """

    def __init__(self, client, run_id: str, log_every: int = 10, video: bool = True):
        self.client, self.run_id = client, run_id
        self.log_every = max(1, int(log_every))
        self.video = video
        self.pending: list = []
        self.frames: list[Image.Image] = []
        self.last_image: torch.Tensor | None = None

    def on_evaluation(self, record: dict, image: torch.Tensor) -> None:
        from mlflow.entities import Metric

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

    def finish_frames(self, final: torch.Tensor | None, step: int | None, output_dir: Path) -> None:
        """The last image as an image step and the optimisation as a video."""
        if final is not None and step is not None and (not self.frames or step % self.log_every != 0):
            self.log_step_image(final, step)
        if self.video and len(self.frames) >= 2:
            path = write_video(self.frames, output_dir / "optimisation")
            self.log_file(path)

    def end(self, status: str) -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status)


def write_video(frames: list[Image.Image], stem: Path, fps: int = 8) -> Path:
    """MP4 (H.264 through PyAV) of the frames; a GIF when no encoder is available."""
    try:
        import av

        path = stem.with_suffix(".mp4")
        width, height = frames[-1].size
        width, height = width + width % 2, height + height % 2  # yuv420p needs even sizes
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in frames:
                canvas = Image.new("RGB", (width, height))
                canvas.paste(frame.resize(frames[-1].size), (0, 0))
                for packet in stream.encode(av.VideoFrame.from_image(canvas)):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return path
    except Exception as exc:  # noqa: BLE001 - no PyAV or no H.264 encoder: fall back to GIF
        log.info("MP4 encoding unavailable (%s); writing a GIF", exc)
        path = stem.with_suffix(".gif")
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
        return path


def hydra_tags() -> dict[str, str]:
    """Hydra's choices and overrides of the current job, when running under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
    except (ImportError, ValueError):
        return {}
    tags = {f"hydra.choice.{k}": str(v) for k, v in hydra.runtime.choices.items()
            if not k.startswith("hydra/") and v is not None}
    tags[TAG_OVERRIDES] = json.dumps(list(hydra.overrides.task))
    if hydra.job.get("num") is not None and str(hydra.mode) == "RunMode.MULTIRUN":
        tags[TAG_JOB] = str(hydra.job.num)
    return tags


def environment_tags() -> dict[str, str]:
    return {"nst.git_commit": git_commit(), "nst.torch_version": torch.__version__,
            "nst.host": os.uname().nodename, "nst.pid": str(os.getpid())}


@dataclass
class JobContext:
    """What a run needs from Hydra, captured while Hydra's config for that job is current.

    The batched launcher captures every job's context first and runs the jobs
    later, when Hydra's global state describes another job.
    """

    cfg: DictConfig
    output_dir: Path
    tags: dict[str, str] = field(default_factory=dict)
    sweep_id: str | None = None

    @classmethod
    def current(cls, cfg: DictConfig, output_dir: Path) -> JobContext:
        from nst import sweeps

        return cls(cfg, Path(output_dir), hydra_tags(), sweeps.current_sweep_id())


def tracked_run(cfg: DictConfig, output_dir: Path):
    """One run recorded in MLflow, as a child of its sweep's parent run when in a multirun.

    The store is opened first (an unreachable server fails before any work); a
    sweep job whose identical config already FINISHED in the experiment is skipped
    (returns None). Whatever happens, the MLflow run ends FINISHED, FAILED or
    KILLED, never RUNNING.
    """
    (outcome,) = tracked_batch([JobContext.current(cfg, output_dir)])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class _TrackedMember:
    """A job of a tracked batch: its MLflow run, inputs and the hooks that record it."""

    def __init__(self, context: JobContext, inputs, tracker: RunTracker):
        self.context, self.inputs, self.tracker = context, inputs, tracker

    @property
    def output_dir(self) -> Path:
        return self.context.output_dir

    def on_ready(self, record: dict) -> None:
        log_params(self.tracker.client, self.tracker.run_id,
                   flatten(json.loads(json.dumps(record, default=str)), "run."))

    def keep_outputs(self, final: torch.Tensor | None, step: int | None) -> None:
        self.tracker.finish_frames(final, step, self.output_dir)
        for path in sorted(self.output_dir.iterdir()):
            if path.name != ".hydra" and path.suffix not in (".mp4", ".gif"):
                self.tracker.log_file(path)
        self.tracker.log_file(self.output_dir / ".hydra", ".hydra")

    def fail(self, reason: str, status: str = "FAILED", final: torch.Tensor | None = None,
             step: int | None = None, partial: bool = False) -> None:
        self.tracker.client.set_tag(self.tracker.run_id, TAG_FAILURE, reason[:5000])
        if partial and self.tracker.last_image is not None:
            from nst.images import save_png

            save_png(self.tracker.last_image, self.output_dir / "partial.png")
            final = self.tracker.last_image
        if final is not None or partial:
            self.keep_outputs(final, step)
        self.tracker.end(status)

    def finish(self, outcome) -> None:
        from nst.reports import loss_curve, triptych

        result, tracker = outcome.result, self.tracker
        tracker.log_picture(tensor_to_pil(result.image), "result/result.png")
        tracker.log_picture(triptych(self.inputs.content, self.inputs.style, result.image),
                            "result/triptych.png")
        tracker.log_picture(loss_curve(result.history), "result/loss_curve.png")
        self.keep_outputs(result.image, result.evaluations)
        tracker.client.log_metric(tracker.run_id, "evaluations", result.evaluations, step=result.evaluations)
        tracker.end("FINISHED")


def tracked_batch(contexts: list[JobContext]) -> list:
    """Jobs that share images, sizes and backbone, run as one batch, each its own MLflow run.

    Returns, per job, its ``RunOutcome``, None (skipped by resume) or the
    exception that failed it; only errors that stop the whole batch are raised.
    """
    from nst import sweeps
    from nst.errors import NonFiniteLossError
    from nst.run import BatchJob, execute_batch, prepare

    client, experiment_id = connect(contexts[0].cfg)
    outcomes: list = [None] * len(contexts)
    members: list[tuple[int, _TrackedMember]] = []
    for position, context in enumerate(contexts):
        cfg = context.cfg
        parent = sweeps.parent_run_id(client, experiment_id, context.sweep_id)
        tags = {TAG_ROLE: "run", **environment_tags(), **context.tags}
        if parent:
            tags[PARENT_TAG] = parent
            tags[TAG_SWEEP] = context.sweep_id or ""
        overrides = json.loads(tags.get(TAG_OVERRIDES, "[]"))
        run_name = " ".join(o for o in overrides if not o.startswith(("content=", "style="))) or "run"

        def start_run(extra: dict[str, str], cfg=cfg, tags=tags, run_name=run_name) -> RunTracker:
            run = client.create_run(experiment_id, run_name=run_name[:250], tags={**tags, **extra})
            log_params(client, run.info.run_id, job_params(cfg))
            return RunTracker(client, run.info.run_id, cfg.tracking.log_every, bool(cfg.tracking.video))

        try:
            inputs = prepare(cfg)
        except NSTError as exc:
            start_run({TAG_FAILURE: str(exc)[:5000]}).end("FAILED")
            outcomes[position] = exc
            continue
        config_hash = fingerprint(cfg, inputs.input_files())
        if context.sweep_id is not None and OmegaConf.select(cfg, "tracking.resume", default=True):
            existing = find_finished(client, experiment_id, config_hash)
            if existing:
                log.info("skipping: the same config already FINISHED as MLflow run %s", existing)
                print(f"nst: skipped, identical config already FINISHED as run {existing}")
                if parent and TAG_JOB in tags:
                    client.set_tag(parent, TAG_REUSED + tags[TAG_JOB], existing)
                continue
        tracker = start_run({TAG_HASH: config_hash})
        tracker.log_picture(tensor_to_pil(inputs.content), "inputs/content.png")
        tracker.log_picture(tensor_to_pil(inputs.style), "inputs/style.png")
        for number, extra_style in enumerate(inputs.styles[1:], start=2):
            tracker.log_picture(tensor_to_pil(extra_style), f"inputs/style_{number}.png")
        for number, mask in enumerate(inputs.masks or [], start=1):
            if mask is not None:
                tracker.log_picture(tensor_to_pil(mask.expand(-1, 3, -1, -1)), f"inputs/mask_{number}.png")
        members.append((position, _TrackedMember(context, inputs, tracker)))
    if not members:
        return outcomes

    jobs = [BatchJob(m.inputs, m.output_dir, [m.tracker.on_evaluation], m.on_ready) for _, m in members]
    try:
        results = execute_batch(jobs)
    except KeyboardInterrupt:
        for _, member in members:
            member.fail("interrupted", "KILLED", partial=True)
        raise
    except BaseException as exc:
        for _, member in members:
            member.fail(f"{type(exc).__name__}: {exc}")
        raise
    for (position, member), result in zip(members, results, strict=True):
        outcomes[position] = result
        if isinstance(result, NonFiniteLossError):
            member.fail(str(result), final=result.last_finite_image,
                        step=result.evaluation - 1 if result.evaluation else None)
        elif isinstance(result, BaseException):
            member.fail(f"{type(result).__name__}: {result}")
        else:
            member.finish(result)
    return outcomes
