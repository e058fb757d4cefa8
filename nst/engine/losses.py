"""Content, style (Gram) and total-variation losses of Gatys et al. (2016).

Two normalisations, because an alpha/beta ratio only means something together
with the normalisation it was tuned for:

``reference`` (default) - Gatys' own PyTorch code, which the seed's weights come from:
    G = F F^T / (H W); each layer's loss is the *mean* squared error
    (over C*C Gram entries for style, over C*H*W activations for content).
``paper`` - the equations of the CVPR paper:
    E_l = 1 / (4 N^2 M^2) * sum (G - A)^2 with G = F F^T (N channels, M = H W),
    content = 1/2 * sum (F - P)^2.

Every function keeps the batch dimension (one loss per image) so several
images can be optimised through one network pass (``nst.engine.run.execute_batch``), each
with its own weights (``LossWeights``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

NORMALIZATIONS = ("reference", "paper")
PRECISIONS = ("fp32", "bf16")


def gram(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, C) Gram matrices divided by H*W (the number of positions)."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)


def mask_at(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A (1, 1, H0, W0) mask averaged down (or stretched) to a layer's ``height`` x ``width``."""
    if mask.shape[-2:] == (height, width):
        return mask
    return torch.nn.functional.adaptive_avg_pool2d(mask, (height, width))


def guided_gram(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gram matrices of the features inside ``mask`` (1, 1, H0, W0 in [0, 1], resized to the layer).

    Each position is weighted by the mask and the sum divided by the mask's
    weight instead of H*W, so an all-ones mask gives ``gram`` exactly and the
    statistics describe the masked region alone (Gatys et al. 2017, spatial control).
    """
    b, c, h, w = features.shape
    weights = mask_at(mask.to(features), h, w)
    flat = (features * weights).reshape(b, c, h * w)
    area = weights.pow(2).sum().clamp_min(1e-8)
    return torch.bmm(flat, flat.transpose(1, 2)) / area


def style_layer_loss(g: torch.Tensor, a: torch.Tensor, normalization: str) -> torch.Tensor:
    """Per-image style loss of one layer from H*W-normalised Grams ``g`` (B, C, C) and target ``a``.

    With ``g = F F^T / M`` the paper's ``1/(4 N^2 M^2) sum (F F^T - A)^2`` is ``sum (g - a)^2 / (4 N^2)``.
    """
    squared = (g - a).pow(2).flatten(1)
    if normalization == "reference":
        return squared.mean(1)
    if normalization == "paper":
        n = g.shape[-1]
        return squared.sum(1) / (4.0 * n * n)
    raise ValueError(f"unknown normalization {normalization!r}")


def content_layer_loss(f: torch.Tensor, p: torch.Tensor, normalization: str) -> torch.Tensor:
    """Per-image content loss of one layer between features ``f`` and target ``p``."""
    squared = (f - p).pow(2).flatten(1)
    if normalization == "reference":
        return squared.mean(1)
    if normalization == "paper":
        return 0.5 * squared.sum(1)
    raise ValueError(f"unknown normalization {normalization!r}")


def total_variation(image: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared difference of neighbouring pixels (both directions), in [0, 1] RGB."""
    dy = (image[:, :, 1:, :] - image[:, :, :-1, :]).pow(2).flatten(1).mean(1)
    dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).pow(2).flatten(1).mean(1)
    return dx + dy


def paper_style_layer_weights(channels: Sequence[int]) -> list[float]:
    """Gatys' per-layer style weights, 1e3 / n^2 for a layer of n channels."""
    return [1e3 / (n * n) for n in channels]


def _fp32(value: torch.Tensor) -> torch.Tensor:
    return value.float() if value.dtype in (torch.bfloat16, torch.float16) else value


@dataclass
class LossTerms:
    """One evaluation's losses; each tensor has one entry per image in the batch."""

    total: torch.Tensor
    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor
    content_layers: dict[str, torch.Tensor]
    style_layers: dict[str, torch.Tensor]
    style_images: dict[str, torch.Tensor] = field(default_factory=dict)  # per style image, when several
    # what the optimiser minimises, when it is not ``total`` (a silent style layer revived)
    objective: torch.Tensor | None = None

    def scalars(self, index: int = 0) -> dict[str, float]:
        """Plain floats for logging: total, content, style, tv, content/<layer>, style/<layer>, style_image/<i>."""
        values = {"total": self.total[index], "content": self.content[index],
                  "style": self.style[index], "tv": self.tv[index]}
        values.update({f"content/{k}": v[index] for k, v in self.content_layers.items()})
        values.update({f"style/{k}": v[index] for k, v in self.style_layers.items()})
        values.update({f"style_image/{k}": v[index] for k, v in self.style_images.items()})
        stacked = torch.stack([v.detach().float() for v in values.values()]).cpu().tolist()
        return dict(zip(values, stacked, strict=True))


