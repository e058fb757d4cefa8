"""Checks on a composed config, made before anything heavy happens.

Hydra composes whatever the user typed; these checks turn a bad value into a
``ConfigError`` that names the key, the value and what is allowed, before an
image is decoded or a weight is loaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from nst.engine import schedule
from nst.engine.backbones import CHOICES as BACKBONES
from nst.engine.calibration import CALIBRATIONS
from nst.engine.color import COLOR_MODES, HISTOGRAM_MODES
from nst.engine.devices import parse_device
from nst.engine.losses import NORMALIZATIONS, PRECISIONS
from nst.engine.optimization import INIT_MODES, OPTIMIZERS, SPACES, OptimizerSettings
from nst.engine.spec import MemberSpec, RunSpec, SharedSpec, weighted
from nst.errors import ConfigError
from nst.jobs.schema import check_config
from nst.tracking.store import DEFAULT_EXPERIMENT, TrackingSpec


def _number(cfg: DictConfig, key: str, *, minimum: float | None = None, exclusive: bool = False,
            integer: bool = False, allowed_extra: str = "") -> float:
    value = OmegaConf.select(cfg, key)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if integer:
        ok = ok and float(value).is_integer()
    if ok:
        ok = math.isfinite(value) and (
            minimum is None or (value > minimum if exclusive else value >= minimum))
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bound = "" if minimum is None else f" {'>' if exclusive else '>='} {minimum:g}"
        raise ConfigError(key, value, f"{kind}{bound}{f', or {allowed_extra}' if allowed_extra else ''}")
    return int(value) if integer else float(value)


def _choice(cfg: DictConfig, key: str, choices: Sequence[str]) -> str:
    value = OmegaConf.select(cfg, key)
    if value not in choices:
        raise ConfigError(key, value, f"one of {', '.join(choices)}")
    return value


def _layer_list(cfg: DictConfig, key: str) -> list[str]:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, ListConfig | list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(key, value if not isinstance(value, ListConfig) else list(value),
                          "a non-empty list of layer names, e.g. [conv4_2]")
    if len(set(value)) != len(value):
        raise ConfigError(key, list(value), "each layer at most once")
    return list(value)


def layer_weights(cfg: DictConfig, layers_key: str, weights_key: str,
                  channels: dict[str, int] | None = None) -> dict[str, float]:
    """Pair each layer with its weight; ``auto`` means 1e3/n^2 for style layers, 1 for content."""
    layers = _layer_list(cfg, layers_key)
    weights = OmegaConf.select(cfg, weights_key)
    if weights in (None, "auto"):
        style = weights_key.endswith("style_layer_weights") and channels is not None
        return weighted(layers, None, [channels[n] for n in layers] if style else None)
    if isinstance(weights, int | float) and not isinstance(weights, bool):
        weights = [weights]
    if not isinstance(weights, ListConfig | list):
        raise ConfigError(weights_key, weights, f"auto, or a list of {len(layers)} numbers >= 0")
    weights = list(weights)
    if len(weights) != len(layers):
        raise ConfigError(weights_key, weights,
                          f"auto, or exactly one weight per layer of {layers_key} ({len(layers)}: {layers})")
    for w in weights:
        if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
            raise ConfigError(weights_key, weights, "finite numbers >= 0")
    return dict(zip(layers, map(float, weights), strict=True))


def scale_schedule(cfg: DictConfig) -> list[tuple[int, int]]:
    """(long side, epochs) per scale, coarse to fine; one entry (image.size, epochs) without scales."""
    size = int(OmegaConf.select(cfg, "image.size"))
    epochs = int(OmegaConf.select(cfg, "epochs"))
    scales = OmegaConf.select(cfg, "image.scales")
    per_scale = OmegaConf.select(cfg, "image.scale_epochs")
    if scales is None:
        return [(size, epochs)]
    if scales == "auto":
        if per_scale is not None:
            raise ConfigError("image.scale_epochs", per_scale, "null when image.scales is auto (derived from "
                                                              "image.size and epochs: nst/engine/schedule.py)")
        return schedule.coarse_to_fine(size, epochs)
    scales = list(scales) if isinstance(scales, ListConfig | list) else [scales]
    if (not scales or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 16 for s in scales)
            or any(b <= a for a, b in zip(scales, scales[1:], strict=False)) or scales[-1] != size):
        raise ConfigError("image.scales", scales, f"auto, or increasing long sides >= 16 px ending at image.size "
                                                  f"({size}), e.g. [{max(16, size // 2)}, {size}]")
    if per_scale is None:
        return [(s, epochs) for s in scales]
    per_scale = list(per_scale) if isinstance(per_scale, ListConfig | list) else [per_scale]
    if len(per_scale) != len(scales) or not all(
            isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in per_scale):
        raise ConfigError("image.scale_epochs", per_scale,
                          f"one integer >= 1 per scale of image.scales ({len(scales)}: {scales})")
    return list(zip(scales, per_scale, strict=True))


def optimizer_settings(cfg: DictConfig) -> OptimizerSettings:
    name = _choice(cfg, "optimizer.name", OPTIMIZERS)
    settings = OptimizerSettings(
        name=name,
        lr=_number(cfg, "optimizer.lr", minimum=0, exclusive=True),
        max_iter=_number(cfg, "optimizer.max_iter", minimum=1, integer=True),
        space=_choice(cfg, "optimizer.space", SPACES),
    )
    if OmegaConf.select(cfg, "optimizer.convergence_window") is not None:
        settings.convergence_window = int(_number(cfg, "optimizer.convergence_window", minimum=1, integer=True))
    key = "optimizer.convergence_tolerance"
    if OmegaConf.select(cfg, key, default=settings.convergence_tolerance) is None:  # null: the whole budget
        settings.convergence_tolerance = None
    elif OmegaConf.select(cfg, key) is not None:
        settings.convergence_tolerance = _number(cfg, key, minimum=0, allowed_extra="null (run every epoch)")
    if name == "lbfgs":
        settings.history_size = _number(cfg, "optimizer.history_size", minimum=1, integer=True)
        line_search = OmegaConf.select(cfg, "optimizer.line_search", default="strong_wolfe")
        if line_search not in (None, "strong_wolfe"):
            raise ConfigError("optimizer.line_search", line_search, "strong_wolfe or null (fixed step lr)")
        settings.line_search = line_search
        if OmegaConf.select(cfg, "optimizer.max_eval") is not None:
            # each epoch starts with one evaluation; a line search left no more can never move
            settings.max_eval = _number(cfg, "optimizer.max_eval", minimum=2 if line_search else 1, integer=True)
        if line_search and OmegaConf.select(cfg, "model.precision") == "bf16":
            # bf16's rounding noise makes the strong-Wolfe search reject every step: L-BFGS would stop
            # after a few evaluations with the loss unchanged
            raise ConfigError("optimizer.line_search", line_search,
                              "null with model.precision=bf16 (bfloat16's rounding noise defeats the "
                              "line search; pass optimizer.line_search=null, or optimizer=adam)")
        for key in ("tolerance_grad", "tolerance_change"):
            if OmegaConf.select(cfg, f"optimizer.{key}") is not None:
                setattr(settings, key, _number(cfg, f"optimizer.{key}"))
    elif OmegaConf.select(cfg, "optimizer.betas") is not None:
        betas = list(OmegaConf.select(cfg, "optimizer.betas"))
        if len(betas) != 2 or not all(isinstance(b, int | float) and 0 <= b < 1 for b in betas):
            raise ConfigError("optimizer.betas", betas, "two numbers in [0, 1)")
        settings.betas = (float(betas[0]), float(betas[1]))
    return settings


def _as_list(value) -> list:
    return list(value) if isinstance(value, ListConfig | list) else [value]


def style_specs(cfg: DictConfig) -> list[str]:
    """The style images: ``style=name`` or ``style=[a,b]`` (paths or sample names)."""
    value = OmegaConf.select(cfg, "style", throw_on_missing=False)
    specs = _as_list(value)
    if value is None or not specs or not all(v is not None and str(v).strip() for v in specs):
        raise ConfigError("style", value if not isinstance(value, ListConfig) else list(value),
                          "a path or a sample asset name, or a list of them: style=<path|name> or style=[a,b]")
    return [str(v) for v in specs]


def style_blend(cfg: DictConfig) -> list[float]:
    """Blend weights, one per style image, normalised to sum to 1; null: equal weights."""
    count = len(style_specs(cfg))
    value = OmegaConf.select(cfg, "style_blend")
    if value is None:
        return [1.0 / count] * count
    blend = _as_list(value)
    if (len(blend) != count or not all(isinstance(b, int | float) and not isinstance(b, bool)
                                       and math.isfinite(b) and b >= 0 for b in blend) or sum(blend) <= 0):
        raise ConfigError("style_blend", blend, f"{count} non-negative numbers (one per style image), "
                                                f"not all zero, e.g. [{', '.join(['0.5'] * count)}]")
    total = float(sum(blend))
    return [float(b) / total for b in blend]


def style_mask_specs(cfg: DictConfig) -> list[str | None] | None:
    """Mask files, one per style image (null: that style everywhere); None without masks."""
    value = OmegaConf.select(cfg, "style_masks")
    if value is None:
        return None
    count = len(style_specs(cfg))
    masks = _as_list(value)
    if len(masks) != count or not all(m is None or (isinstance(m, str) and m.strip()) for m in masks):
        raise ConfigError("style_masks", masks, f"{count} mask paths (or null), one per style image")
    return [None if m is None else str(m) for m in masks]


def validate(cfg: DictConfig) -> None:
    """Check every value a run needs; raise ``ConfigError`` on the first bad one.

    A key no file under conf/ defines (``+loss.styleweight=1``, a sweep's mistyped
    param) is refused first: Hydra composes it, and nothing would ever read it.
    """
    check_config(cfg)
    value = OmegaConf.select(cfg, "content", throw_on_missing=False)
    if value is None or str(value).strip() == "":
        raise ConfigError("content", value, "a path or a sample asset name: pass content=<path|name>")
    style_specs(cfg)
    style_blend(cfg)
    style_mask_specs(cfg)
    _choice(cfg, "color_preservation", COLOR_MODES)
    _choice(cfg, "color_histogram", HISTOGRAM_MODES)
    _choice(cfg, "model.name", BACKBONES)
    _choice(cfg, "model.pooling", ("max", "avg"))
    _choice(cfg, "model.calibration", CALIBRATIONS)
    if OmegaConf.select(cfg, "model.precision") is not None:
        _choice(cfg, "model.precision", PRECISIONS)
    _choice(cfg, "loss.normalization", NORMALIZATIONS)
    _choice(cfg, "init", INIT_MODES)
    parse_device(OmegaConf.select(cfg, "device"))
    for key in ("loss.content_weight", "loss.style_weight", "loss.tv_weight"):
        _number(cfg, key, minimum=0)
    layer_weights(cfg, "loss.content_layers", "loss.content_layer_weights")
    layer_weights(cfg, "loss.style_layers", "loss.style_layer_weights")
    _number(cfg, "epochs", minimum=1, integer=True)
    _number(cfg, "seed", integer=True)
    _number(cfg, "image.size", minimum=16, integer=True)
    _number(cfg, "image.style_scale", minimum=0, exclusive=True)
    for key in ("print_every", "save_every"):
        if OmegaConf.select(cfg, key) is not None:
            _number(cfg, key, minimum=0, integer=True)
    frame_every(cfg)
    _flag(cfg, "video", True)
    output_name(cfg)
    scale_schedule(cfg)
    optimizer_settings(cfg)


def frame_every(cfg: DictConfig) -> int:
    """``frame_every``: a frame of the video and of MLflow's step slider every N evaluations (10 if unset)."""
    if OmegaConf.select(cfg, "frame_every") is None:
        return 10
    return int(_number(cfg, "frame_every", minimum=1, integer=True))


