"""One style-transfer run, or a batch of them, from a checked ``RunSpec`` to files on disk.

The engine's entry points: ``prepare`` (cheap checks, images loaded) and
``execute``/``execute_batch`` (backbone, optimisation, result.png, losses.csv,
config.yaml, run.json). The order matters: every cheap check (paths, layer
names, image sizes, memory) comes before the expensive steps (loading weights,
optimising), so a typo costs a second, not a model download.

This module knows nothing of Hydra or MLflow: whoever records a run passes
per-evaluation callbacks and an ``on_ready`` hook (``nst.jobs`` hands in the
MLflow recorder).
"""

from __future__ import annotations

import csv
import json
import logging
import platform
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nst.engine import cuda_graphs
from nst.engine.backbones import (
    SPECS,
    Backbone,
    activation_bytes,
    layer_table,
    load_backbone,
    resolve_name,
    validate_layers,
)
from nst.engine.calibration import calibrate
from nst.engine.color import network_images, recombine
from nst.engine.devices import available_bytes, native_bf16, resolve_device, tune
from nst.engine.losses import LossWeights, StyleTransferLoss
from nst.engine.optimization import (
    EvaluationCallback,
    OptimizationResult,
    initial_image,
    optimize_batch,
)
from nst.engine.spec import RunSpec
from nst.errors import ConfigError, ImageError, NonFiniteLossError, OutputError
from nst.images.files import (
    check_image_file,
    header_size,
    load_mask,
    load_tensor,
    save_png,
    scaled_size,
    style_long_side,
    upsample,
)
from nst.images.samples import resolve_image

log = logging.getLogger(__name__)

RESULT_PNG = "result.png"
LAST_FINITE_PNG = "last_finite.png"
PARTIAL_PNG = "partial.png"
LOSSES_CSV = "losses.csv"
CONFIG_YAML = "config.yaml"
RECORD_JSON = "run.json"


@dataclass
class Inputs:
    """Everything a run needs that is cheap to prepare: its spec, checked layers and loaded images."""

    spec: RunSpec
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

    @property
    def result_png(self) -> Path:
        """The result image as written (config ``output``, ``result.png`` by default)."""
        return result_png(self.output_dir, self.record)


def result_png(folder: Path, record: dict) -> Path:
    """Where a run's result image is, from its folder and its run.json record (``output`` names it)."""
    return Path(folder) / record.get("result", RESULT_PNG)


def prepare(spec: RunSpec) -> Inputs:
    """Check layers, files, sizes and memory, and load the images; raises ``NSTError`` before any heavy work."""
    shared = spec.shared
    device = resolve_device(shared.device)
    tune(device)
    if shared.precision == "bf16" and native_bf16(device) is False:
        log.warning("model.precision=bf16: this %s has no bfloat16 hardware (no avx512_bf16 or AMX on a CPU), so "
                    "bf16 is emulated and slower than fp32; use model.precision=fp32 here", device.type)
    name, notes = resolve_name(shared.model)
    arch = SPECS[name].arch
    validate_layers(arch, shared.content_layers, "loss.content_layers")
    validate_layers(arch, shared.style_layers, "loss.style_layers")
    table = layer_table(arch)
    content_layers, style_layers = spec.layer_weights({n: layer.channels for n, layer in table.items()})
    content_path, style_paths, mask_paths = _input_paths(spec)
    style_size = style_long_side(shared.size, shared.style_scale)
    deepest = max(table[n].index for n in (*content_layers, *style_layers))
    check_memory(device, arch, deepest, [(content_path, shared.size), *((p, style_size) for p in style_paths)])
    content = load_tensor(content_path, shared.size, "content")
    styles = [load_tensor(p, style_size, "style") for p in style_paths]
    masks = _load_masks(spec, mask_paths, content)
    minimum = 2 ** sum(1 for n, layer in table.items() if n.startswith("pool") and layer.index < deepest)
    _check_sizes(spec, minimum, content_path, content, style_paths, styles)
    return Inputs(spec, device, name, notes, content_path, content.to(device), content_layers, style_layers,
                  style_paths, [s.to(device) for s in styles], list(shared.style_blend), mask_paths,
                  None if masks is None else [None if m is None else m.to(device) for m in masks])