@dataclass
class LossWeights:
    """alpha, beta, the TV weight and the per-layer weights, one entry per image of a batch.

    Lets the members of a batched sweep differ in their weights while sharing
    one network pass and one set of targets.
    """

    content: torch.Tensor
    style: torch.Tensor
    tv: torch.Tensor
    content_layers: dict[str, torch.Tensor] = field(default_factory=dict)
    style_layers: dict[str, torch.Tensor] = field(default_factory=dict)
    has_tv: bool = True  # known on the host: testing ``tv != 0`` on a GPU would wait for it every evaluation

    @classmethod
    def stack(cls, members: Sequence[Mapping], device: torch.device | str = "cpu") -> LossWeights:
        """From one mapping per member with keys content, style, tv, content_layers, style_layers."""
        def column(values):
            return torch.tensor([float(v) for v in values], dtype=torch.float32, device=device)

        return cls(column(m["content"] for m in members), column(m["style"] for m in members),
                   column(m["tv"] for m in members),
                   {k: column(m["content_layers"][k] for m in members) for k in members[0]["content_layers"]},
                   {k: column(m["style_layers"][k] for m in members) for k in members[0]["style_layers"]},
                   has_tv=any(float(m["tv"]) != 0 for m in members))

    def select(self, index: Sequence[int]) -> LossWeights:
        """The weights of the members at ``index`` (the ones in the current batch)."""
        i = torch.as_tensor(list(index), device=self.content.device)
        return LossWeights(self.content[i], self.style[i], self.tv[i],
                           {k: v[i] for k, v in self.content_layers.items()},
                           {k: v[i] for k, v in self.style_layers.items()}, has_tv=self.has_tv)