def output_name(cfg: DictConfig) -> str:
    """``output``: the result image's file name in the run's folder (a relative path is taken from the
    folder, an absolute one as it is); a .png, since the result is written as PNG."""
    value = OmegaConf.select(cfg, "output") or "result.png"
    if not isinstance(value, str) or not value.strip() or not value.lower().endswith(".png"):
        raise ConfigError("output", value, "a file name ending in .png (e.g. output=stylised.png), in the "
                                           "run's folder; or a path")
    return value.strip()


# --- the one reading of a run's config: a checked, frozen RunSpec ------------------------------


def _explicit_weights(cfg: DictConfig, layers_key: str, weights_key: str) -> tuple[float, ...] | None:
    """The checked per-layer weights as given, or None for ``auto`` (resolved once channels are known)."""
    checked = layer_weights(cfg, layers_key, weights_key)
    return None if OmegaConf.select(cfg, weights_key) in (None, "auto") else tuple(checked.values())


def parse(cfg: DictConfig) -> RunSpec:
    """Check ``cfg`` and freeze it into a ``RunSpec``; raises ``ConfigError`` on the first bad value.

    This is the only place a run's values are read from the config: the job driver
    calls it once per job and hands the spec down.
    """
    validate(cfg)
    masks = style_mask_specs(cfg)
    schedule = scale_schedule(cfg)
    shared = SharedSpec(
        content=str(cfg.content), styles=tuple(style_specs(cfg)), style_blend=tuple(style_blend(cfg)),
        style_masks=None if masks is None else tuple(masks),
        color_preservation=str(cfg.color_preservation), color_histogram=str(cfg.color_histogram),
        model=str(cfg.model.name), pooling=str(cfg.model.pooling), calibration=str(cfg.model.calibration),
        precision=str(OmegaConf.select(cfg, "model.precision") or "fp32"),
        normalization=str(cfg.loss.normalization),
        content_layers=tuple(_layer_list(cfg, "loss.content_layers")),
        style_layers=tuple(_layer_list(cfg, "loss.style_layers")),
        size=int(cfg.image.size), style_scale=float(cfg.image.style_scale),
        scales=tuple(size for size, _ in schedule), device=str(cfg.device),
        cuda_graphs=_flag(cfg, "model.cuda_graphs", False))
    member = MemberSpec(
        content_weight=float(cfg.loss.content_weight), style_weight=float(cfg.loss.style_weight),
        tv_weight=float(cfg.loss.tv_weight),
        content_layer_weights=_explicit_weights(cfg, "loss.content_layers", "loss.content_layer_weights"),
        style_layer_weights=_explicit_weights(cfg, "loss.style_layers", "loss.style_layer_weights"),
        optimizer=optimizer_settings(cfg), scale_epochs=tuple(epochs for _, epochs in schedule),
        init=str(cfg.init), seed=int(cfg.seed), progress=bool(OmegaConf.select(cfg, "progress", default=True)),
        print_every=int(OmegaConf.select(cfg, "print_every") or 0),
        save_every=int(OmegaConf.select(cfg, "save_every") or 0), frame_every=frame_every(cfg),
        video=_flag(cfg, "video", True), output=output_name(cfg))
    return RunSpec(shared, member, OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_yaml(cfg, resolve=True))