def _input_paths(spec: RunSpec) -> tuple[Path, list[Path], list[Path | None] | None]:
    """The content, style and mask files, each resolved from a path or a sample name.

    Each is checked to be a readable regular file here, before the memory check peeks at
    its header: opening a FIFO or a device would block or never end.
    """
    shared = spec.shared

    def local(name: str, what: str) -> Path:
        return check_image_file(resolve_image(name, what), what)

    content_path = local(shared.content, "content")
    style_paths = [local(name, "style" if len(shared.styles) == 1 else f"style {i + 1}")
                   for i, name in enumerate(shared.styles)]
    mask_paths = None if shared.style_masks is None else [
        None if name is None else local(name, f"style_masks[{i}]")
        for i, name in enumerate(shared.style_masks)]
    return content_path, style_paths, mask_paths


def _load_masks(spec: RunSpec, mask_paths: list[Path | None] | None,
                content: torch.Tensor) -> list[torch.Tensor | None] | None:
    """Each mask stretched to the content's shape; an all-black one is refused."""
    if mask_paths is None:
        return None
    masks = [None if p is None else load_mask(p, content.shape[-2], content.shape[-1], f"style_masks[{i}]")
             for i, p in enumerate(mask_paths)]
    for i, mask in enumerate(masks):
        if mask is not None and float(mask.max()) <= 0:
            raise ImageError(f"style_masks[{i}] {mask_paths[i]}: the mask is black everywhere, so style "
                             f"{spec.shared.styles[i]} would apply nowhere (white marks where it applies)")
    return masks


def _check_sizes(spec: RunSpec, minimum: int, content_path: Path, content: torch.Tensor,
                 style_paths: list[Path], styles: list[torch.Tensor]) -> None:
    """Every image, at every scale, must keep ``minimum`` px a side down to the deepest layer."""
    for what, path, image in (("content", content_path, content),
                              *(("style", p, s) for p, s in zip(style_paths, styles, strict=True))):
        if min(image.shape[-2:]) < minimum:
            raise ImageError(
                f"{what} image {path} is {image.shape[-1]}x{image.shape[-2]} px after resizing; the "
                f"deepest layer in use needs at least {minimum} px on each side (raise image.size"
                f"{' or image.style_scale' if what == 'style' else ''})")
    shared = spec.shared
    smallest = shared.scales[0]
    if smallest < shared.size:
        coarse_style = style_long_side(smallest, shared.style_scale)
        for what, image, long_side in (("content", content, smallest), *(("style", s, coarse_style) for s in styles)):
            width, height = scaled_size((image.shape[-1], image.shape[-2]), long_side)
            if min(width, height) < minimum:
                raise ConfigError("image.scales", list(shared.scales),
                                  f"scales whose {what} image is at least {minimum} px on each side (at "
                                  f"{smallest} px it is {width}x{height}; the deepest layer in use needs {minimum})")


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
    member = inputs.spec.member
    return {"content": member.content_weight, "style": member.style_weight, "tv": member.tv_weight,
            "content_layers": inputs.content_layers, "style_layers": inputs.style_layers}


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
    """Run jobs that share images, sizes, layers and backbone (``RunSpec.batch_key``) as one batch.

    One backbone and one set of targets serve all of them; each keeps its own
    weights, optimiser, epochs and init, and writes its own files. A member whose
    loss became non-finite gets its ``NonFiniteLossError`` in the returned list
    (the others go on); anything else that goes wrong is raised.
    """
    first = jobs[0].inputs
    if len(jobs) > 1:
        check_batch_memory(first, len(jobs))
    for job in jobs:
        with writing(job.output_dir):
            job.output_dir.mkdir(parents=True, exist_ok=True)
            (job.output_dir / CONFIG_YAML).write_text(job.inputs.spec.config_yaml)
    backbone = _load_backbone(first)
    weights = LossWeights.stack([member_weights(job.inputs) for job in jobs], first.device)
    records = []
    for job in jobs:
        record = {**run_record(job.inputs, backbone), "batch_size": len(jobs)}
        records.append(record)
        if job.on_ready is not None:
            job.on_ready(record)
    outcomes = optimize_scales(jobs, backbone, weights)
    written = []
    for job, record, outcome in zip(jobs, records, outcomes, strict=True):
        with writing(job.output_dir):
            written.append(_write_outcome(job, record, backbone, outcome))
    return written


