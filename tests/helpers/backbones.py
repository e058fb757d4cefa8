"""Backbones doctored for a test."""

from __future__ import annotations

import torch

from nst.engine.backbones import Backbone, layer_table


def switch_off(backbone: Backbone, layer: str, image: torch.Tensor) -> None:
    """Every unit of ``layer`` off on ``image`` (so no gradient reaches it through its ReLU), in place: each
    filter's bias lowered below its highest input there, the conv's weights then scaled up (x30) so that
    the image's inputs lie far below zero."""
    extractor = backbone.extractor
    conv = extractor.features[layer_table(backbone.spec.arch)[layer].index - 1]
    with torch.no_grad():
        seen = {layer: None}
        extractor.raw_features(image, seen)
        conv.bias -= seen[layer].amax(dim=(0, 2, 3)) + 1e-3
        conv.weight *= 30
        conv.bias *= 30
        assert extractor.raw_features(image)[layer].max() == 0