def _flag(cfg: DictConfig, key: str, default: bool) -> bool:
    """A true/false value; ``bool('false')`` would be True, so anything else is refused."""
    value = OmegaConf.select(cfg, key, default=default)
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def tracking_spec(cfg: DictConfig) -> TrackingSpec:
    """The ``tracking`` group and the output root: read apart from ``parse`` so that a job whose
    values are bad can still be recorded as FAILED."""

    def get(key: str, default=None):
        return OmegaConf.select(cfg, f"tracking.{key}", default=default)

    uri, artifacts, experiment = get("uri"), get("artifact_location"), get("experiment", DEFAULT_EXPERIMENT)
    if not isinstance(experiment, str) or not experiment.strip():
        raise ConfigError("tracking.experiment", experiment, f"an experiment's name (default {DEFAULT_EXPERIMENT})")
    return TrackingSpec(
        enabled=_flag(cfg, "tracking.enabled", False), uri=str(uri) if uri else None,
        artifact_location=str(artifacts) if artifacts else None, experiment=experiment,
        resume=_flag(cfg, "tracking.resume", True),
        output_dir=str(OmegaConf.select(cfg, "paths.output_dir") or "outputs"))


def check_launch(cfg: DictConfig) -> None:
    """Check what the launching process reads before the first job: the tracking values, the frame and
    video settings, and the launcher's worker and batch counts; raises ``ConfigError``.

    The CLI calls it on the command line's values before Hydra starts; a multirun's
    ``on_multirun_start`` can call it on the composed config (Hydra only warns about a
    callback's exception, so that caller must exit itself).
    """
    tracking_spec(cfg)
    frame_every(cfg)
    _flag(cfg, "video", True)
    n_jobs = OmegaConf.select(cfg, "hydra.launcher.n_jobs")
    if n_jobs is not None and n_jobs != -1:
        # joblib's own refusal of 0 is a traceback from inside the launcher
        _number(cfg, "hydra.launcher.n_jobs", minimum=1, integer=True, allowed_extra="-1 (one worker per CPU)")
    if OmegaConf.select(cfg, "hydra.launcher.max_batch") is not None:
        _number(cfg, "hydra.launcher.max_batch", minimum=1, integer=True)
