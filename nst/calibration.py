"""Feature calibration: every backbone's features on the scale the seed's weights were tuned for.

Gatys et al. (2016) optimised through a *normalised* VGG-19: "we normalized the
network by scaling the weights such that the mean activation of each
convolutional filter over images and positions is equal to one". Their PyTorch
code (the seed's source of alpha = 1, beta = 1e-2 ... 1e4 and the 1e3/n^2 layer
weights) loads that normalised network. A ratio alpha/beta therefore only means
what the seed says on features whose filters average one.

Unnormalised backbones are far off that scale, and differently for each layer:
the HED VGG-16 (Caffe input, 0-255) averages 17.5 at conv1_1 and 1.2 at conv5_1
over the sample images. Since a Gram matrix is quadratic in the features, its
loss grows with the fourth power of the scale and the content loss with the
second, so on raw HED features the seed's whole beta grid sat above the
photo-to-texture transition (measured, tubingen + starry_night, 160 px: SSIM to
the content 0.49-0.51 for every beta). Divided by each filter's mean activation,
the same grid spans the trade-off (SSIM 0.99 at beta = 1e-2 down to 0.67 at 1e4
after 88 evaluations; README, Reproducing the ratio experiment).

``mean_activation`` (the default) divides each filter's activations by its mean
over the calibration images, which is the normalised network's output for the
losses (the forward pass itself is unchanged: a ReLU network scaled filter by
filter computes the same function up to those factors). The images are nst's
sample images (``nst.assets``), so the factors are fixed per backbone and
cached; where they cannot be had the run's own content and style images are
used, and the run records which. ``none`` keeps the raw features.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nst.assets import ASSETS, resolve_image
from nst.backbones import Backbone
from nst.downloads import cache_dir
from nst.errors import NSTError
from nst.images import load_tensor

log = logging.getLogger(__name__)

CALIBRATIONS = ("mean_activation", "none")
# long side of the calibration images: the means move by a few per cent between 128 and 256 px,
# and 128 px keeps the one-off cost of a backbone below a second on 2 CPU cores
CALIBRATION_SIZE = 128
# a filter silent on every calibration image would get an unbounded factor: floor its mean
# at this fraction of its layer's mean
SILENT_FLOOR = 1e-2


@dataclass
class Calibration:
    """The factors applied to one run's features, and where they came from (for the record)."""

    method: str
    source: str = ""  # "sample images" or "this run's images"
    images: list[str] = field(default_factory=list)
    layer_means: dict[str, float] = field(default_factory=dict)  # mean over filters, before division

    def record(self) -> dict[str, object]:
        return {"calibration": self.method, "calibration_source": self.source,
                "calibration_images": self.images, "calibration_layer_means": self.layer_means}


def channel_means(backbone: Backbone, images: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer's mean activation per filter over ``images`` and their positions."""
    totals: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for image in images:
            for name, features in backbone.extractor.raw_features(image).items():
                mean = features.float().mean(dim=(0, 2, 3)).cpu() if os.environ.get("NST_CAL_STAT") != "rms" else features.float().pow(2).mean(dim=(0, 2, 3)).cpu()
                totals[name] = totals.get(name, 0) + mean / len(images)
    return totals


def _identity(backbone: Backbone) -> str:
    """What the means depend on: the weights (or the random seed), the pooling, the layers."""
    extractor = backbone.extractor
    key = os.environ.get("NST_CAL_STAT", "") + f"{backbone.name}|{backbone.weights_sha256 or backbone.notes}|{extractor.pooling}|{CALIBRATION_SIZE}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _sample_means(backbone: Backbone, layers: list[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Per-filter means over the sample images, cached per backbone; raises NSTError without them."""
    path = cache_dir("calibration", f"{backbone.name}-{_identity(backbone)}.pt")
    cached: dict[str, torch.Tensor] = {}
    if path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
            log.warning("recomputing the calibration: %s is unreadable (%s)", path, exc)
    names = sorted(ASSETS)
    if not all(layer in cached for layer in layers):
        device = next(backbone.extractor.buffers()).device
        images = [load_tensor(resolve_image(name, "calibration image"), CALIBRATION_SIZE).to(device)
                  for name in names]
        cached.update(channel_means(backbone, images))
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.part")
        torch.save(cached, partial)
        os.replace(partial, path)  # a concurrent run writes the same values: last one wins
    return {layer: cached[layer] for layer in layers}, names


def calibrate(backbone: Backbone, method: str, fallback_images: Sequence[torch.Tensor],
              fallback_names: Sequence[str | Path]) -> Calibration:
    """Set the backbone's feature factors for ``method``; returns what was applied, for the record.

    ``fallback_images`` (the run's content and styles) are used when the sample
    images cannot be obtained (offline, no ``$NST_ASSETS_DIR``), with a warning.
    """
    layers = list(backbone.extractor.layers)
    if method == "none":
        backbone.extractor.set_scales(None)
        return Calibration("none")
    try:
        means, names = _sample_means(backbone, layers)
        source = "sample images"
    except NSTError as exc:
        log.warning("calibrating %s on this run's own images: the sample images are unavailable (%s)",
                    backbone.name, exc)
        means, names = channel_means(backbone, fallback_images), [str(n) for n in fallback_names]
        source = "this run's images"
    if os.environ.get("NST_CAL_STAT") == "rms":
        means = {k: v.sqrt() for k, v in means.items()}
    scales = {layer: m.clamp_min(SILENT_FLOOR * float(m.mean())) for layer, m in means.items()}
    backbone.extractor.set_scales(scales)
    return Calibration(method, source, names, {layer: round(float(m.mean()), 4) for layer, m in means.items()})
