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


def gram_distance(backbone: Backbone, image: torch.Tensor, style: torch.Tensor) -> float:
    """The mean over ``LAYERS`` of ``|G(image) - G(style)|_F / |G(style)|_F`` (Frobenius norms) on
    ``backbone``, which must compute those layers."""
    with torch.no_grad():
        ours = backbone.extractor(image.to(torch.float32))
        theirs = backbone.extractor(style.to(torch.float32))
        distances = [torch.linalg.norm(gram(ours[k]) - gram(theirs[k])) / torch.linalg.norm(gram(theirs[k]))
                     for k in LAYERS]
    return float(torch.stack(distances).mean())


def backbone_for(inputs: Inputs, run_backbone: Backbone) -> Backbone:
    """A backbone computing ``LAYERS`` with the yardstick's pooling and calibration: the run's own when it
    does, else one built once per process for these inputs' network (``nst.engine.reuse``)."""
    extractor = run_backbone.extractor
    if (set(LAYERS) <= set(extractor.layers) and extractor.pooling == POOLING
            and run_backbone.calibration.get("calibration") == CALIBRATION):
        return run_backbone
    key = ("yardstick", inputs.backbone_name, inputs.spec.member.seed, str(inputs.device))
    return reuse.backbones.get(key, lambda: _build(inputs))


def _build(inputs: Inputs) -> Backbone:
    backbone = load_backbone(inputs.backbone_name, LAYERS, POOLING, inputs.device, inputs.spec.member.seed)
    backbone.calibration = calibrate(backbone, CALIBRATION, [inputs.content, *inputs.styles],
                                     [inputs.content_path, *inputs.style_paths]).record()
    return backbone


def measure(inputs: Inputs, run_backbone: Backbone, image: torch.Tensor) -> dict[str, float]:
    """The yardstick of a run's result ``image`` against its (first) style image, by metric name."""
    return {METRIC: gram_distance(backbone_for(inputs, run_backbone), image, inputs.style)}
