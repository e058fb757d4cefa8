"""``make bench``: cost of one function evaluation, against a plain reference and the roofline.

For each size and each backbone available offline, one evaluation (forward +
backward of the style-transfer loss) is timed for nst's engine and for the
obvious PyTorch implementation kept here (``ReferenceLoss``: the whole VGG
``features``, losses on forward hooks, Gram matrices of the targets recomputed
in every process). Each measurement runs in its own process so its peak memory
(max RSS, or CUDA's peak allocation) is its own. The FLOPs of an evaluation
(conv layers; backward to the input only, since the weights are frozen) divided
by the machine's measured matmul rate give the roofline time.

Then two end-to-end races against the same reference:

* time to quality: a 1000-evaluation reference L-BFGS run sets the quality
  (its lowest loss + 5 %, on the features a run optimises: calibrated unless
  ``--quality-calibration none``); how long the reference and nst (fp32, bf16,
  coarse-to-fine) take to get there, nst's image scored by the reference's fp32 loss;
* a 6-member ratio sweep (beta 1e-2 .. 1e4): the reference as six separate
  processes (targets recomputed in each) against ``nst -m`` one job after
  another and with ``hydra/launcher=batched`` (fp32, bf16);
* optionally (``--run-size``) one L-BFGS run of ``--run-evals`` evaluations.

bf16 rows appear only on devices with bfloat16 hardware (``--bf16 always``).

    python -m nst.bench                      # default: about 7 min on 2 CPU cores
    python -m nst.bench --sizes 128 256 --evals 5 --quality-size 256 --sweep-size 256
    python -m nst.bench --device cuda --sizes 128 256 512 --evals 20 --quality-size 512 \
        --run-size 512 --run-evals 500 --sweep-size 512 --sweep-evals 300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from nst.engine import cuda_graphs, schedule
from nst.engine.backbones import SPECS, build_features, layer_shapes, layer_table, load_backbone
from nst.engine.calibration import CALIBRATIONS, calibrate
from nst.engine.devices import native_bf16, tune
from nst.engine.losses import StyleTransferLoss, gram, paper_style_layer_weights
from nst.engine.optimization import OptimizerSettings, initial_image, optimize
from nst.errors import NSTError
from nst.figures.grid import comparison_grid
from nst.images.files import load_tensor, tensor_to_pil, upsample
from nst.images.samples import resolve_image

CONTENT_LAYERS = ["conv4_2"]
STYLE_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
RATIO_BETAS = [1e-2, 1e-1, 1.0, 10.0, 100.0, 1e4]
QUALITY_MARGIN = 1.05  # "reached the quality": total loss within 5 % of the reference's best
# the time-to-quality rows after the reference: name -> (label, precision, init, coarse scales first)
QUALITY_VARIANTS = {
    "fp32": ("nst (fp32)", "fp32", "content", False),
    "bf16": ("nst (bf16, fixed step)", "bf16", "content", False),
    "coarse_to_fine": ("nst (fp32, coarse-to-fine, image.scales=auto)", "fp32", "content", True),
    "recolored": ("nst (fp32, init=recolored_content)", "fp32", "recolored_content", False),
}


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
    ``scales`` (layer -> per-filter divisors, ``nst.calibration``) divide the caught
    activations, as nst's calibrated features are; None: raw features.
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


def nst_loss(loaded, content: torch.Tensor, style: torch.Tensor, style_weight: float = 100.0,
             precision: str = "fp32") -> StyleTransferLoss:
    """nst's engine with the paper's layers and weights (1e3/n^2 per style layer)."""
    table = layer_table(loaded.spec.arch)
    return StyleTransferLoss(loaded.extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers=dict(zip(STYLE_LAYERS, paper_style_layer_weights(
                                 [table[n].channels for n in STYLE_LAYERS]), strict=True)),
                             style_weight=style_weight, precision=precision)


def reference_loss(backbone: str, loaded, content: torch.Tensor, style: torch.Tensor, device: str,
                   style_weight: float = 100.0) -> ReferenceLoss:
    """The reference on ``loaded``'s weights, with its calibration divisors if it has any."""
    whole = load_backbone(backbone, ["pool5"], device=device)  # the full conv stack's weights
    return ReferenceLoss(whole.extractor.features.state_dict(), loaded.spec.arch, loaded.extractor.preprocess,
                         content, style, style_weight, loaded.extractor.scales).to(device)