@contextmanager
def writing(folder: Path):
    """A run's files that cannot be written (disk full, read-only, permissions) as one line naming them."""
    try:
        yield
    except OSError as exc:
        target = exc.filename or folder
        raise OutputError(f"cannot write {target}: {exc.strerror or exc} (free some space, or choose a "
                          f"writable output folder: paths.output_dir=<folder> or NST_OUTPUT_DIR)") from exc


def _load_backbone(inputs: Inputs) -> Backbone:
    """The network cut after the deepest layer in use, recorded with what was asked for and why."""
    shared = inputs.spec.shared
    layers = [*inputs.content_layers, *inputs.style_layers]
    backbone = load_backbone(inputs.backbone_name, layers, shared.pooling, inputs.device, inputs.spec.member.seed)
    backbone.requested = shared.model
    backbone.notes = inputs.backbone_notes + backbone.notes
    backbone.calibration = calibrate(backbone, shared.calibration, [inputs.content, *inputs.styles],
                                     [inputs.content_path, *inputs.style_paths]).record()
    return backbone


def write_losses(path: Path, history: Sequence[dict]) -> None:
    """losses.csv: one row per evaluation, a column per key (in first-seen order).

    With the csv module, not pandas: importing pandas took 0.7 s of a run's 3.2 s of imports here.
    """
    columns = list(dict.fromkeys(key for row in history for key in row))
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, columns, restval="")
        writer.writeheader()
        writer.writerows(history)


def _write_outcome(job: BatchJob, record: dict, backbone: Backbone,
                   outcome: OptimizationResult | BaseException) -> RunOutcome | BaseException:
    """Write a member's files: result.png (or last_finite.png), losses.csv and run.json."""
    if isinstance(outcome, NonFiniteLossError):
        save_png(outcome.last_finite_image, job.output_dir / LAST_FINITE_PNG)
        write_losses(job.output_dir / LOSSES_CSV, outcome.history)
        record.update(status="FAILED", failure=str(outcome))
        _write_record(job.output_dir, record)
        return outcome
    if isinstance(outcome, BaseException):
        raise outcome
    result = job.output_dir / job.inputs.spec.member.output
    result.parent.mkdir(parents=True, exist_ok=True)
    save_png(outcome.image, result)
    write_losses(job.output_dir / LOSSES_CSV, outcome.history)
    record.update(status="FINISHED", result=job.inputs.spec.member.output, evaluations=outcome.evaluations, elapsed_s=round(outcome.elapsed_s, 3),
                  final_losses={k: v for k, v in outcome.final.items() if k not in ("evaluation", "epoch")})
    _write_record(job.output_dir, record)
    log.debug("wrote %s", result)  # the job driver says where the result is, once
    return RunOutcome(job.output_dir, outcome, backbone, record)


def optimize_scales(jobs: Sequence[BatchJob], backbone: Backbone,
                    weights: LossWeights) -> list[OptimizationResult | BaseException]:
    """Optimise every member through ``image.scales`` (coarse to fine), or at ``image.size`` only.

    Each scale has its own targets (content and style resized to it) and starts
    from the previous scale's result, upsampled. Evaluations are numbered across
    scales, so MLflow shows one continuous history; records carry their ``scale``.
    """
    first = jobs[0].inputs
    scales = first.spec.shared.scales
    images: list[torch.Tensor | None] = [None] * len(jobs)
    merged: list[OptimizationResult] = [OptimizationResult(image=first.content) for _ in jobs]
    outcomes: list[OptimizationResult | BaseException | None] = [None] * len(jobs)
    for step, size in enumerate(scales):
        active = [i for i in range(len(jobs)) if outcomes[i] is None]
        if not active:
            break
        label = size if len(scales) > 1 else None
        results = _optimize_scale(jobs, backbone, weights, step, size, active, images, merged, label)
        last = step == len(scales) - 1
        for i, result in zip(active, results, strict=True):
            outcomes[i] = _merge(result, merged[i], images, i, label, last, first)
    return outcomes


