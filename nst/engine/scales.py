"""Coarse to fine: the members of a batch optimised at each of ``image.scales`` in turn.

Each scale has its own targets (content and style resized to it) and starts from the
previous scale's result, upsampled; without ``image.scales`` there is one scale,
``image.size``. Evaluations are numbered and timed across scales, so a run has one
continuous history (MLflow shows one curve); records carry their ``scale`` when there
are several.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nst import phases
from nst.engine import cuda_graphs, reuse
from nst.engine.backbones import Backbone
from nst.engine.color import network_images, recombine
from nst.engine.inputs import Inputs
from nst.engine.losses import LossWeights, StyleTransferLoss
from nst.engine.optimization import (
    EvaluationCallback,
    OptimizationResult,
    initial_image,
    optimize_batch,
)
from nst.errors import NonFiniteLossError
from nst.images.files import load_tensor, style_long_side, upsample


def optimize_scales(members: Sequence[Inputs], callbacks: Sequence[Sequence[EvaluationCallback]],
                    backbone: Backbone, weights: LossWeights) -> list[OptimizationResult | BaseException]:
    """Optimise the members of a batch (their inputs share everything but ``MemberSpec``) through their
    scales, coarse to fine, each reporting to its ``callbacks``; per member its result or the error that
    stopped it (a ``NonFiniteLossError`` stops only that member)."""
    first = members[0]
    scales = first.spec.shared.scales
    images: list[torch.Tensor | None] = [None] * len(members)
    merged = [OptimizationResult(image=first.content) for _ in members]
    outcomes: list[OptimizationResult | BaseException | None] = [None] * len(members)
    for step, size in enumerate(scales):
        active = [i for i in range(len(members)) if outcomes[i] is None]
        if not active:
            break
        label = size if len(scales) > 1 else None
        results = _optimize_scale(members, callbacks, backbone, weights, step, size, active, images, merged,
                                  label)
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


def _optimize_scale(members: Sequence[Inputs], callbacks: Sequence[Sequence[EvaluationCallback]],
                    backbone: Backbone, weights: LossWeights, step: int, size: int, active: list[int],
                    images: list[torch.Tensor | None], merged: list[OptimizationResult],
                    label: int | None) -> list[OptimizationResult | BaseException]:
    """One scale for the members still running: targets at this size, each from its start image."""
    first = members[0]
    content, styles = _scale_images(first, size)
    loss = reuse.targets.get((first.spec.batch_key, size), lambda: StyleTransferLoss(
        backbone.extractor, content, styles, content_layers=first.content_layers,
        style_layers=first.style_layers, normalization=first.spec.shared.normalization,
        precision=first.spec.shared.precision, style_blend=first.style_blend, style_masks=first.masks))
    inits = []
    for i in active:
        member = members[i].spec.member
        if images[i] is None:
            inits.append(initial_image(member.init, content, styles[0], member.seed))
        else:
            inits.append(upsample(images[i], content.shape[-2:]))
    selected: dict[tuple[int, ...], LossWeights] = {}  # the weights' rows copied to the device once per set
    shared = first.spec.shared
    capture = shared.cuda_graphs and cuda_graphs.available(content.device, shared.precision)
    # per member: the style layers all off at its last evaluation, revived at its next (not in a captured graph,
    # which replays what it captured); those off at the start image are revived from the first evaluation, so
    # that the optimiser's first gradient, which sets its scale, has their pull in it
    silent: dict[int, set[str]] = {i: set() for i in active}
    if not capture:
        with torch.no_grad():
            start = loss(torch.cat(inits))
        silent = {i: silent_layers(start.scalars(row), loss.silent_terms) for row, i in enumerate(active)}
    phases.lap(phases.TARGETS)

    def member_loss(batch: torch.Tensor, rows: list[int]):
        key = tuple(active[row] for row in rows)
        if key not in selected:
            selected[key] = weights.select(key)
        revive = {layer: torch.tensor([float(layer in silent[i]) for i in key])
                  for layer in loss.style_layers if any(layer in silent[i] for i in key)}
        return loss(batch, selected[key], revive or None)

    def watch(i: int) -> EvaluationCallback:
        return lambda record, _image: silent.__setitem__(i, silent_layers(record, loss.silent_terms))

    results = optimize_batch(
        cuda_graphs.CapturedLoss(member_loss) if capture else member_loss,
        inits, [members[i].spec.member.optimizer for i in active],
        [members[i].spec.member.scale_epochs[step] for i in active],
        [[*(_renumbered(cb, merged[i].evaluations, merged[i].elapsed_s, label) for cb in callbacks[i]),
          *([] if capture else [watch(i)])]
         for i in active],
        progress=first.spec.member.progress, preprocess=backbone.extractor.preprocess)
    phases.lap(phases.OPTIMISATION)
    return results


def silent_layers(record: dict, silent_terms: dict[str, float]) -> set[str]:
    """The style layers whose term in ``record`` is that of an image whose units there are all off: the
    loss revives them at the next evaluation (``StyleTransferLoss.revived``)."""
    return {layer for layer, value in silent_terms.items()
            if value > 0 and abs(record[f"style/{layer}"] - value) <= 1e-6 * value}


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
    merged.stopped = result.stopped  # the last scale's says how the run ended
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
