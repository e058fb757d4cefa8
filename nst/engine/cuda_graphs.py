"""One evaluation (the loss's forward and backward) replayed from a CUDA graph instead of launched op by op.

On a fast GPU a VGG pass at 512 px is bound by kernel launches, not arithmetic, which a replayed
graph avoids. ``CapturedLoss`` wraps the engine's ``loss_fn(images,
members)`` with ``torch.cuda.make_graphed_callables`` (torch's own capture of a forward and
its backward, with autograd kept: the optimiser's ``backward()`` replays the backward graph),
one graph per batch shape and set of members, built the first time that batch is evaluated.

What capture needs, and where it falls back to the eager call:
- CUDA and fp32: the bf16 path runs under autocast, whose weight cache must be off inside a
  graph (``available`` says no, the eager call is used);
- no host read inside the loss (none in ``StyleTransferLoss``: tested by capturing it) and
  tensors the graph reads made before capture: ``select`` (the members' weights, an index
  copied from the host) is cached per set of members and first called during torch's warm-up
  iterations, outside the capture;
- fixed shapes: a coarse-to-fine schedule builds a new loss per scale, hence new graphs; a
  batch whose members finish one by one gets a graph per remaining set (at most one per
  member, each a few hundred ms to capture), and sets seen only once stay eager (``REPEATS``).
A capture that fails for any other reason is logged once and that batch stays eager.

``model.cuda_graphs`` is off by default: a capture costs more than a short run saves
(docs/pages/performance.md, the H200 measurements).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence

import torch

from nst.engine.losses import LossTerms

log = logging.getLogger(__name__)
# torch 2.11+ can confine capture's checks to the capturing thread ("thread_local"): the run's writer
# and video threads may run while the coordinator captures (a batch's members are greenlets on its thread)
_PARAMETERS = inspect.signature(torch.cuda.make_graphed_callables).parameters

# a batch (shape and members) is captured the second time it is evaluated: a set of members seen
# once (the tail of a batched sweep, a final evaluation) is not worth a capture (hundreds of ms)
REPEATS = 2


def available(device: torch.device, precision: str) -> bool:
    """Whether evaluations on ``device`` at ``precision`` can be replayed from CUDA graphs."""
    return device.type == "cuda" and precision == "fp32" and torch.cuda.is_available()


def flatten(terms: LossTerms) -> tuple[tuple[torch.Tensor, ...], tuple]:
    """The terms as a flat tuple of tensors (``total`` first, the only one the backward needs) and the
    layout ``unflatten`` rebuilds them from."""
    groups = (terms.content_layers, terms.style_layers, terms.style_images)
    layout = tuple(tuple(group) for group in groups)
    tensors = (terms.total, terms.content.detach(), terms.style.detach(), terms.tv.detach(),
               *(v.detach() for group in groups for v in group.values()))
    return tensors, layout


def unflatten(tensors: Sequence[torch.Tensor], layout: tuple) -> LossTerms:
    total, content, style, tv, *rest = tensors
    groups, start = [], 0
    for names in layout:
        groups.append(dict(zip(names, rest[start:start + len(names)], strict=True)))
        start += len(names)
    return LossTerms(total, content, style, tv, *groups)


class CapturedLoss:
    """``loss_fn(images, members) -> LossTerms`` evaluated from CUDA graphs where they can be captured."""

    def __init__(self, loss_fn: Callable[[torch.Tensor, list[int]], LossTerms]):
        self.loss_fn = loss_fn
        self.graphs: dict[tuple, tuple[Callable, tuple] | None] = {}  # None: capture failed, eager
        self.seen: dict[tuple, int] = {}

    def __call__(self, images: torch.Tensor, members: list[int]) -> LossTerms:
        key = (tuple(images.shape), tuple(members))
        self.seen[key] = self.seen.get(key, 0) + 1
        if key not in self.graphs and self.seen[key] >= REPEATS:
            self.graphs[key] = self._capture(images, list(members))
        captured = self.graphs.get(key)
        if captured is None:
            return self.loss_fn(images, members)
        graphed, layout = captured
        return unflatten(graphed(images), layout)

    def _capture(self, images: torch.Tensor, members: list[int]):
        layout: list[tuple] = []

        def flat(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
            tensors, shape = flatten(self.loss_fn(batch, members))
            layout[:] = [shape]
            return tensors

        sample = images.detach().clone().requires_grad_(images.requires_grad)
        options = {"capture_error_mode": "thread_local"} if "capture_error_mode" in _PARAMETERS else {}
        try:
            graphed = torch.cuda.make_graphed_callables(flat, (sample,), **options)
        except Exception as exc:  # noqa: BLE001 - any op that cannot be captured: stay eager, say so once
            log.warning("evaluations of batch %s stay eager: CUDA graph capture failed (%s)", tuple(images.shape), exc)
            torch.cuda.synchronize()
            return None
        # the replayed backward hands its gradient to the variable's AccumulateGrad node, made on the
        # default stream by the first (eager) evaluations; torch warns of the stream change on every
        # run, which changes no value (the eager and replayed runs' losses agree: tests/test_graphs.py)
        if hasattr(torch.autograd.graph, "set_warn_on_accumulate_grad_stream_mismatch"):
            torch.autograd.graph.set_warn_on_accumulate_grad_stream_mismatch(False)
        return graphed, layout[0]
