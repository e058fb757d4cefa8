"""Feature calibration: every backbone's features on the scale the seed's weights were tuned for.

Gatys et al. (2016) optimised through a *normalised* VGG-19: "we normalized the
network by scaling the weights such that the mean activation of each
convolutional filter over images and positions is equal to one". Their PyTorch
code, the source of the seed's alpha = 1, beta = 1e-2 ... 1e4 and 1e3/n^2 layer
weights, loads that normalised network. A ratio alpha/beta therefore only means
what the seed says on features whose filters are on a common, unit scale.

Raw backbones are far off that scale, and differently for each layer; since a Gram
loss grows with the fourth power of that scale and a content loss with the second,
on raw features the seed's beta grid lands somewhere else on the photo-to-texture
transition for every backbone (docs/pages/decisions.md has the measurements).

Two calibrations, each a per-filter divisor computed on nst's nine sample images:

``rms_activation`` (default): the root mean square of each filter's activation,
    so each filter's Gram diagonal averages one and every filter weighs the same
    in a layer's style loss.
``mean_activation``: the mean, Gatys' normalisation; on sparse filters (HED's edge
    detectors) a few rarely firing filters then dominate the style loss.
``none``: the raw features.

Dividing the outputs the losses read is what the normalised network computes
(a ReLU network scaled filter by filter gives the same function up to those
factors), and the forward pass is unchanged. The factors are fixed per backbone
(weights, pooling) and cached; where the sample images cannot be had, a run
calibrates on its own content and style images and records that it did.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nst.downloads import cache_dir
from nst.engine.backbones import Backbone
from nst.errors import NSTError
from nst.images.files import load_tensor
from nst.images.samples import ASSETS, resolve_image

log = logging.getLogger(__name__)

CALIBRATIONS = ("rms_activation", "mean_activation", "none")
# long side of the calibration images: a forward pass per image, once per backbone
CALIBRATION_SIZE = 128
# a filter silent on every calibration image would get an unbounded factor: floor it at this
# fraction of its layer's average factor
SILENT_FLOOR = 1e-2
# what a cache file holds: per layer a (2, C) tensor of each filter's mean and mean square
CACHE_FORMAT = 2


@dataclass
class Calibration:
    """The factors applied to one run's features, and where they came from (for the record)."""

    method: str
    source: str = ""  # "sample images" or "this run's images"
    images: list[str] = field(default_factory=list)
    layer_factors: dict[str, float] = field(default_factory=dict)  # average divisor per layer

    def record(self) -> dict[str, object]:
        return {"calibration": self.method, "calibration_source": self.source,
                "calibration_images": self.images, "calibration_layer_factors": self.layer_factors}


def filter_statistics(backbone: Backbone, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per layer, a (2, C) tensor: each filter's mean and mean square over ``images`` and positions."""
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for image in images:
            for name, features in backbone.extractor.raw_features(image).items():
                flat = features.float()
                moments = torch.stack([flat.mean(dim=(0, 2, 3)), flat.pow(2).mean(dim=(0, 2, 3))]).cpu()
                totals[name] = totals.get(name, 0) + moments / len(images)
    return totals


def divisors(statistics: torch.Tensor, method: str) -> torch.Tensor:
    """Each filter's divisor from its (mean, mean square), floored for silent filters."""
    factor = statistics[0] if method == "mean_activation" else statistics[1].sqrt()
    return factor.clamp_min(max(SILENT_FLOOR * float(factor.mean()), 1e-12))


def _cache_file(backbone: Backbone) -> Path:
    """One file per network: the statistics depend on the weights (or the seed) and the pooling."""
    identity = f"{backbone.name}|{backbone.weights_sha256 or backbone.notes}|{backbone.extractor.pooling}"
    digest = hashlib.sha256(f"{identity}|{CALIBRATION_SIZE}|{CACHE_FORMAT}".encode()).hexdigest()[:16]
    return cache_dir("calibration", f"{backbone.name}-{digest}.pt")


def _sample_statistics(backbone: Backbone, layers: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Filter statistics over the sample images, cached per network; NSTError without the images."""
    path = _cache_file(backbone)
    cached: dict[str, torch.Tensor] = {}
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
            log.warning("recomputing the calibration: %s is unreadable (%s)", path, exc)
    names = sorted(ASSETS)
    if not all(layer in cached and cached[layer].dim() == 2 for layer in layers):
        device = backbone.extractor.preprocess.mean.device
        images = [load_tensor(resolve_image(name, "calibration image"), CALIBRATION_SIZE).to(device)
                  for name in names]
        cached.update(filter_statistics(backbone, images))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        torch.save(cached, partial)
        os.replace(partial, path)  # concurrent runs write the same values: the last one wins
    return {layer: cached[layer] for layer in layers}, names


def calibrate(backbone: Backbone, method: str, own_images: Sequence[torch.Tensor],
              own_names: Sequence[str | Path]) -> Calibration:
    """Set the backbone's feature divisors for ``method``; returns what was applied, for the record.

    ``own_images`` (the run's content and styles) stand in, with a warning, when the
    sample images cannot be obtained (offline, no ``$NST_ASSETS_DIR``, no cache).
    """
    if method == "none":
        backbone.extractor.set_scales(None)
        return Calibration("none")
    try:
        statistics, names = _sample_statistics(backbone, list(backbone.extractor.layers))
        source = "sample images"
    except NSTError as exc:
        log.warning("calibrating %s on this run's own images: the sample images are unavailable (%s)",
                    backbone.name, exc)
        statistics, names = filter_statistics(backbone, own_images), [str(n) for n in own_names]
        source = "this run's images"
    scales = {layer: divisors(s, method) for layer, s in statistics.items()}
    backbone.extractor.set_scales(scales)
    return Calibration(method, source, names, {layer: round(float(s.mean()), 4) for layer, s in scales.items()})
