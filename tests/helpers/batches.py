"""Batched losses: one network pass for several images, each with its own weights."""

from __future__ import annotations

import torch

from nst.engine.losses import LossWeights, StyleTransferLoss
from nst.engine.weights import load_backbone
from tests.helpers.overrides import STYLE_LAYERS


def batch_problem():
    """(backbone, content, loss): the random backbone (seed 0), 32 px random images, the paper's layers."""
    torch.manual_seed(0)
    backbone = load_backbone("random", ["conv4_2", *STYLE_LAYERS])
    content, style = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    loss = StyleTransferLoss(backbone.extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers=dict.fromkeys(STYLE_LAYERS, 1.0))
    return backbone, content, loss


def weights_for(betas, tv=None) -> LossWeights:
    """Each member's loss weights: style weight ``betas[i]``, TV weight ``tv[i]`` (0 by default)."""
    tv = tv or [0.0] * len(betas)
    return LossWeights.stack([{"content": 1.0, "style": b, "tv": t, "content_layers": {"conv4_2": 1.0},
                               "style_layers": dict.fromkeys(STYLE_LAYERS, 1.0)}
                              for b, t in zip(betas, tv, strict=True)])
