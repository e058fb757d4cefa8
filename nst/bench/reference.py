"""The plain implementation nst is measured against, and the roofline it is measured by.

``ReferenceLoss`` is the obvious PyTorch style-transfer loss (the whole VGG ``features``,
losses on forward hooks, targets recomputed in every process) and ``reference_lbfgs`` the
obvious loop around it: a baseline anyone would write, so that a speed-up means something.
``evaluation_flops`` and ``matmul_gflops`` give the roofline: the least time an evaluation
can take on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from nst.engine.backbones import Backbone, build_features, layer_shapes, layer_table
from nst.engine.losses import StyleTransferLoss, gram, paper_style_layer_weights
from nst.engine.weights import load_backbone
from nst.images.files import load_tensor
from nst.images.samples import resolve_image

CONTENT_LAYERS = ["conv4_2"]
STYLE_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
CONTENT, STYLE = "tubingen", "starry_night"  # the pair every measurement uses


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops(n: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """The machine's peak fp32 matrix-multiply rate (best of ``repeats``), the roofline's ceiling."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times[1:]) / 1e9


def evaluation_flops(arch: str, depth: int, height: int, width: int) -> float:
    """Conv FLOPs of a forward pass to ``features[depth]`` times 2 (backward to the input only, since
    the weights are frozen)."""
    forward = sum(2.0 * c_in * c_out * 9 * h * w
                  for kind, c_in, c_out, h, w in layer_shapes(arch, depth, height, width) if kind == "conv")
    return 2 * forward


def sample_pair(size: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The bench's content and style images at long side ``size``, on ``device``."""
    return (load_tensor(resolve_image(CONTENT), size).to(device),
            load_tensor(resolve_image(STYLE), size).to(device))


def paper_style_weights(arch: str) -> dict[str, float]:
    """The paper's style layers with their weights (1e3/n^2 for n channels)."""
    table = layer_table(arch)
    return dict(zip(STYLE_LAYERS, paper_style_layer_weights([table[n].channels for n in STYLE_LAYERS]),
                    strict=True))


class ReferenceLoss(nn.Module):
    """The straightforward implementation nst is measured against.

    The full ``features`` stack (to pool5) runs on every evaluation, activations
    are caught by forward hooks, and the loss modules hold their own targets.
    ``scales`` (layer -> per-filter divisors, ``nst.engine.calibration``) divide the
    caught activations, as nst's calibrated features are; None: raw features.
    """

    def __init__(self, state: dict | None, arch: str, preprocess: nn.Module, content: torch.Tensor,
                 style: torch.Tensor, style_weight: float = 100.0, scales: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.scales = {name: factor.view(1, -1, 1, 1) for name, factor in (scales or {}).items()}
        self.features = build_features(arch)
        if state is not None:
            self.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                           if k.removeprefix("features.") in self.features.state_dict()})
        self.features.requires_grad_(False).eval().to(content.device)
        self.preprocess = preprocess
        table = layer_table(arch)
        self.caught: dict[str, torch.Tensor] = {}
        for name in CONTENT_LAYERS + STYLE_LAYERS:
            self.features[table[name].index].register_forward_hook(self._catch(name))
        self.weights = paper_style_weights(arch)
        self.style_weight = style_weight
        with torch.no_grad():
            self.features(self.preprocess(content))
            self.content_targets = {n: self.caught[n].clone() for n in CONTENT_LAYERS}
            self.features(self.preprocess(style))
            self.style_targets = {n: gram(self.caught[n]).clone() for n in STYLE_LAYERS}

    def _catch(self, name: str):
        def hook(_module, _inputs, output):
            self.caught[name] = output / self.scales[name] if name in self.scales else output
        return hook

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.forward_input(self.preprocess(image))

    def forward_input(self, x: torch.Tensor) -> torch.Tensor:
        """The loss of a network input (the preprocessed image)."""
        self.features(x)
        content = sum(nn.functional.mse_loss(self.caught[n], t) for n, t in self.content_targets.items())
        style = sum(self.weights[n] * nn.functional.mse_loss(gram(self.caught[n]), t)
                    for n, t in self.style_targets.items())
        return content + self.style_weight * style


def reference_loss(backbone: str, loaded: Backbone, content: torch.Tensor, style: torch.Tensor, device: str,
                   style_weight: float = 100.0) -> ReferenceLoss:
    """The reference on ``loaded``'s weights, divided by its calibration divisors if it has any, so that
    it computes the loss nst optimises."""
    whole = load_backbone(backbone, ["pool5"], device=device)  # the full conv stack's weights
    return ReferenceLoss(whole.extractor.features.state_dict(), loaded.spec.arch, loaded.extractor.preprocess,
                         content, style, style_weight, loaded.extractor.scales).to(device)


def nst_loss(loaded: Backbone, content: torch.Tensor, style: torch.Tensor, style_weight: float = 100.0,
             precision: str = "fp32") -> StyleTransferLoss:
    """nst's loss with the reference's layers and weights, for timing nst's evaluation alone."""
    return StyleTransferLoss(loaded.extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers=paper_style_weights(loaded.spec.arch),
                             style_weight=style_weight, precision=precision)


def reference_lbfgs(loss: ReferenceLoss, content: torch.Tensor, evaluations: int,
                    on_eval: Callable[[torch.Tensor], None] | None = None) -> list[tuple[float, float]]:
    """The plain loop: L-BFGS (strong Wolfe) on the network input from the content, ``evaluations``
    evaluations; returns (seconds since start, loss) per evaluation. ``on_eval`` sees the variable."""
    x = loss.preprocess(content).detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=evaluations, max_eval=evaluations,
                                  history_size=100, tolerance_grad=0, tolerance_change=0,
                                  line_search_fn="strong_wolfe")
    trace: list[tuple[float, float]] = []
    start = time.perf_counter()

    def closure():
        optimizer.zero_grad()
        value = loss.forward_input(x)
        value.backward()
        trace.append((time.perf_counter() - start, float(value.detach())))
        if on_eval is not None:
            on_eval(x)
        return value

    optimizer.step(closure)
    return trace
