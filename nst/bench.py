"""``make bench``: cost of one function evaluation, against a plain reference and the roofline.

For each size and each backbone available offline, one evaluation (forward +
backward of the style-transfer loss) is timed for nst's engine and for the
obvious PyTorch implementation kept here (``ReferenceLoss``: the whole VGG
``features``, losses on forward hooks, Gram matrices of the targets recomputed
in every process). Each measurement runs in its own process so its peak memory
(max RSS, or CUDA's peak allocation) is its own. The FLOPs of an evaluation
(conv layers; backward to the input only, since the weights are frozen) divided
by the machine's measured matmul rate give the roofline time.

    python -m nst.bench                      # 128, 256, 512 px; Markdown table
    python -m nst.bench --sizes 128 256 --evals 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

from nst.backbones import SPECS, build_features, layer_shapes, layer_table, load_backbone
from nst.errors import NSTError
from nst.losses import StyleTransferLoss, gram, paper_style_layer_weights

CONTENT_LAYERS = ["conv4_2"]
STYLE_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]


def matmul_gflops(n: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """The machine's peak fp32 matrix-multiply rate (best of ``repeats``), the roofline's ceiling."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    times = []
    for _ in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times[1:]) / 1e9


def evaluation_flops(arch: str, depth: int, height: int, width: int) -> float:
    """Conv FLOPs of a forward pass to ``features[depth]`` times 2 (backward to the input only)."""
    forward = sum(2.0 * c_in * c_out * 9 * h * w
                  for kind, c_in, c_out, h, w in layer_shapes(arch, depth, height, width) if kind == "conv")
    return 2 * forward


class ReferenceLoss(nn.Module):
    """The straightforward implementation nst is measured against.

    The full ``features`` stack (to pool5) runs on every evaluation, activations
    are caught by forward hooks, and the loss modules hold their own targets.
    """

    def __init__(self, state: dict | None, arch: str, preprocess: nn.Module, content: torch.Tensor,
                 style: torch.Tensor, style_weight: float = 100.0):
        super().__init__()
        self.features = build_features(arch)
        if state is not None:
            self.features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                           if k.removeprefix("features.") in self.features.state_dict()})
        self.features.requires_grad_(False).eval()
        self.preprocess = preprocess
        table = layer_table(arch)
        self.caught: dict[str, torch.Tensor] = {}
        for name in CONTENT_LAYERS + STYLE_LAYERS:
            self.features[table[name].index].register_forward_hook(self._catch(name))
        self.weights = dict(zip(STYLE_LAYERS, paper_style_layer_weights(
            [table[n].channels for n in STYLE_LAYERS]), strict=True))
        self.style_weight = style_weight
        with torch.no_grad():
            self.features(self.preprocess(content))
            self.content_targets = {n: self.caught[n].clone() for n in CONTENT_LAYERS}
            self.features(self.preprocess(style))
            self.style_targets = {n: gram(self.caught[n]).clone() for n in STYLE_LAYERS}

    def _catch(self, name: str):
        def hook(_module, _inputs, output):
            self.caught[name] = output
        return hook

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        self.features(self.preprocess(image))
        content = sum(nn.functional.mse_loss(self.caught[n], t) for n, t in self.content_targets.items())
        style = sum(self.weights[n] * nn.functional.mse_loss(gram(self.caught[n]), t)
                    for n, t in self.style_targets.items())
        return content + self.style_weight * style


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure_one(impl: str, backbone: str, size: int, evals: int, device: str) -> dict:
    """ms per evaluation (median) and peak memory of one implementation, in this process."""
    from nst.assets import resolve_image
    from nst.images import load_tensor

    content = load_tensor(resolve_image("tubingen"), size).to(device)
    style = load_tensor(resolve_image("starry_night"), size).to(device)
    loaded = load_backbone(backbone, CONTENT_LAYERS + STYLE_LAYERS, device=device)
    if impl == "nst":
        table = layer_table(loaded.spec.arch)
        loss = StyleTransferLoss(loaded.extractor, content, style, content_layers={"conv4_2": 1.0},
                                 style_layers=dict(zip(STYLE_LAYERS, paper_style_layer_weights(
                                     [table[n].channels for n in STYLE_LAYERS]), strict=True)),
                                 style_weight=100.0)

        def evaluate(x):
            return loss(x).total.sum()
    else:
        whole = load_backbone(backbone, ["pool5"], device=device)  # the full conv stack's weights
        reference = ReferenceLoss(whole.extractor.features.state_dict(), loaded.spec.arch,
                                  loaded.extractor.preprocess, content, style).to(device)
        evaluate = reference
    image = content.clone().requires_grad_(True)
    times = []
    for _ in range(evals + 1):  # the first is warm-up
        _sync(device)
        start = time.perf_counter()
        image.grad = None
        evaluate(image).backward()
        _sync(device)
        times.append(time.perf_counter() - start)
    if str(device).startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"ms": 1000 * statistics.median(times[1:]), "peak_mib": peak / 2**20,
            "height": content.shape[-2], "width": content.shape[-1], "arch": loaded.spec.arch}


def _in_subprocess(impl: str, backbone: str, size: int, evals: int, device: str) -> dict:
    command = [sys.executable, "-m", "nst.bench", "--one", impl, backbone, str(size),
               "--evals", str(evals), "--device", device]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def available_backbones() -> list[str]:
    """``random`` (the VGG-19 architecture) always; the pretrained ones that are cached or obtainable."""
    names = ["random"]
    for name in ("vgg16_hed", "vgg19", "vgg19_caffe"):
        try:
            load_backbone(name, ["conv1_1"])
            names.append(name)
        except NSTError:
            continue
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nst-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--evals", type=int, default=3, help="timed evaluations per measurement")
    parser.add_argument("--backbones", nargs="+", help="default: every backbone available offline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "BACKBONE", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.sizes) < 64:
        parser.error("sizes must be >= 64 px: the reference runs to pool5, which needs 32 px per side")
    if args.one:
        impl, backbone, size = args.one
        print(json.dumps(measure_one(impl, backbone, int(size), args.evals, args.device)))
        return 0
    backbones = args.backbones or available_backbones()
    rate = matmul_gflops(device=args.device)
    threads = torch.get_num_threads()
    print(f"device {args.device}, torch {torch.__version__}, {threads} threads, "
          f"matmul {rate:.0f} GFLOP/s (fp32, 4096^2, best of 5)\n")
    print("| backbone | size | GFLOP/eval | roofline ms | nst ms/eval | % of roofline | reference ms/eval "
          "| speed-up | nst peak MiB | reference peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for backbone in backbones:
        arch = SPECS[backbone].arch
        depth = max(layer_table(arch)[n].index for n in CONTENT_LAYERS + STYLE_LAYERS)
        for size in args.sizes:
            ours = _in_subprocess("nst", backbone, size, args.evals, args.device)
            ref = _in_subprocess("reference", backbone, size, args.evals, args.device)
            flops = evaluation_flops(arch, depth, ours["height"], ours["width"])
            roofline = flops / (rate * 1e9) * 1000
            print(f"| {backbone} ({arch}) | {ours['width']}x{ours['height']} | {flops / 1e9:.1f} | "
                  f"{roofline:.0f} | {ours['ms']:.0f} | {100 * roofline / ours['ms']:.0f} % | {ref['ms']:.0f} | "
                  f"{ref['ms'] / ours['ms']:.2f}x | {ours['peak_mib']:.0f} | {ref['peak_mib']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
