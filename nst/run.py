"""One style-transfer run, from a composed config to files on disk.

The order matters: every cheap check (values, paths, layer names, image sizes)
comes before the expensive steps (loading weights, optimising), so a typo costs
a second, not a model download.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from nst.assets import resolve_image
from nst.backbones import (
    SPECS,
    Backbone,
    activation_bytes,
    layer_table,
    load_backbone,
    resolve_name,
    validate_layers,
)
from nst.calibration import calibrate
from nst.color import network_images, recombine
from nst.config import (
    layer_weights,
    optimizer_settings,
    scale_schedule,
    style_blend,
    style_mask_specs,
    style_specs,
    validate,
)
from nst.devices import available_bytes, native_bf16, resolve_device, tune
from nst.errors import ConfigError, ImageError, NonFiniteLossError, NSTError
from nst.images import header_size, load_mask, load_tensor, save_png, scaled_size, style_long_side
from nst.losses import LossWeights, StyleTransferLoss
from nst.optimization import EvaluationCallback, OptimizationResult, initial_image, optimize_batch

log = logging.getLogger(__name__)

RESULT_PNG = "result.png"
LAST_FINITE_PNG = "last_finite.png"
LOSSES_CSV = "losses.csv"
CONFIG_YAML = "config.yaml"
RECORD_JSON = "run.json"


@dataclass
class Inputs:
    """Everything a run needs that is cheap to prepare: checked values and loaded images."""

    cfg: DictConfig
    device: torch.device
    backbone_name: str
    backbone_notes: list[str]
    content_path: Path
    content: torch.Tensor
    content_layers: dict[str, float]
    style_layers: dict[str, float]
    style_paths: list[Path]  # every style image, with its blend weight and optional mask
    styles: list[torch.Tensor]
    style_blend: list[float]
    mask_paths: list[Path | None] | None = None
    masks: list[torch.Tensor | None] | None = None

    @property
    def style_path(self) -> Path:
        return self.style_paths[0]

    @property
    def style(self) -> torch.Tensor:
        return self.styles[0]

    def input_files(self) -> list[Path]:
        """Every file the result depends on: content, styles, masks (what resume fingerprints)."""
        return [self.content_path, *self.style_paths, *(p for p in self.mask_paths or [] if p is not None)]


@dataclass
class RunOutcome:
    output_dir: Path
    result: OptimizationResult
    backbone: Backbone
    record: dict = field(default_factory=dict)


def prepare(cfg: DictConfig) -> Inputs:
    """Validate ``cfg`` and load the images; raises ``NSTError`` before any heavy work."""
    validate(cfg)
    device = resolve_device(cfg.device)
    tune(device)
    if cfg.model.get("precision") == "bf16" and native_bf16(device) is False:
        log.warning("model.precision=bf16: this %s has no bfloat16 hardware (no avx512_bf16 or AMX on a CPU), so "
                    "bf16 is emulated and slower than fp32; use model.precision=fp32 here", device.type)
    name, notes = resolve_name(cfg.model.name)
    arch = SPECS[name].arch
    validate_layers(arch, list(cfg.loss.content_layers), "loss.content_layers")
    validate_layers(arch, list(cfg.loss.style_layers), "loss.style_layers")
    table = layer_table(arch)
    channels = {n: layer.channels for n, layer in table.items()}
    content_layers = layer_weights(cfg, "loss.content_layers", "loss.content_layer_weights")
    style_layers = layer_weights(cfg, "loss.style_layers", "loss.style_layer_weights", channels)

    content_path = resolve_image(cfg.content, "content")
    specs = style_specs(cfg)
    style_paths = [resolve_image(spec, "style" if len(specs) == 1 else f"style {i + 1}")
                   for i, spec in enumerate(specs)]
    mask_specs = style_mask_specs(cfg)
    mask_paths = None if mask_specs is None else [
        None if spec is None else resolve_image(spec, f"style_masks[{i}]") for i, spec in enumerate(mask_specs)]
    size = int(cfg.image.size)
    style_size = style_long_side(size, float(cfg.image.style_scale))
    deepest = max(table[n].index for n in (*content_layers, *style_layers))
    check_memory(device, arch, deepest, [(content_path, size), *((p, style_size) for p in style_paths)])
    content = load_tensor(content_path, size, "content")
    styles = [load_tensor(p, style_size, "style") for p in style_paths]
    masks = None if mask_paths is None else [
        None if p is None else load_mask(p, content.shape[-2], content.shape[-1], f"style_masks[{i}]")
        for i, p in enumerate(mask_paths)]
    for i, mask in enumerate(masks or []):
        if mask is not None and float(mask.max()) <= 0:
            raise ImageError(f"style_masks[{i}] {mask_paths[i]}: the mask is black everywhere, so style "
                             f"{specs[i]} would apply nowhere (white marks where it applies)")

    pools = sum(1 for n, layer in table.items() if n.startswith("pool") and layer.index < deepest)
    minimum = 2**pools
    for what, path, image in (("content", content_path, content),
                              *(("style", p, s) for p, s in zip(style_paths, styles, strict=True))):
        if min(image.shape[-2:]) < minimum:
            raise ImageError(
                f"{what} image {path} is {image.shape[-1]}x{image.shape[-2]} px after resizing; the "
                f"deepest layer in use needs at least {minimum} px on each side (raise image.size"
                f"{' or image.style_scale' if what == 'style' else ''})")
    smallest = scale_schedule(cfg)[0][0]
    if smallest < size:
        coarse_style = style_long_side(smallest, float(cfg.image.style_scale))
        for what, image, long_side in (("content", content, smallest), *(("style", s, coarse_style) for s in styles)):
            width, height = scaled_size((image.shape[-1], image.shape[-2]), long_side)
            if min(width, height) < minimum:
                raise ConfigError("image.scales", list(cfg.image.scales),
                                  f"scales whose {what} image is at least {minimum} px on each side (at "
                                  f"{smallest} px it is {width}x{height}; the deepest layer in use needs {minimum})")
    return Inputs(cfg, device, name, notes, content_path, content.to(device), content_layers, style_layers,
                  style_paths, [s.to(device) for s in styles], style_blend(cfg), mask_paths,
                  None if masks is None else [None if m is None else m.to(device) for m in masks])


def check_memory(device: torch.device, arch: str, deepest: int, images: list[tuple[Path, int]]) -> None:
    """Refuse, before allocating anything, a size whose activations cannot fit on the device."""
    available = available_bytes(device)
    if available is None:
        return
    need = 0
    for path, long_side in images:
        header = header_size(path)
        if header is not None:
            width, height = scaled_size(header, long_side)
            need = max(need, activation_bytes(arch, deepest, height, width))
    if need > available:
        gib = 1024**3
        raise ConfigError("image.size", images[0][1],
                          f"a smaller size (or image.style_scale): at this size a forward and backward pass needs an estimated "
                          f"{need / gib:.1f} GiB of activations, but {device} has {available / gib:.1f} GiB "
                          f"available")


@dataclass
class BatchJob:
    """One member of a batch: its checked inputs, where its files go, and its hooks."""

    inputs: Inputs
    output_dir: Path
    callbacks: Sequence[EvaluationCallback] = ()
    on_ready: Callable[[dict], None] | None = None


def member_weights(inputs: Inputs) -> dict:
    """The loss weights of one member (alpha, beta, TV, per layer), for ``LossWeights.stack``."""
    loss = inputs.cfg.loss
    return {"content": float(loss.content_weight), "style": float(loss.style_weight),
            "tv": float(loss.tv_weight), "content_layers": inputs.content_layers,
            "style_layers": inputs.style_layers}


def execute(inputs: Inputs, output_dir: Path, callbacks: Sequence[EvaluationCallback] = (),
            on_ready: Callable[[dict], None] | None = None) -> RunOutcome:
    """Load the backbone, optimise, and write result.png, losses.csv, config.yaml and run.json.

    ``on_ready`` receives the run record (backbone actually used, weights, ...) just
    before optimisation starts.
    """
    (outcome,) = execute_batch([BatchJob(inputs, Path(output_dir), callbacks, on_ready)])
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def execute_batch(jobs: Sequence[BatchJob]) -> list[RunOutcome | BaseException]:
    """Run jobs that share images, sizes, layers and backbone as one batch (``nst.batching``).

    One backbone and one set of targets serve all of them; each keeps its own
    weights, optimiser, epochs and init, and writes its own files. A member whose
    loss became non-finite gets its ``NonFiniteLossError`` in the returned list
    (the others go on); anything else that goes wrong is raised.
    """
    first = jobs[0].inputs
    cfg = first.cfg
    if len(jobs) > 1:
        check_batch_memory(first, len(jobs))
    for job in jobs:
        job.output_dir.mkdir(parents=True, exist_ok=True)
        (job.output_dir / CONFIG_YAML).write_text(OmegaConf.to_yaml(job.inputs.cfg, resolve=True))
    layers = [*first.content_layers, *first.style_layers]
    backbone = load_backbone(first.backbone_name, layers, cfg.model.pooling, first.device, int(cfg.seed))
    backbone.requested = cfg.model.name
    backbone.notes = first.backbone_notes + backbone.notes
    calibration = calibrate(backbone, str(cfg.model.calibration), [first.content, *first.styles],
                            [first.content_path, *first.style_paths])
    weights = LossWeights.stack([member_weights(job.inputs) for job in jobs], first.device)
    records = []
    for job in jobs:
        record = {**run_record(job.inputs, backbone), **calibration.record(), "batch_size": len(jobs)}
        records.append(record)
        if job.on_ready is not None:
            job.on_ready(record)
    outcomes = optimize_scales(jobs, backbone, weights)
    finished: list[RunOutcome | BaseException] = []
    for job, record, outcome in zip(jobs, records, outcomes, strict=True):
        if isinstance(outcome, NonFiniteLossError):
            save_png(outcome.last_finite_image, job.output_dir / LAST_FINITE_PNG)
            pd.DataFrame(outcome.history).to_csv(job.output_dir / LOSSES_CSV, index=False)
            record.update(status="FAILED", failure=str(outcome))
            _write_record(job.output_dir, record)
            finished.append(outcome)
            continue
        if isinstance(outcome, BaseException):
            raise outcome
        save_png(outcome.image, job.output_dir / RESULT_PNG)
        pd.DataFrame(outcome.history).to_csv(job.output_dir / LOSSES_CSV, index=False)
        record.update(status="FINISHED", evaluations=outcome.evaluations, elapsed_s=round(outcome.elapsed_s, 3),
                      final_losses={k: v for k, v in outcome.final.items() if k not in ("evaluation", "epoch")})
        _write_record(job.output_dir, record)
        log.info("wrote %s (%d evaluations, %.1f s, final loss %.4g)", job.output_dir / RESULT_PNG,
                 outcome.evaluations, outcome.elapsed_s, outcome.final.get("total", float("nan")))
        finished.append(RunOutcome(job.output_dir, outcome, backbone, record))
    return finished


def optimize_scales(jobs: Sequence[BatchJob], backbone: Backbone,
                    weights: LossWeights) -> list[OptimizationResult | BaseException]:
    """Optimise every member through ``image.scales`` (coarse to fine), or at ``image.size`` only.

    Each scale has its own targets (content and style resized to it) and starts
    from the previous scale's result, upsampled. Evaluations are numbered across
    scales, so MLflow shows one continuous history; records carry their ``scale``.
    """
    first, cfg = jobs[0].inputs, jobs[0].inputs.cfg
    schedules = [scale_schedule(job.inputs.cfg) for job in jobs]
    style_scale = float(cfg.image.style_scale)
    images: list[torch.Tensor | None] = [None] * len(jobs)
    merged: list[OptimizationResult] = [OptimizationResult(image=first.content) for _ in jobs]
    outcomes: list[OptimizationResult | BaseException | None] = [None] * len(jobs)
    several = len(schedules[0]) > 1
    for step, (size, _) in enumerate(schedules[0]):
        label = size if several else None
        active = [i for i in range(len(jobs)) if outcomes[i] is None]
        if not active:
            break
        if size == int(cfg.image.size):
            content, styles = first.content, first.styles
        else:
            content = load_tensor(first.content_path, size, "content").to(first.device)
            styles = [load_tensor(p, style_long_side(size, style_scale), "style").to(first.device)
                      for p in first.style_paths]
        content, styles = network_images(content, styles, str(cfg.color_preservation), str(cfg.color_histogram))
        style = styles[0]
        loss = StyleTransferLoss(
            backbone.extractor, content, styles, content_layers=first.content_layers,
            style_layers=first.style_layers, normalization=cfg.loss.normalization,
            precision=str(cfg.model.get("precision", "fp32")), style_blend=first.style_blend,
            style_masks=first.masks)
        inits = []
        for i in active:
            job = jobs[i].inputs
            if images[i] is None:
                inits.append(initial_image(job.cfg.init, content, style, int(job.cfg.seed)))
            else:
                inits.append(F.interpolate(images[i], size=content.shape[-2:], mode="bilinear",
                                           align_corners=False))
        results = optimize_batch(
            lambda batch, members, active=active, loss=loss: loss(
                batch, weights.select([active[m] for m in members])),
            inits, [optimizer_settings(jobs[i].inputs.cfg) for i in active],
            [schedules[i][step][1] for i in active],
            [[_renumbered(cb, merged[i].evaluations, merged[i].elapsed_s, label) for cb in jobs[i].callbacks]
             for i in active],
            progress=bool(cfg.get("progress", True)), preprocess=backbone.extractor.preprocess)
        last = step == len(schedules[0]) - 1
        for i, result in zip(active, results, strict=True):
            offset, seconds = merged[i].evaluations, merged[i].elapsed_s
            if isinstance(result, NonFiniteLossError):
                result.history = merged[i].history + [_at(r, offset, seconds, label) for r in result.history]
                result.evaluation = (result.evaluation or 0) + offset
                outcomes[i] = result
            elif isinstance(result, BaseException):
                outcomes[i] = result
            else:
                merged[i].history += [_at(r, offset, seconds, label) for r in result.history]
                merged[i].image = images[i] = result.image
                merged[i].elapsed_s += result.elapsed_s
                if last:
                    if str(cfg.color_preservation) == "luminance":  # the content's chroma back on
                        merged[i].image = recombine(merged[i].image, first.content)
                    outcomes[i] = merged[i]
    return outcomes


def _at(record: dict, offset: int, seconds: float, size: int | None) -> dict:
    """A scale's record, numbered and timed from the start of the run (``scale`` when there are several)."""
    moved = {**record, "evaluation": record["evaluation"] + offset, "elapsed_s": record["elapsed_s"] + seconds}
    return moved if size is None else {**moved, "scale": size}