def _scale_images(first: Inputs, size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Content and styles at long side ``size``, as the network sees them (colour control applied)."""
    shared = first.spec.shared
    if size == shared.size:
        content, styles = first.content, first.styles
    else:
        content = load_tensor(first.content_path, size, "content").to(first.device)
        styles = [load_tensor(p, style_long_side(size, shared.style_scale), "style").to(first.device)
                  for p in first.style_paths]
    return network_images(content, styles, shared.color_preservation, shared.color_histogram)


def _optimize_scale(jobs: Sequence[BatchJob], backbone: Backbone, weights: LossWeights, step: int, size: int,
                    active: list[int], images: list[torch.Tensor | None], merged: list[OptimizationResult],
                    label: int | None) -> list[OptimizationResult | BaseException]:
    """One scale for the members still running: targets at this size, each from its start image."""
    first = jobs[0].inputs
    content, styles = _scale_images(first, size)
    loss = StyleTransferLoss(
        backbone.extractor, content, styles, content_layers=first.content_layers,
        style_layers=first.style_layers, normalization=first.spec.shared.normalization,
        precision=first.spec.shared.precision, style_blend=first.style_blend, style_masks=first.masks)
    inits = []
    for i in active:
        member = jobs[i].inputs.spec.member
        if images[i] is None:
            inits.append(initial_image(member.init, content, styles[0], member.seed))
        else:
            inits.append(upsample(images[i], content.shape[-2:]))
    selected: dict[tuple[int, ...], LossWeights] = {}  # the weights' rows copied to the device once per set

    def member_loss(batch: torch.Tensor, members: list[int]):
        key = tuple(active[m] for m in members)
        if key not in selected:
            selected[key] = weights.select(key)
        return loss(batch, selected[key])

    shared = first.spec.shared
    capture = shared.cuda_graphs and cuda_graphs.available(content.device, shared.precision)
    return optimize_batch(
        cuda_graphs.CapturedLoss(member_loss) if capture else member_loss,
        inits, [jobs[i].inputs.spec.member.optimizer for i in active],
        [jobs[i].inputs.spec.member.scale_epochs[step] for i in active],
        [[_renumbered(cb, merged[i].evaluations, merged[i].elapsed_s, label) for cb in jobs[i].callbacks]
         for i in active],
        progress=first.spec.member.progress, preprocess=backbone.extractor.preprocess)


def _merge(result: OptimizationResult | BaseException, merged: OptimizationResult,
           images: list[torch.Tensor | None], i: int, label: int | None, last: bool,
           first: Inputs) -> OptimizationResult | BaseException | None:
    """Append one scale's result to the member's history; its outcome once done or failed, else None."""
    offset, seconds = merged.evaluations, merged.elapsed_s
    if isinstance(result, NonFiniteLossError):
        result.history = merged.history + [_at(r, offset, seconds, label) for r in result.history]
        result.evaluation = (result.evaluation or 0) + offset
        return result
    if isinstance(result, BaseException):
        return result
    merged.history += [_at(r, offset, seconds, label) for r in result.history]
    merged.image = images[i] = result.image
    merged.elapsed_s += result.elapsed_s
    if not last:
        return None
    if first.spec.shared.color_preservation == "luminance":  # the content's chroma back on
        merged.image = recombine(merged.image, first.content)
    return merged


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
        "normalization": inputs.spec.shared.normalization,
        "optimizer_space": inputs.spec.member.optimizer.space,
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
        "color_preservation": inputs.spec.shared.color_preservation,
        "device": str(inputs.device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def _write_record(output_dir: Path, record: dict) -> None:
    (output_dir / RECORD_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