class StyleTransferLoss(nn.Module):
    """alpha * content + beta * style + tv_weight * TV against fixed content and style targets.

    The targets (content features, style Grams) are computed once here, in fp32,
    so each evaluation costs one forward and one backward pass of the truncated
    network. ``precision="bf16"`` runs the network under bfloat16 autocast (faster
    where the CPU or GPU computes bf16 in hardware) while Grams and losses stay in
    fp32. Per-layer values are reported unweighted; the totals include the layer
    weights.
    """

    def __init__(self, extractor: nn.Module, content_image: torch.Tensor,
                 style_image: torch.Tensor | Sequence[torch.Tensor], *,
                 content_layers: Mapping[str, float], style_layers: Mapping[str, float],
                 content_weight: float = 1.0, style_weight: float = 1.0, tv_weight: float = 0.0,
                 normalization: str = "reference", precision: str = "fp32",
                 style_blend: Sequence[float] | None = None,
                 style_masks: Sequence[torch.Tensor | None] | None = None):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}")
        self.extractor = extractor
        self.content_layers = dict(content_layers)
        self.style_layers = dict(style_layers)
        self.content_weight, self.style_weight, self.tv_weight = content_weight, style_weight, tv_weight
        self.normalization = normalization
        self.precision = precision
        styles = [style_image] if isinstance(style_image, torch.Tensor) else list(style_image)
        # several style images: style = sum_i blend_i * style_i, each against its own Gram targets,
        # each optionally confined to its mask's region of the result (guided Grams)
        self.style_blend = [float(b) for b in style_blend] if style_blend is not None else [1.0 / len(styles)] * len(styles)
        masks = list(style_masks) if style_masks is not None else [None] * len(styles)
        if not (len(styles) == len(self.style_blend) == len(masks)):
            raise ValueError("style_blend and style_masks need one entry per style image")
        with torch.no_grad():
            content_features = extractor(content_image)
            self.content_targets = {k: content_features[k].detach() for k in self.content_layers}
            # each mask at each style layer's resolution (the result has the content's shape), once
            self.style_masks = [None if mask is None else {
                k: mask_at(mask.to(content_features[k]), *content_features[k].shape[-2:]) for k in self.style_layers}
                for mask in masks]
            self.style_targets = []
            for image in styles:
                style_features = extractor(image)
                self.style_targets.append({k: gram(style_features[k]).detach() for k in self.style_layers})
            # each style layer's term when every unit of the image is off there (its Gram is zero)
            self.silent_terms = {k: float(sum(b * style_layer_loss(torch.zeros_like(t[k]), t[k], normalization)
                                              for b, t in zip(self.style_blend, self.style_targets, strict=True)))
                                 for k in self.style_layers}

    def features(self, image: torch.Tensor,
                 pre_activations: dict[str, torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
        """The network's activations, in fp32 (or the image's float64) whatever the compute precision
        (and ``pre_activations``, filled as ``FeatureExtractor.forward`` does)."""
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            features = self.extractor(image, pre_activations) if pre_activations else self.extractor(image)
        if pre_activations:
            pre_activations.update({k: _fp32(v) for k, v in pre_activations.items()})
        return {k: _fp32(v) for k, v in features.items()}

    def forward(self, image: torch.Tensor, weights: LossWeights | None = None,
                revive: Mapping[str, torch.Tensor] | None = None) -> LossTerms:
        """Losses of each image in the batch; ``weights`` (one entry per image) replaces the scalars.

        ``revive`` (a style layer -> 1 for each image whose units there are all off, else 0) makes the
        terms' ``objective`` use ``revived`` for those images; the reported terms stay exact.
        """
        pre = dict.fromkeys(revive) if revive else None
        features = self.features(image, pre)
        batch = image.shape[0]
        zero = image.new_zeros(batch)
        if weights is None:
            weights = LossWeights(
                zero + self.content_weight, zero + self.style_weight, zero + self.tv_weight,
                {k: zero + w for k, w in self.content_layers.items()},
                {k: zero + w for k, w in self.style_layers.items()}, has_tv=self.tv_weight != 0)
        content_terms = {k: content_layer_loss(features[k], t, self.normalization)
                         for k, t in self.content_targets.items()}
        per_image = []
        for targets, masks in zip(self.style_targets, self.style_masks, strict=True):
            per_image.append({k: style_layer_loss(gram(features[k]) if masks is None else guided_gram(features[k], masks[k]),
                                                  t, self.normalization) for k, t in targets.items()})
        if self.style_blend == [1.0]:  # one style image, nothing to blend
            style_terms = per_image[0]
        else:
            style_terms = {k: sum((b * terms[k] for b, terms in zip(self.style_blend, per_image, strict=True)), zero)
                           for k in self.style_layers}
        optimised = dict(style_terms)  # what the optimiser minimises: a silent layer's term revived
        for k, rows in (revive or {}).items():
            optimised[k] = torch.where(rows.to(image.device) > 0, self.revived(pre[k], k), style_terms[k])
        content = sum((weights.content_layers[k] * v for k, v in content_terms.items()), zero)
        style = sum((weights.style_layers[k] * v for k, v in style_terms.items()), zero)
        style_images = {}
        if len(per_image) > 1:
            style_images = {str(i + 1): sum((weights.style_layers[k] * v for k, v in terms.items()), zero)
                            for i, terms in enumerate(per_image)}
        tv = total_variation(image) if weights.has_tv else zero
        total = weights.content * content + weights.style * style + weights.tv * tv
        objective = None
        if revive:
            revived = sum((weights.style_layers[k] * v for k, v in optimised.items()), zero)
            objective = weights.content * content + weights.style * revived + weights.tv * tv
        return LossTerms(total, content, style, tv, content_terms, style_terms, style_images, objective)

    def revived(self, pre: torch.Tensor, layer: str) -> torch.Tensor:
        """The layer's style term on smooth stand-ins for its units, what the optimiser sees while every unit
        there is off: the Gram of units that are all off is zero, and so is the ReLU's gradient, so nothing
        would turn them on. A filter's stand-in is ``tau * softplus((input - its highest input) / tau)``:
        positive and rising with the unit's input, its most active unit at ``tau * ln 2`` however far below
        zero the filter's inputs lie, with ``tau`` half the target's RMS activation of that filter, so as not
        to overshoot the target's Gram."""
        shifted = pre - pre.amax(dim=(-2, -1), keepdim=True).detach()
        terms = []
        for targets, masks in zip(self.style_targets, self.style_masks, strict=True):
            tau = 0.5 * targets[layer].diagonal(dim1=-2, dim2=-1).clamp_min(1e-12).sqrt().view(1, -1, 1, 1)
            soft = tau * torch.nn.functional.softplus(shifted / tau)
            terms.append(style_layer_loss(gram(soft) if masks is None else guided_gram(soft, masks[layer]),
                                          targets[layer], self.normalization))
        return sum(b * term for b, term in zip(self.style_blend, terms, strict=True))