def _images(size: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (load_tensor(resolve_image("tubingen"), size).to(device),
            load_tensor(resolve_image("starry_night"), size).to(device))


def reference_lbfgs(loss: ReferenceLoss, content: torch.Tensor, evaluations: int,
                    on_eval=None) -> list[tuple[float, float]]:
    """The plain loop: L-BFGS (strong Wolfe) on the network input, ``evaluations`` evaluations.

    Returns (seconds since start, loss) per evaluation.
    """
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


def time_to_quality(backbone: str, size: int, reference_evals: int, device: str, bf16: bool = True,
                    images: dict[str, torch.Tensor] | None = None, calibration: str = "rms_activation",
                    variants: list[str] | tuple[str, ...] = tuple(QUALITY_VARIANTS)) -> list[dict]:
    """How long the reference and nst's ``variants`` (``QUALITY_VARIANTS``) take to reach the reference's best + 5 %.

    Coarse-to-fine runs the coarse scales of ``image.scales=auto`` (``nst.schedule``:
    128 px up by sqrt(2), together an eighth of the reference's budget in cost), then
    the full size until the target; its evaluations column counts every scale's.
    ``recolored`` starts from ``init=recolored_content`` instead of the content (the
    recolouring is on the clock).

    The loss is the one a run optimises with ``model.calibration=calibration`` (nst's
    default, ``rms_activation``, unless told otherwise); the reference divides its
    caught activations by the same factors. Measured (vgg16_hed, 2-core CPU): on raw
    features (``none``) coarse-to-fine never reached the target at 512 px; on the
    calibrated ones it reached it 1.6x sooner than the plain run at 256 px but only
    1.09x the reference at 512 px, and there with a different picture (large smeared
    strokes where the reference keeps the photo under a fine texture): a loss within
    5 % is not the same image, so look at ``--quality-images`` (README, Performance).
    """
    content, style = _images(size, device)
    loaded = load_backbone(backbone, CONTENT_LAYERS + STYLE_LAYERS, device=device)
    calibrate(loaded, calibration, [content, style], ["tubingen", "starry_night"])
    reference = reference_loss(backbone, loaded, content, style, device)
    optimised: dict[str, torch.Tensor] = {}  # the reference's variable (one tensor, changed in place)
    trace = reference_lbfgs(reference, content, reference_evals, on_eval=lambda x: optimised.update(x=x))
    if images is not None:  # what each row looked like when it reached the target; the reference at its end
        images.update(content=content, style=style, reference=reference.preprocess.inverse(optimised["x"].detach()))
    best = min(value for _, value in trace)
    target = best * QUALITY_MARGIN
    reached = next(i for i, (_, value) in enumerate(trace) if value <= target)
    rows = [{"impl": "reference (fp32)", "evals": reached + 1, "seconds": trace[reached][0],
             "loss": trace[reached][1], "best": best, "target": target,
             "trace": [{"evaluation": i + 1, "elapsed_s": seconds, "total": value}
                       for i, (seconds, value) in enumerate(trace)]}]

    class Reached(Exception):
        pass

    for label, precision, init_mode, coarse_first in (QUALITY_VARIANTS[name] for name in variants):
        if precision == "bf16" and not bf16:
            continue
        scoring = {"excluded": 0.0, "loss": math.inf, "before": 0.0, "coarse": 0}
        # the row's records at the full size, counted and timed as the table's columns (its last: where it stopped)
        final_scale: list[dict] = []

        def score(record: dict, image: torch.Tensor, precision=precision, scoring=scoring, label=label,
                  final_scale=final_scale) -> None:
            final_scale.append({**record, "evaluation": record["evaluation"] + scoring["coarse"],
                                "elapsed_s": scoring["before"] + record["elapsed_s"] - scoring["excluded"]})
            if precision == "fp32":  # nst's fp32 loss is the reference's loss (tested)
                value = record["total"]
            elif record["evaluation"] % 5:
                return
            else:  # bf16: score the image with the fp32 reference loss, off the clock
                begin = time.perf_counter()
                with torch.no_grad():
                    value = float(reference(image))
                scoring["excluded"] += time.perf_counter() - begin
            if value <= target:
                scoring.update(loss=value)
                if images is not None:
                    images[label] = image.detach().clone()
                raise Reached

        # bf16's rounding noise defeats the strong-Wolfe search (nst refuses the pair): fixed step
        settings = OptimizerSettings(name="lbfgs", lr=1.0, max_iter=reference_evals, tolerance_grad=0,
                                     tolerance_change=0,
                                     line_search="strong_wolfe" if precision == "fp32" else None)
        begin = time.perf_counter()
        init = None  # each coarse scale starts from the previous one's result, upsampled as nst.run does
        for side, evals in schedule.coarse_to_fine(size, reference_evals)[:-1] if coarse_first else []:
            small_content, small_style = _images(side, device)
            start = (initial_image(init_mode, small_content, small_style) if init is None
                     else upsample(init, small_content.shape[-2:]))
            coarse = optimize(nst_loss(loaded, small_content, small_style, precision=precision), start,
                              OptimizerSettings(name="lbfgs", max_iter=evals, max_eval=evals), 1,
                              progress=False, preprocess=loaded.extractor.preprocess)
            init = coarse.image
            scoring["coarse"] += coarse.evaluations
        init = initial_image(init_mode, content, style) if init is None else upsample(init, content.shape[-2:])
        scoring.update(before=time.perf_counter() - begin)
        try:
            optimize(nst_loss(loaded, content, style, precision=precision), init, settings, 1,
                     callbacks=[score], progress=False, preprocess=loaded.extractor.preprocess)
        except Reached:
            rows.append({"impl": label, "evals": final_scale[-1]["evaluation"],
                         "seconds": final_scale[-1]["elapsed_s"], "loss": scoring["loss"], "best": best,
                         "target": target, "trace": final_scale})
        else:
            rows.append({"impl": label, "evals": None, "seconds": None, "loss": None,
                         "best": best, "target": target, "trace": final_scale})
    return rows


def save_quality_images(images: dict[str, torch.Tensor], rows: list[dict], folder: Path) -> Path:
    """content | style | the reference's last image | each nst row's image when it reached the target;
    beside it ``quality_trace.csv``, every row's loss per evaluation (nst's rows per term and layer)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_quality_trace(rows, folder / "quality_trace.csv")
    seconds = {row["impl"]: row["seconds"] for row in rows}
    tiles = [("reference (fp32): its last image" if label == "reference" else f"{label}: at {seconds[label]:.1f} s",
              tensor_to_pil(image.clamp(0, 1)))
             for label, image in images.items() if label not in ("content", "style")]
    height, width = images["content"].shape[-2:]
    grid = comparison_grid(tensor_to_pil(images["content"]), tensor_to_pil(images["style"]), tiles,
                           box=(width, height), title="time to quality: each image when its loss reached the target")
    path = folder / "quality_side_by_side.png"
    grid.save(path)
    return path


def save_quality_trace(rows: list[dict], path: Path) -> None:
    """One line per evaluation of every row (column ``impl``); an nst row's evaluation counts its coarse
    scales' and its seconds exclude bf16's scoring, as the table's do.

    The table says how soon; the trace says why. At 512 px (vgg16_hed, 2-core CPU) nst's row from
    the photo had ``style/conv5_1`` flat at the value of a zero Gram matrix (every conv5_1 unit off)
    from evaluation 20 to 80, and then spent 300 evaluations on the content loss's return
    (README, Performance): no table of times shows that.
    """
    import pandas as pd  # the bench's own dependency; a run never imports it at start-up

    pd.DataFrame([{"impl": row["impl"], **record} for row in rows for record in row["trace"]]).to_csv(
        path, index=False)


def run_race(backbone: str, size: int, evaluations: int, device: str, bf16: bool = True) -> Iterator[dict]:
    """Wall time of one L-BFGS run of ``evaluations`` evaluations, reference against nst's modes.

    Each implementation first runs 5 evaluations untimed (cuDNN's algorithm
    search, the allocator's first requests); every final image is scored with
    the reference's fp32 loss, off the clock.
    """
    content, style = _images(size, device)
    loaded = load_backbone(backbone, CONTENT_LAYERS + STYLE_LAYERS, device=device)
    reference = reference_loss(backbone, loaded, content, style, device)
    reference_lbfgs(reference, content, 5)
    _sync(device)
    start = time.perf_counter()
    trace = reference_lbfgs(reference, content, evaluations)
    _sync(device)
    yield {"impl": "reference (fp32, strong Wolfe)", "evals": len(trace),
           "seconds": time.perf_counter() - start, "loss": trace[-1][1]}
    variants = [("nst (fp32, strong Wolfe)", "fp32", "strong_wolfe", False),
                ("nst (fp32, fixed step)", "fp32", None, False), ("nst (bf16, fixed step)", "bf16", None, False)]
    if cuda_graphs.available(torch.device(device), "fp32"):
        variants += [("nst (fp32, strong Wolfe, CUDA graph)", "fp32", "strong_wolfe", True),
                     ("nst (fp32, fixed step, CUDA graph)", "fp32", None, True)]
    for label, precision, line_search, graphed in [v for v in variants if bf16 or v[1] != "bf16"]:
        loss = nst_loss(loaded, content, style, precision=precision)
        if graphed:  # one capture for both runs below, as one process's runs of a size share it
            captured = cuda_graphs.CapturedLoss(lambda x, _members, loss=loss: loss(x))
            loss = lambda x, captured=captured: captured(x, [0])  # noqa: E731
        for budget in (5, evaluations):  # the first run is the warm-up
            settings = OptimizerSettings(name="lbfgs", lr=1.0, max_iter=budget, max_eval=budget, tolerance_grad=0,
                                         tolerance_change=0, line_search=line_search)
            _sync(device)
            start = time.perf_counter()
            result = optimize(loss, content, settings, 1, progress=False, preprocess=loaded.extractor.preprocess)
            _sync(device)
            seconds = time.perf_counter() - start
        with torch.no_grad():
            scored = float(reference(result.image))
        yield {"impl": label, "evals": result.evaluations, "seconds": seconds, "loss": scored}


def reference_sweep_job(backbone: str, size: int, beta: float, evaluations: int, device: str) -> float:
    """One member of the reference sweep, as its own process would run it (targets recomputed)."""
    content, style = _images(size, device)
    loaded = load_backbone(backbone, CONTENT_LAYERS + STYLE_LAYERS, device=device)
    trace = reference_lbfgs(reference_loss(backbone, loaded, content, style, device, style_weight=beta),
                            content, evaluations)
    return trace[-1][1]


def sweep_race(backbone: str, size: int, evaluations: int, device: str, bf16: bool = True) -> Iterator[dict]:
    """Wall time of the 6-member ratio sweep: reference processes against ``nst -m`` modes."""

    start = time.perf_counter()
    for beta in RATIO_BETAS:
        command = [sys.executable, "-m", "nst.bench.races", "--reference-job", backbone, str(size), str(beta),
                   str(evaluations), "--device", device]
        done = subprocess.run(command, capture_output=True, text=True, timeout=7200)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    yield {"mode": "reference: 6 processes", "seconds": time.perf_counter() - start}
    modes = [("nst, one run alone (beta 1e4), for scale", None),
             ("nst -m, one job after another (fp32)", []),
             ("nst -m hydra/launcher=batched (fp32)", ["hydra/launcher=batched"]),
             ("nst -m hydra/launcher=batched model.precision=bf16 optimizer.line_search=null",
              ["hydra/launcher=batched", "model.precision=bf16", "optimizer.line_search=null"])]
    modes = [m for m in modes if bf16 or "model.precision=bf16" not in (m[1] or [])]
    with tempfile.TemporaryDirectory() as out:
        for label, extra in modes:
            sweep = ["sweep=ratio"] if extra is not None else ["loss.style_weight=1e4"]
            command = [sys.executable, "-m", "nst.cli.nst_app", *sweep, "content=tubingen",
                       "style=starry_night", f"model={backbone}", f"image.size={size}", "epochs=1",
                       f"optimizer.max_iter={evaluations}", f"optimizer.max_eval={evaluations}",
                       "optimizer.tolerance_grad=0", "optimizer.tolerance_change=0", "tracking=none",
                       "progress=false", f"device={device}", *(extra or [])]
            start, started = time.perf_counter(), time.time()
            done = subprocess.run(command, capture_output=True, text=True, timeout=7200,
                                  env={**os.environ, "NST_OUTPUT_DIR": out})
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
            yield {"mode": label, "seconds": time.perf_counter() - start,
                   "optimising": _optimising_seconds(Path(out), started)}


def _optimising_seconds(out: Path, since: float) -> float | None:
    """The optimisation seconds the runs written under ``out`` since ``since`` record (run.json's elapsed_s);
    the members of one batch all record the batch's seconds, counted once."""
    records = [json.loads(path.read_text()) for path in out.rglob("run.json") if path.stat().st_mtime >= since]
    return sum({float(record.get("elapsed_s") or 0) for record in records}) or None


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def measure_one(impl: str, backbone: str, size: int, evals: int, device: str) -> dict:
    """ms per evaluation (median) and peak memory of one implementation, in this process."""
    content = load_tensor(resolve_image("tubingen"), size).to(device)
    style = load_tensor(resolve_image("starry_night"), size).to(device)
    loaded = load_backbone(backbone, CONTENT_LAYERS + STYLE_LAYERS, device=device)
    if impl in ("nst", "nst-bf16", "nst-graph"):
        loss = nst_loss(loaded, content, style, precision="bf16" if impl == "nst-bf16" else "fp32")
        terms = cuda_graphs.CapturedLoss(lambda x, _members: loss(x)) if impl == "nst-graph" else lambda x, _m: loss(x)

        def evaluate(x):
            return terms(x, [0]).total.sum()
    else:
        evaluate = reference_loss(backbone, loaded, content, style, device)
    image = content.clone().requires_grad_(True)
    times = []
    warmup = cuda_graphs.REPEATS if impl == "nst-graph" else 1  # the graph is captured at its REPEATS-th call
    for index in range(evals + warmup):
        _sync(device)
        start = time.perf_counter()
        image.grad = None
        evaluate(image).backward()
        _sync(device)
        times.append(time.perf_counter() - start)
        if index == warmup - 1 and str(device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()  # not cuDNN's one-off algorithm search
    if str(device).startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"ms": 1000 * statistics.median(times[warmup:]), "peak_mib": peak / 2**20,
            "height": content.shape[-2], "width": content.shape[-1], "arch": loaded.spec.arch}


def _in_subprocess(impl: str, backbone: str, size: int, evals: int, device: str) -> dict:
    command = [sys.executable, "-m", "nst.bench.races", "--one", impl, backbone, str(size),
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


def _race_table(columns: list[str], rows: Iterator[dict], cells) -> None:
    """Print a markdown table a row at a time, as the race finishes each; speed-ups against the first row."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    base = None
    for row in rows:
        base = base or row["seconds"]
        print("| " + " | ".join(cells(row, base)) + " |", flush=True)


def _ms(value: float) -> str:
    """Milliseconds with the digits that matter: 1768, 14.7, 0.41."""
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _fmt(value, spec: str) -> str:
    return "not reached" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nst-bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512], help="none skips the table")
    parser.add_argument("--evals", type=int, default=3, help="timed evaluations per measurement")
    parser.add_argument("--backbones", nargs="+", help="default: every backbone available offline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quality-size", type=int, default=128, help="0 skips the time-to-quality race")
    parser.add_argument("--quality-evals", type=int, default=1000, help="evaluations of the reference run")
    parser.add_argument("--quality-calibration", choices=CALIBRATIONS, default="rms_activation",
                        help="the features the race's loss reads (model.calibration; default: nst's default)")
    parser.add_argument("--quality-variants", nargs="+", choices=list(QUALITY_VARIANTS),
                        default=list(QUALITY_VARIANTS), help="nst's rows in the race (default: all)")
    parser.add_argument("--quality-images", metavar="DIR",
                        help="save each time-to-quality row's image (when it reached the target) side by side")
    parser.add_argument("--run-size", type=int, default=0, help="size of the one-run race; 0 (default) skips it")
    parser.add_argument("--run-evals", type=int, default=500, help="evaluations of the one-run race")
    parser.add_argument("--sweep-size", type=int, default=128, help="0 skips the sweep race")
    parser.add_argument("--sweep-evals", type=int, default=60, help="evaluations per sweep member")
    parser.add_argument("--bf16", choices=["auto", "always", "never"], default="auto",
                        help="bf16 rows; auto: only where the device has bfloat16 hardware (emulated bf16 is slow)")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "BACKBONE", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--reference-job", nargs=4, metavar=("BACKBONE", "SIZE", "BETA", "EVALS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    tune(torch.device(args.device))
    if args.sizes and min(args.sizes) < 64:
        parser.error("sizes must be >= 64 px: the reference runs to pool5, which needs 32 px per side")
    if args.one:
        impl, backbone, size = args.one
        print(json.dumps(measure_one(impl, backbone, int(size), args.evals, args.device)))
        return 0
    if args.reference_job:
        backbone, size, beta, evals = args.reference_job
        print(reference_sweep_job(backbone, int(size), float(beta), int(evals), args.device))
        return 0
    backbones = args.backbones or available_backbones()
    rate = matmul_gflops(device=args.device)
    threads = torch.get_num_threads()
    print(f"device {args.device}, torch {torch.__version__}, {threads} threads, "
          f"matmul {rate:.0f} GFLOP/s (fp32, 4096^2, best of 5)")
    if str(args.device).startswith("cuda"):
        print(f"{torch.cuda.get_device_name()}; cuDNN {torch.backends.cudnn.version()} with TF32 convolutions "
              f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'} (so a % of the fp32 roofline can pass 100)")
    with_bf16 = args.bf16 == "always" or (args.bf16 == "auto" and native_bf16(torch.device(args.device)) is not False)
    if args.bf16 == "never":
        print("bf16 rows skipped (--bf16 never)")
    elif not with_bf16:
        print("bf16 rows skipped: no bfloat16 hardware on this device (avx512_bf16 or AMX on a CPU); --bf16 always")
    print()
    if args.sizes:
        print("## Cost of one evaluation (forward + backward), median of", args.evals, "\n")
        print("| backbone | size | GFLOP/eval | roofline ms | nst ms/eval | % of roofline | nst bf16 ms/eval "
              "| reference ms/eval | reference / nst | reference / nst bf16 | nst peak MiB | reference peak MiB "
              "| nst CUDA graph ms/eval | reference / nst CUDA graph |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for backbone in backbones:
            arch = SPECS[backbone].arch
            depth = max(layer_table(arch)[n].index for n in CONTENT_LAYERS + STYLE_LAYERS)
            for size in args.sizes:
                ours = _in_subprocess("nst", backbone, size, args.evals, args.device)
                bf16 = _in_subprocess("nst-bf16", backbone, size, args.evals, args.device) if with_bf16 else None
                graph = (_in_subprocess("nst-graph", backbone, size, args.evals, args.device)
                         if cuda_graphs.available(torch.device(args.device), "fp32") else None)
                ref = _in_subprocess("reference", backbone, size, args.evals, args.device)
                flops = evaluation_flops(arch, depth, ours["height"], ours["width"])
                roofline = flops / (rate * 1e9) * 1000
                bf16_ms, bf16_ratio = (_ms(bf16["ms"]), f"{ref['ms'] / bf16['ms']:.2f}x") if bf16 else ("skipped", "-")
                graph_ms, graph_ratio = ((_ms(graph["ms"]), f"{ref['ms'] / graph['ms']:.2f}x") if graph
                                         else ("n/a (CUDA only)", "-"))
                print(f"| {backbone} ({arch}) | {ours['width']}x{ours['height']} | {flops / 1e9:.1f} | "
                      f"{_ms(roofline)} | {_ms(ours['ms'])} | {100 * roofline / ours['ms']:.0f} % | {bf16_ms} | "
                      f"{_ms(ref['ms'])} | {ref['ms'] / ours['ms']:.2f}x | {bf16_ratio} | "
                      f"{ours['peak_mib']:.0f} | {ref['peak_mib']:.0f} | {graph_ms} | {graph_ratio} |", flush=True)
    race_backbone = backbones[-1] if len(backbones) > 1 else backbones[0]  # a pretrained one if any
    if args.quality_size:
        print(f"\n## Time to quality: {race_backbone}, {args.quality_size} px, loss within 5 % of the best of "
              f"a {args.quality_evals}-evaluation reference L-BFGS run, model.calibration={args.quality_calibration}\n")
        images: dict[str, torch.Tensor] = {}
        rows = time_to_quality(race_backbone, args.quality_size, args.quality_evals, args.device, with_bf16, images,
                               args.quality_calibration, args.quality_variants)
        if args.quality_images:
            print(f"images: {save_quality_images(images, rows, Path(args.quality_images))}\n")
        base = rows[0]["seconds"]
        print(f"reference best loss {rows[0]['best']:.6g}, target {rows[0]['target']:.6g}\n")
        print("| implementation | evaluations | seconds | speed-up | loss reached |")
        print("|---|---|---|---|---|")
        for row in rows:
            speedup = None if row["seconds"] is None else base / row["seconds"]
            print(f"| {row['impl']} | {_fmt(row['evals'], 'd')} | {_fmt(row['seconds'], '.1f')} | "
                  f"{_fmt(speedup, '.2f')}{'x' if speedup else ''} | {_fmt(row['loss'], '.6g')} |", flush=True)
    if args.run_size:
        print(f"\n## One L-BFGS run: {race_backbone}, {args.run_size} px, {args.run_evals} evaluations, "
              f"after a 5-evaluation warm-up; final images scored by the reference's fp32 loss\n")
        _race_table(["implementation", "evaluations", "seconds", "ms/evaluation", "speed-up", "final loss"],
                    run_race(race_backbone, args.run_size, args.run_evals, args.device, with_bf16),
                    lambda row, base: [row["impl"], str(row["evals"]), f"{row['seconds']:.2f}",
                                       f"{1000 * row['seconds'] / row['evals']:.1f}",
                                       f"{base / row['seconds']:.2f}x", f"{row['loss']:.6g}"])
    if args.sweep_size:
        print(f"\n## Ratio sweep: {race_backbone}, {args.sweep_size} px, 6 members (beta "
              f"{', '.join(f'{b:g}' for b in RATIO_BETAS)}), {args.sweep_evals} L-BFGS evaluations each, "
              f"wall time including start-up\n")
        _race_table(["mode", "seconds", "optimising s (run.json)", "wall / optimising", "speed-up"],
                    sweep_race(race_backbone, args.sweep_size, args.sweep_evals, args.device, with_bf16),
                    lambda row, base: [row["mode"], f"{row['seconds']:.1f}",
                                       f"{row['optimising']:.1f}" if row.get("optimising") else "-",
                                       f"{row['seconds'] / row['optimising']:.1f}" if row.get("optimising") else "-",
                                       f"{base / row['seconds']:.2f}x"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
