"""How much of the style a result took, measured the same way whatever the run's own loss.

A run's style loss depends on its own layers, layer weights and beta, so two runs' style losses cannot be
compared. The yardstick can: the distance between the result's and the style image's Gram matrices on a
fixed set of layers (``LAYERS``) of the run's backbone, with fixed pooling (max) and calibration
(``rms_activation``, so that every filter counts the same), each layer's distance relative to the style's
own Gram and the layers averaged without weights. It is logged as ``auto.gram_distance_style`` beside the
image measures of ``nst.images.measures``: 0 when the result's filter correlations are the style's, about 1
when they are as far from them as an image that excites nothing.

It measures texture statistics as the backbone sees them, not where the texture is nor whether the result
looks good; and it is only comparable between runs of the same backbone.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from nst.engine import reuse
from nst.engine.backbones import Backbone
from nst.engine.calibration import calibrate
from nst.engine.inputs import Inputs
from nst.engine.losses import gram
from nst.engine.weights import load_backbone
from nst.images import measures

METRIC = measures.GRAM_DISTANCE.name
LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
POOLING = "max"
CALIBRATION = "rms_activation"


def grams(backbone: Backbone, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The Gram matrices of ``image`` on ``LAYERS`` of ``backbone``, which must compute them."""
    with torch.no_grad():
        features = backbone.extractor(image.to(torch.float32))
        return {k: gram(features[k]) for k in LAYERS}


def gram_distance(backbone: Backbone, image: torch.Tensor, style: Mapping[str, torch.Tensor]) -> float:
    """The mean over ``LAYERS`` of ``|G(image) - G(style)|_F / |G(style)|_F`` (Frobenius norms) on
    ``backbone``, against the style's Grams ``style`` (``grams``)."""
    ours = grams(backbone, image)
    distances = [torch.linalg.norm(ours[k] - style[k]) / torch.linalg.norm(style[k]) for k in LAYERS]
    return float(torch.stack(distances).mean())


def backbone_for(inputs: Inputs, run_backbone: Backbone) -> Backbone:
    """A backbone computing ``LAYERS`` with the yardstick's pooling and calibration: the run's own when it
    does, else one built once per process for these inputs' network (``nst.engine.reuse``)."""
    extractor = run_backbone.extractor
    if (set(LAYERS) <= set(extractor.layers) and extractor.pooling == POOLING
            and run_backbone.calibration.get("calibration") == CALIBRATION):
        return run_backbone
    key = (inputs.backbone_name, inputs.spec.member.seed, str(inputs.device))
    return reuse.yardstick_backbones.get(key, lambda: _build(inputs))


def _build(inputs: Inputs) -> Backbone:
    backbone = load_backbone(inputs.backbone_name, LAYERS, POOLING, inputs.device, inputs.spec.member.seed)
    backbone.calibration = calibrate(backbone, CALIBRATION, [inputs.content, *inputs.styles],
                                     [inputs.content_path, *inputs.style_paths]).record()
    return backbone


def measure(inputs: Inputs, run_backbone: Backbone, image: torch.Tensor) -> dict[str, float]:
    """The yardstick of a run's result ``image`` against its (first) style image, by metric name; the style's
    Grams are computed once for the runs of a process that share the style and the backbone."""
    backbone = backbone_for(inputs, run_backbone)
    key = (backbone.extractor, str(inputs.style_path), tuple(inputs.style.shape))  # the extractor itself
    style = reuse.yardstick_grams.get(key, lambda: grams(backbone, inputs.style))
    return {METRIC: gram_distance(backbone, image, style)}
