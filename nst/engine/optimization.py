"""The optimisation loop: change the pixels of one image (or of each image of a batch) until the loss is low.

As in Gatys et al., the network is fixed and the image is the parameter. Pixels
are *not* clamped inside the closure (clamping there makes L-BFGS's curvature
estimates wrong); the saved image is clamped instead.

Which coordinates the optimiser moves in matters for L-BFGS, whose first step is
``lr / |g|_1``: ``space="input"`` (L-BFGS's default, as in Gatys' and jcjohnson's
code) optimises the backbone's input, where the seed's settings behave; ``space="pixel"``
(Adam's default: its step is ``lr`` per pixel whatever the gradient's scale) the
[0, 1] RGB image. Losses and records always see RGB. Why L-BFGS stalls in pixel space
and why the strong-Wolfe line search is the default: docs/pages/decisions.md.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import greenlet
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nst.engine.color import match_histogram
from nst.engine.lbfgs import LBFGS, CompactLBFGS
from nst.engine.losses import LossTerms
from nst.errors import NonFiniteLossError

INIT_MODES = ("content", "recolored_content", "noise", "style")
OPTIMIZERS = ("lbfgs", "adam")
SPACES = ("input", "pixel")
# evaluations an L-BFGS step keeps for its line search beyond one per iteration (see evaluation_budget)
LINE_SEARCH_ROOM = 5

# Called after every function evaluation with the evaluation's record and the best image evaluated so
# far (the lowest total loss: never a line-search trial worse than it; see ``_Trajectory``).
EvaluationCallback = Callable[[dict, torch.Tensor], None]


def initial_image(mode: str, content: torch.Tensor, style: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The starting image: a copy of the content, the content recoloured, seeded white noise, or the style.

    ``recolored_content`` is the content with the style's colour mean and covariance
    (``nst.engine.color.match_histogram``, PCA map, clamped to [0, 1]): the photo's layout in
    the painting's palette, which the style's Gram matrices ask for anyway, so a given loss
    comes in fewer evaluations (docs/pages/performance.md). Not the default: it changes the picture.
    """
    if mode == "content":
        return content.detach().clone()
    if mode == "recolored_content":
        # 3x3 statistics in float64 on the CPU (MPS has no float64), for one pass over the pixels
        recolored = match_histogram(content.detach().cpu(), style.detach().cpu(), "pca")
        return recolored.clamp(0, 1).to(content.device)
    if mode == "noise":
        generator = torch.Generator().manual_seed(int(seed))
        return torch.rand(content.shape, generator=generator).to(content.device, content.dtype)
    if mode == "style":
        return F.interpolate(style.detach(), size=content.shape[-2:], mode="bilinear",
                             align_corners=False, antialias=True).clamp(0, 1)
    raise ValueError(f"unknown init mode {mode!r}")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class OptimizerSettings:
    """``max_iter`` is the number of L-BFGS iterations (or Adam steps) in one epoch."""

    name: str = "lbfgs"
    lr: float = 1.0
    max_iter: int = 20
    history_size: int = 100
    max_eval: int | None = None  # L-BFGS evaluations per step; None: torch's 1.25 * max_iter
    tolerance_grad: float = 1e-7  # L-BFGS's own early stop within a step, on the normalised loss
    tolerance_change: float = 1e-9
    # converged: the best loss fell by less than this fraction over the last ``convergence_window``
    # evaluations (checked after each L-BFGS step or Adam step); None: always the whole budget
    convergence_tolerance: float | None = 1e-2
    convergence_window: int = 50
    betas: tuple[float, float] = (0.9, 0.999)
    space: str = "input"  # "input": the backbone's input coordinates; "pixel": RGB in [0, 1]
    line_search: str | None = "strong_wolfe"  # L-BFGS: "strong_wolfe", or None (fixed step lr, as Gatys)

    @property
    def evaluation_budget(self) -> int:
        """Most evaluations in one L-BFGS step: ``max_eval``, else torch's 1.25 x ``max_iter``, but
        never fewer than ``max_iter + LINE_SEARCH_ROOM``.

        torch's default leaves the strong-Wolfe search of ``max_iter=1`` no trial at all, so a run
        read as "200 epochs of one iteration" would never move; for ``max_iter >= 20`` the floor
        changes nothing.
        """
        if self.max_eval is not None:
            return self.max_eval
        return max(self.max_iter * 5 // 4, self.max_iter + LINE_SEARCH_ROOM)

    def planned_evaluations(self, epochs: int) -> int:
        """The most evaluations ``epochs`` epochs can take (the progress bar's total): every L-BFGS step's
        budget, or one per Adam step, and the final evaluation at the kept image. L-BFGS often stops early."""
        per_epoch = self.evaluation_budget if self.name == "lbfgs" else self.max_iter
        return epochs * per_epoch + 1

    def build(self, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        if self.name == "lbfgs":
            # on a GPU the two-loop recursion's per-pair read-backs cost more than the network pass
            lbfgs = LBFGS if params[0].device.type == "cpu" else CompactLBFGS
            return lbfgs(params, lr=self.lr, max_iter=self.max_iter, max_eval=self.evaluation_budget,
                         history_size=self.history_size, tolerance_grad=self.tolerance_grad,
                         tolerance_change=self.tolerance_change, line_search_fn=self.line_search)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=tuple(self.betas))
        raise ValueError(f"unknown optimizer {self.name!r}")


CONVERGED, BUDGET = "converged", "budget"  # why an optimisation stopped


@dataclass
class OptimizationResult:
    image: torch.Tensor  # the optimiser's last accepted image, unclamped
    history: list[dict] = field(default_factory=list)  # one record per function evaluation; the last is at ``image``
    elapsed_s: float = 0.0
    stopped: str = BUDGET  # CONVERGED (by ``OptimizerSettings.convergence_tolerance``) or BUDGET (every epoch ran)

    @property
    def evaluations(self) -> int:
        return len(self.history)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


class _Aborted(Exception):
    """Raised inside a member's closure to unwind its optimiser when the batch stops it."""


class _Trajectory:
    """One member's path through its optimiser: its variable, optimiser, record, and closure state.

    Its optimiser runs unchanged (``torch.optim.LBFGS`` with its own history and
    line search, or Adam) in a greenlet of its own: the closure computes nothing
    itself but switches back to the coordinator, which evaluates every waiting
    member in one batched pass, writes each gradient back and switches into each
    member again. Greenlets, not threads: one OS thread runs everything and members
    take turns only where their closure asks for an evaluation, so a batch needs no
    locks and its evaluations are all on one thread (and one CUDA stream).

    Not every evaluation is at a point the optimiser keeps (a strong-Wolfe line search
    may reject its last trial), so the member's image is ``accepted``, the variable as
    each ``optimizer.step`` leaves it, and the run ends with one more evaluation there:
    the last record holds the losses of the saved image. The callbacks see ``best``, the
    lowest-loss image evaluated so far, since ``accepted`` changes once per L-BFGS step
    (an epoch) and a rejected trial is never the best.
    """

    def __init__(self, index: int, init: torch.Tensor, settings: OptimizerSettings, epochs: int,
                 callbacks: Sequence[EvaluationCallback], preprocess: nn.Module | None):
        self.index, self.settings, self.epochs, self.callbacks = index, settings, epochs, callbacks
        if settings.space == "input" and preprocess is not None:
            self.encode, self.decode = preprocess, preprocess.inverse
        else:
            self.encode = self.decode = _identity
        with torch.no_grad():
            self.variable = self.encode(init.detach()).clone().requires_grad_(True)
        self.optimizer = settings.build([self.variable])
        self.accepted = init.detach().clone()  # the optimiser's latest accepted iterate, RGB
        self.best, self.best_total = self.accepted, math.inf  # the lowest-loss image evaluated so far, RGB
        self.lowest: list[float] = []  # the lowest total loss up to each evaluation
        self.result = OptimizationResult(image=self.accepted)
        self.scale: torch.Tensor | None = None  # set by _normalise at the first evaluation
        self.epoch = 0
        self.state = "running"  # running | waiting (for an evaluation) | done
        self.stop = False
        self.loss: torch.Tensor | None = None
        self.error: BaseException | None = None

    def steps(self, closure: Callable[[], torch.Tensor]) -> None:
        """The member's whole optimisation: ``epochs`` L-BFGS steps, or epochs x max_iter Adam steps, or
        fewer once it has converged."""
        for epoch in range(self.epochs):
            self.epoch = epoch
            for _ in range(1 if self.settings.name == "lbfgs" else self.settings.max_iter):
                self.optimizer.step(closure)
                self.accept()
                if self.converged():
                    break
            if self.converged():
                self.result.stopped = CONVERGED
                break
        closure()  # the kept image's losses, reported with it: the last record is always the result's
        self.result.image = self.accepted

    def converged(self) -> bool:
        """Over the last ``convergence_window`` evaluations the lowest loss fell by less than
        ``convergence_tolerance`` of its value, and by less than that share of all it has fallen since
        the start (so a slow start is not taken for the end); relative, so the same for every scale of loss."""
        tolerance, window = self.settings.convergence_tolerance, self.settings.convergence_window
        if tolerance is None or len(self.lowest) <= window:
            return False
        recent = self.lowest[-window - 1] - self.lowest[-1]
        return recent <= tolerance * abs(self.lowest[-1]) and recent <= tolerance * (self.lowest[0] - self.lowest[-1])

    def accept(self) -> None:
        """The variable as the optimiser's step left it is the member's image from now on."""
        with torch.no_grad():
            self.accepted = self.decode(self.variable).detach().clone()

    def run(self) -> None:
        """The body of the member's greenlet; an interrupt (BaseException) propagates to the coordinator."""
        try:
            self.steps(self._closure)
        except _Aborted:
            pass
        except Exception as exc:  # noqa: BLE001 - reported by the coordinator
            self.error = exc
        finally:
            self.state = "done"

    def _closure(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        if self.stop:
            raise _Aborted
        self.state = "waiting"
        _switch(greenlet.getcurrent().parent)  # to the coordinator, back once evaluated
        if self.stop:
            raise _Aborted
        return self.loss


def optimize_batch(loss_fn: Callable[[torch.Tensor, list[int]], LossTerms], inits: Sequence[torch.Tensor],
                   settings: Sequence[OptimizerSettings], epochs: Sequence[int],
                   callbacks: Sequence[Sequence[EvaluationCallback]] | None = None, progress: bool = True,
                   preprocess: nn.Module | None = None) -> list[OptimizationResult | BaseException]:
    """Optimise several images as one batch, each along its own independent trajectory.

    ``loss_fn(images, members)`` evaluates a (B, 3, H, W) batch whose rows are the
    members at the given indices (so it can pick their weights). Each member keeps
    its own optimiser state: L-BFGS history and line search, Adam moments, lr,
    epochs. The members waiting for an evaluation are evaluated together; one that
    finishes early simply leaves the batch. Returns, per member, its result or the
    exception that stopped it (a ``NonFiniteLossError`` stops only that member).
    """
    trajectories = [_Trajectory(i, init, s, e, cbs, preprocess) for i, (init, s, e, cbs) in enumerate(
        zip(inits, settings, epochs, callbacks or [()] * len(inits), strict=True))]
    start = time.perf_counter()
    # one bar over every trajectory's evaluations: its total is their planned budget (L-BFGS may stop early)
    bar = tqdm(total=sum(s.planned_evaluations(e) for s, e in zip(settings, epochs, strict=True)), desc="nst",
               unit="eval", disable=not progress, dynamic_ncols=True)
    turns = [greenlet.greenlet(m.run) for m in trajectories]  # children of this (the coordinating) greenlet
    try:
        while True:
            for trajectory, turn in zip(trajectories, turns, strict=True):
                if trajectory.state == "running":
                    _switch(turn)  # back when the trajectory waits for an evaluation or is done
            waiting = [m for m in trajectories if m.state == "waiting"]
            if not waiting:
                break
            with torch.enable_grad():
                _evaluate(loss_fn, waiting, start, bar)
            for m in waiting:
                m.state = "running"
    finally:
        for trajectory, turn in zip(trajectories, turns, strict=True):  # normally all done; after an interrupt, unwind
            if not turn.dead:
                trajectory.stop = True
                _switch(turn)
        _close(bar)
    elapsed = time.perf_counter() - start
    outcomes: list[OptimizationResult | BaseException] = []
    for m in trajectories:
        m.result.elapsed_s = elapsed
        outcomes.append(m.error if m.error is not None else m.result)
    return outcomes


def _switch(to: greenlet.greenlet) -> None:
    """Run ``to`` until it switches back, keeping this greenlet's grad mode (a thread's state, which
    greenlets share: a member suspended inside ``optimizer.step`` is in ``no_grad``)."""
    grad_mode = torch.is_grad_enabled()
    to.switch()
    torch.set_grad_enabled(grad_mode)


def _close(bar: tqdm) -> None:
    """An optimisation that took fewer evaluations than planned ends its bar full, not at 40 %."""
    if not bar.disable and bar.n < bar.total:
        bar.total = bar.n
        bar.refresh()
    bar.close()


def _normalise(m: _Trajectory) -> torch.Tensor | float:
    """For L-BFGS, divide the member's gradient (its variable's) by its largest element at the member's
    first evaluation, and return that divisor for its loss: what L-BFGS sees is then the same whatever the
    loss's overall scale (an alpha and beta both 1e4 times larger take the same path), its first step
    (``lr / |g|_1``) moves the image by ``lr`` in L1 at every scale, and its tolerances are relative to
    the first gradient. A first gradient that is zero or not finite leaves the loss as it is. Adam's step
    does not depend on the gradient's scale already: its loss and gradient are left as they are."""
    grad = m.variable.grad
    if m.settings.name != "lbfgs":
        return 1.0
    if m.scale is None:
        norm = grad.abs().amax() if grad is not None else torch.ones(())
        m.scale = torch.where(torch.isfinite(norm) & (norm > 0), norm, torch.ones_like(norm))
    if grad is not None:
        grad.div_(m.scale)
    return m.scale


def _evaluate(loss_fn, waiting: list[_Trajectory], start: float, bar: tqdm | None = None) -> None:
    """One batched forward and backward for the waiting members; records, callbacks, gradients."""
    images = [m.decode(m.variable) for m in waiting]
    terms = loss_fn(torch.cat(images), [m.index for m in waiting])
    objective = terms.total if terms.objective is None else terms.objective
    # the rows whose loss is finite (a member whose loss is not stops below): a mask, not a read-back
    torch.where(torch.isfinite(objective.detach()), objective, 0.0).sum().backward()
    for row, m in enumerate(waiting):
        values = terms.scalars(row)
        evaluation = m.result.evaluations + 1
        if not all(math.isfinite(v) for v in values.values()):
            bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
            m.error = NonFiniteLossError(
                f"the loss became non-finite at evaluation {evaluation} (epoch {m.epoch + 1}): "
                f"{bad}. Lower optimizer.lr or the loss weights; the last accepted image is kept.",
                last_finite_image=m.accepted, evaluation=evaluation, history=m.result.history)
            m.stop = True
            continue
        record = {"evaluation": evaluation, "epoch": m.epoch + 1, **values,
                  "elapsed_s": time.perf_counter() - start}
        m.result.history.append(record)
        m.lowest.append(min(record["total"], m.lowest[-1]) if m.lowest else record["total"])
        m.loss = objective[row].detach() / _normalise(m)
        if m.callbacks and record["total"] <= m.best_total:
            m.best, m.best_total = images[row].detach().clone(), record["total"]
        for callback in m.callbacks:
            callback(record, m.best)
    if bar is not None:
        bar.update(len(waiting))
        # content and style of the evaluation just made (in a batch, of the member with the lowest loss)
        best = min((m.result.final for m in waiting if m.result.history), key=lambda r: r["total"], default=None)
        if best is not None:
            bar.set_postfix(content=f"{best['content']:.4g}", style=f"{best['style']:.4g}", refresh=False)


def optimize(loss_fn: Callable[[torch.Tensor], LossTerms], init: torch.Tensor,
             settings: OptimizerSettings, epochs: int,
             callbacks: Sequence[EvaluationCallback] = (), progress: bool = True,
             preprocess: nn.Module | None = None) -> OptimizationResult:
    """Run ``epochs`` optimiser steps from ``init`` (RGB) and record every evaluation.

    ``preprocess`` (the backbone's RGB -> input map, with ``inverse``) defines the
    ``input`` space; without it the optimiser works on pixels. Raises
    ``NonFiniteLossError`` (carrying the last finite image) as soon as a loss is
    NaN or infinite. A batch of one: see ``optimize_batch``.
    """
    (outcome,) = optimize_batch(lambda images, _members: loss_fn(images), [init], [settings], [epochs],
                                [callbacks], progress, preprocess)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
