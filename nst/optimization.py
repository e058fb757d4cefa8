"""The optimisation loop: change the pixels of one image until the loss is low.

As in Gatys et al., the network is fixed and the image is the parameter. Pixels
are *not* clamped inside the closure (clamping there makes L-BFGS's curvature
estimates wrong and the loss explode); the saved image is clamped instead.

Which coordinates the optimiser moves in matters for L-BFGS: its first step is
``lr / |g|_1`` and every later curvature estimate builds on it. Gatys' and
jcjohnson's code optimise the network's input (Caffe: BGR, 0-255, minus mean),
and in [0, 1] pixels the same losses make L-BFGS overshoot by orders of
magnitude and stall (measured: loss 2e7 -> 2e25 at the third evaluation).
Even there, at 256 px and beta = 1e4 the fixed-step first iteration is so
small that its curvature pair is noise; the next step overshoots (2e9 -> 1e16)
and L-BFGS crawls (2.357e9 after 100 evaluations). A strong-Wolfe line search
(the default; ``line_search=None`` restores the fixed step) reached 9.1e4 in
the same budget, and matched the fixed step at 128 px for beta 1e-2..1e4.
So ``space="input"`` (L-BFGS's default) optimises the backbone's input and
``space="pixel"`` (Adam's default: its step is ``lr`` per pixel whatever the
gradient's scale) the [0, 1] RGB image. Losses and records always see RGB.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from nst.errors import NonFiniteLossError
from nst.losses import LossTerms

INIT_MODES = ("content", "noise", "style")
OPTIMIZERS = ("lbfgs", "adam")
SPACES = ("input", "pixel")

# Called after every function evaluation with the evaluation's record and the current image.
EvaluationCallback = Callable[[dict, torch.Tensor], None]


def initial_image(mode: str, content: torch.Tensor, style: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The starting image: a copy of the content, seeded white noise, or the style resized to the content."""
    if mode == "content":
        return content.detach().clone()
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
    tolerance_grad: float = 1e-7
    tolerance_change: float = 1e-9
    betas: tuple[float, float] = (0.9, 0.999)
    space: str = "input"  # "input": the backbone's input coordinates; "pixel": RGB in [0, 1]
    line_search: str | None = "strong_wolfe"  # L-BFGS: "strong_wolfe", or None (fixed step lr, as Gatys)

    def build(self, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        if self.name == "lbfgs":
            return torch.optim.LBFGS(params, lr=self.lr, max_iter=self.max_iter,
                                     history_size=self.history_size,
                                     tolerance_grad=self.tolerance_grad,
                                     tolerance_change=self.tolerance_change,
                                     line_search_fn=self.line_search)
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, betas=tuple(self.betas))
        raise ValueError(f"unknown optimizer {self.name!r}")


@dataclass
class OptimizationResult:
    image: torch.Tensor  # the last image whose loss was finite, unclamped
    history: list[dict] = field(default_factory=list)  # one record per function evaluation
    elapsed_s: float = 0.0

    @property
    def evaluations(self) -> int:
        return len(self.history)

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


def optimize(loss_fn: Callable[[torch.Tensor], LossTerms], init: torch.Tensor,
             settings: OptimizerSettings, epochs: int,
             callbacks: Sequence[EvaluationCallback] = (), progress: bool = True,
             preprocess: nn.Module | None = None) -> OptimizationResult:
    """Run ``epochs`` optimiser steps from ``init`` (RGB) and record every evaluation.

    ``preprocess`` (the backbone's RGB -> input map, with ``inverse``) defines the
    ``input`` space; without it the optimiser works on pixels. Raises
    ``NonFiniteLossError`` (carrying the last finite image) as soon as a loss is
    NaN or infinite.
    """
    if settings.space == "input" and preprocess is not None:
        encode, decode = preprocess, preprocess.inverse
    else:
        encode = decode = _identity
    with torch.no_grad():
        variable = encode(init.detach()).clone().requires_grad_(True)
    optimizer = settings.build([variable])
    result = OptimizationResult(image=init.detach().clone())
    start = time.perf_counter()
    epoch = 0

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        image = decode(variable)
        terms = loss_fn(image)
        values = terms.scalars()
        if not all(math.isfinite(v) for v in values.values()):
            bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
            raise NonFiniteLossError(
                f"the loss became non-finite at evaluation {len(result.history) + 1} (epoch {epoch + 1}): "
                f"{bad}. Lower optimizer.lr or the loss weights; the last finite image is kept.",
                last_finite_image=result.image, evaluation=len(result.history) + 1,
                history=result.history)
        total = terms.total.sum()
        total.backward()
        result.image = image.detach().clone()
        record = {"evaluation": len(result.history) + 1, "epoch": epoch + 1, **values,
                  "elapsed_s": time.perf_counter() - start}
        result.history.append(record)
        for callback in callbacks:
            callback(record, result.image)
        return total

    with tqdm(total=epochs, desc="nst", unit="epoch", disable=not progress, dynamic_ncols=True) as bar:
        for epoch in range(epochs):  # noqa: B007 - closure() reads it
            if settings.name == "lbfgs":
                optimizer.step(closure)
            else:
                for _ in range(settings.max_iter):
                    optimizer.step(closure)
            bar.update(1)
            bar.set_postfix(loss=f"{result.final.get('total', float('nan')):.4g}",
                            evals=result.evaluations)
    result.elapsed_s = time.perf_counter() - start
    return result