def _renumbered(callback: EvaluationCallback, offset: int, seconds: float, size: int | None) -> EvaluationCallback:
    return lambda record, image: callback(_at(record, offset, seconds, size), image)


def check_batch_memory(inputs: Inputs, members: int) -> None:
    """A batch needs ``members`` times one run's activations; refuse it before allocating them."""
    available = available_bytes(inputs.device)
    if available is None:
        return
    table = layer_table(SPECS[inputs.backbone_name].arch)
    deepest = max(table[n].index for n in (*inputs.content_layers, *inputs.style_layers))
    height, width = inputs.content.shape[-2:]
    need = activation_bytes(SPECS[inputs.backbone_name].arch, deepest, height, width, batch=members)
    if need > available:
        gib = 1024**3
        raise ConfigError("hydra.launcher.max_batch", members,
                          f"fewer members per batch: {members} images of {width}x{height} px need an "
                          f"estimated {need / gib:.1f} GiB of activations, but {inputs.device} has "
                          f"{available / gib:.1f} GiB available")


def run_record(inputs: Inputs, backbone: Backbone) -> dict:
    """What a reader needs to interpret the numbers: backbone, weights, normalisation, versions."""
    return {
        **backbone.record(),
        "normalization": inputs.cfg.loss.normalization,
        "optimizer_space": inputs.cfg.optimizer.space,
        "content_layers": inputs.content_layers,
        "style_layers": inputs.style_layers,
        "content_image": str(inputs.content_path),
        "style_image": str(inputs.style_path),
        "content_size": list(inputs.content.shape[-2:]),
        "style_size": list(inputs.style.shape[-2:]),
        **({"style_images": [str(p) for p in inputs.style_paths], "style_blend": inputs.style_blend}
           if len(inputs.style_paths) > 1 else {}),
        **({"style_masks": [None if p is None else str(p) for p in inputs.mask_paths]}
           if inputs.mask_paths is not None else {}),
        "color_preservation": str(inputs.cfg.get("color_preservation", "none")),
        "device": str(inputs.device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def _write_record(output_dir: Path, record: dict) -> None:
    (output_dir / RECORD_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")


def run_contexts(contexts: Sequence) -> list[RunOutcome | BaseException | None]:
    """Run compatible jobs (``nst.tracking.JobContext``) as one batch; per job its outcome or error."""
    if OmegaConf.select(contexts[0].cfg, "tracking.enabled", default=False):
        from nst.tracking import tracked_batch

        return tracked_batch(list(contexts))
    outcomes: list[RunOutcome | BaseException | None] = [None] * len(contexts)
    jobs, positions = [], []
    for position, context in enumerate(contexts):
        try:
            jobs.append(BatchJob(prepare(context.cfg), Path(context.output_dir)))
            positions.append(position)
        except NSTError as exc:
            outcomes[position] = exc
    if jobs:
        for position, outcome in zip(positions, execute_batch(jobs), strict=True):
            outcomes[position] = outcome
    return outcomes


def run(cfg: DictConfig, output_dir: Path) -> RunOutcome | None:
    """Check, then execute one run; tracked in MLflow unless ``tracking.enabled=false``.

    Returns None when resume found the same run already FINISHED.
    """
    if not OmegaConf.select(cfg, "tracking.enabled", default=False):
        return execute(prepare(cfg), Path(output_dir))
    from nst.tracking import tracked_run

    return tracked_run(cfg, Path(output_dir))
