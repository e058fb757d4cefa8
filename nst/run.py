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
from nst.config import layer_weights, optimizer_settings, validate
from nst.devices import available_bytes, resolve_device
from nst.errors import ConfigError, ImageError, NonFiniteLossError
from nst.images import header_size, load_tensor, save_png, scaled_size, style_long_side
from nst.losses import StyleTransferLoss
from nst.optimization import EvaluationCallback, OptimizationResult, initial_image, optimize

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
    style_path: Path
    content: torch.Tensor
    style: torch.Tensor
    content_layers: dict[str, float]
    style_layers: dict[str, float]


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
    name, notes = resolve_name(cfg.model.name)
    arch = SPECS[name].arch
    validate_layers(arch, list(cfg.loss.content_layers), "loss.content_layers")
    validate_layers(arch, list(cfg.loss.style_layers), "loss.style_layers")
    table = layer_table(arch)
    channels = {n: layer.channels for n, layer in table.items()}
    content_layers = layer_weights(cfg, "loss.content_layers", "loss.content_layer_weights")
    style_layers = layer_weights(cfg, "loss.style_layers", "loss.style_layer_weights", channels)

    content_path = resolve_image(cfg.content, "content")
    style_path = resolve_image(cfg.style, "style")
    size = int(cfg.image.size)
    style_size = style_long_side(size, float(cfg.image.style_scale))
    deepest = max(table[n].index for n in (*content_layers, *style_layers))
    check_memory(device, arch, deepest, [(content_path, size), (style_path, style_size)])
    content = load_tensor(content_path, size, "content")
    style = load_tensor(style_path, style_size, "style")

    pools = sum(1 for n, layer in table.items() if n.startswith("pool") and layer.index < deepest)
    minimum = 2**pools
    for what, path, image in (("content", content_path, content), ("style", style_path, style)):
        if min(image.shape[-2:]) < minimum:
            raise ImageError(
                f"{what} image {path} is {image.shape[-1]}x{image.shape[-2]} px after resizing; the "
                f"deepest layer in use needs at least {minimum} px on each side (raise image.size"
                f"{' or image.style_scale' if what == 'style' else ''})")
    return Inputs(cfg, device, name, notes, content_path, style_path,
                  content.to(device), style.to(device), content_layers, style_layers)


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


def execute(inputs: Inputs, output_dir: Path, callbacks: Sequence[EvaluationCallback] = (),
            on_ready: Callable[[dict], None] | None = None) -> RunOutcome:
    """Load the backbone, optimise, and write result.png, losses.csv, config.yaml and run.json.

    ``on_ready`` receives the run record (backbone actually used, weights, ...) just
    before optimisation starts.
    """
    cfg = inputs.cfg
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CONFIG_YAML).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    layers = [*inputs.content_layers, *inputs.style_layers]
    backbone = load_backbone(inputs.backbone_name, layers, cfg.model.pooling, inputs.device, int(cfg.seed))
    backbone.requested = cfg.model.name
    backbone.notes = inputs.backbone_notes + backbone.notes
    loss = StyleTransferLoss(
        backbone.extractor, inputs.content, inputs.style,
        content_layers=inputs.content_layers, style_layers=inputs.style_layers,
        content_weight=float(cfg.loss.content_weight), style_weight=float(cfg.loss.style_weight),
        tv_weight=float(cfg.loss.tv_weight), normalization=cfg.loss.normalization)
    init = initial_image(cfg.init, inputs.content, inputs.style, int(cfg.seed))
    record = run_record(inputs, backbone)
    if on_ready is not None:
        on_ready(record)
    try:
        result = optimize(loss, init, optimizer_settings(cfg), int(cfg.epochs), callbacks,
                          progress=bool(cfg.get("progress", True)),
                          preprocess=backbone.extractor.preprocess)
    except NonFiniteLossError as exc:
        save_png(exc.last_finite_image, output_dir / LAST_FINITE_PNG)
        pd.DataFrame(exc.history).to_csv(output_dir / LOSSES_CSV, index=False)
        record.update(status="FAILED", failure=str(exc))
        _write_record(output_dir, record)
        raise
    save_png(result.image, output_dir / RESULT_PNG)
    pd.DataFrame(result.history).to_csv(output_dir / LOSSES_CSV, index=False)
    record.update(status="FINISHED", evaluations=result.evaluations, elapsed_s=round(result.elapsed_s, 3),
                  final_losses={k: v for k, v in result.final.items() if k not in ("evaluation", "epoch")})
    _write_record(output_dir, record)
    log.info("wrote %s (%d evaluations, %.1f s, final loss %.4g)", output_dir / RESULT_PNG,
             result.evaluations, result.elapsed_s, result.final.get("total", float("nan")))
    return RunOutcome(output_dir, result, backbone, record)


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
        "device": str(inputs.device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }


def _write_record(output_dir: Path, record: dict) -> None:
    (output_dir / RECORD_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")


def run(cfg: DictConfig, output_dir: Path) -> RunOutcome | None:
    """Check, then execute one run; tracked in MLflow unless ``tracking.enabled=false``.

    Returns None when resume found the same run already FINISHED.
    """
    if not OmegaConf.select(cfg, "tracking.enabled", default=False):
        return execute(prepare(cfg), Path(output_dir))
    from nst.tracking import tracked_run

    return tracked_run(cfg, Path(output_dir))
