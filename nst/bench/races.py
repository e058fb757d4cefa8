"""The measurements: nst against the plain reference (``nst.bench.reference``), per evaluation and end to end.

* ``measure_one``: the cost (median ms, peak memory) of one evaluation, in a process of its own;
* ``time_to_quality``: how soon the reference and nst's rows reach the reference's best loss + 5 %,
  nst's rows run as a user's run is (a ``RunSpec`` through ``nst.engine.scales.optimize_scales``);
* ``run_race``: one L-BFGS run of a fixed budget;
* ``sweep_race``: the 6-member ratio sweep, as separate reference processes and as ``nst -m``;
* ``store_sweep_race``: the ratio sweep tracked, each time into a new store: its wall time against the
  seconds its jobs optimise.

``run_nst`` runs the ``nst`` command as a user does, for these races and ``nst.bench.run_phases``.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from nst.bench.reference import (
    CONTENT,
    CONTENT_LAYERS,
    STYLE,
    STYLE_LAYERS,
    ReferenceLoss,
    nst_loss,
    reference_lbfgs,
    reference_loss,
    sample_pair,
    synchronize,
)
from nst.engine import cuda_graphs, schedule
from nst.engine.backbones import Backbone
from nst.engine.calibration import calibrate
from nst.engine.inputs import Inputs, load_inputs
from nst.engine.losses import LossWeights
from nst.engine.optimization import OptimizerSettings, optimize
from nst.engine.run import member_weights
from nst.engine.scales import optimize_scales
from nst.engine.spec import MemberSpec, RunSpec, SharedSpec
from nst.engine.weights import load_backbone
from nst.errors import NSTError
from nst.figures.grid import comparison_grid
from nst.images.files import tensor_to_pil

RATIO_BETAS = [1e-2, 1e-1, 1.0, 10.0, 100.0, 1e4]
QUALITY_MARGIN = 1.05  # "reached the quality": total loss within 5 % of the reference's best


class QualityVariant(NamedTuple):
    """One nst row of the time-to-quality race: how its run differs from a plain fp32 run."""

    label: str
    precision: str
    init: str
    coarse_to_fine: bool  # image.scales=auto


QUALITY_VARIANTS = {
    "fp32": QualityVariant("nst (fp32)", "fp32", "content", False),
    "bf16": QualityVariant("nst (bf16, fixed step)", "bf16", "content", False),
    "coarse_to_fine": QualityVariant("nst (fp32, coarse-to-fine, image.scales=auto)", "fp32", "content", True),
    "recolored": QualityVariant("nst (fp32, init=recolored_content)", "fp32", "recolored_content", False),
}


class Reached(Exception):
    """Raised by a row's callback once its image reached the target: the run has nothing left to show."""


def bench_inputs(backbone: str, size: int, device: str, variant: QualityVariant, budget: int,
                 calibration: str = "rms_activation", style_weight: float = 100.0) -> Inputs:
    """The inputs ``nst content=tubingen style=starry_night model=<backbone> image.size=<size>`` would
    have for ``variant`` (the paper's layers, beta ``style_weight``, no TV), loaded and checked as a
    user's run is, so that the race times what a user runs.

    A plain row is one L-BFGS epoch of ``budget`` iterations (the reference's loop); bf16 takes the
    fixed step (its rounding noise defeats the strong-Wolfe search). The coarse-to-fine row is
    ``image.scales=auto`` with conf's L-BFGS epoch (20 iterations) and ``ceil(budget / 20)`` epochs
    at the full size, the coarse scales' epochs from ``nst.engine.schedule.coarse_to_fine``.
    """
    line_search = "strong_wolfe" if variant.precision == "fp32" else None
    if variant.coarse_to_fine:
        optimizer = OptimizerSettings(tolerance_grad=0, tolerance_change=0, line_search=line_search)
        scales = schedule.coarse_to_fine(size, math.ceil(budget / optimizer.max_iter))
    else:
        optimizer = OptimizerSettings(max_iter=budget, tolerance_grad=0, tolerance_change=0,
                                      line_search=line_search)
        scales = [(size, 1)]
    shared = SharedSpec(
        content=CONTENT, styles=(STYLE,), style_blend=(1.0,), style_masks=None, color_preservation="none",
        color_histogram="cholesky", model=backbone, pooling="max", calibration=calibration,
        precision=variant.precision, normalization="reference", content_layers=tuple(CONTENT_LAYERS),
        style_layers=tuple(STYLE_LAYERS), size=size, style_scale=1.0, scales=tuple(s for s, _ in scales),
        device=str(device))
    member = MemberSpec(
        content_weight=1.0, style_weight=style_weight, tv_weight=0.0, content_layer_weights=None,
        style_layer_weights=None, optimizer=optimizer, scale_epochs=tuple(e for _, e in scales),
        init=variant.init, seed=0, progress=False, video=False)
    return load_inputs(RunSpec(shared, member, config={}, config_yaml=""))


def time_to_quality(backbone: str, size: int, reference_evals: int, device: str, bf16: bool = True,
                    images: dict[str, torch.Tensor] | None = None, calibration: str = "rms_activation",
                    variants: Sequence[str] = tuple(QUALITY_VARIANTS)) -> list[dict]:
    """How long the reference and nst's ``variants`` (``QUALITY_VARIANTS``) take to reach the reference's
    best loss + 5 %: a row per implementation, the reference first (impl, evals, seconds, loss reached,
    best, target, its trace); evals, seconds and loss are None for a row that never reached it.

    The loss is the one a run optimises with ``model.calibration=calibration`` (the reference divides
    its activations by the same factors), since a race on another loss says nothing about a run.
    ``images``, if given, receives content, style, the reference's last image and each nst row's
    image when it reached the target: a loss within 5 % is not the same picture.
    """
    content, style = sample_pair(size, device)
    loaded = load_backbone(backbone, CONTENT_LAYERS + STYLE_LAYERS, device=device)
    calibrate(loaded, calibration, [content, style], [CONTENT, STYLE])
    reference = reference_loss(backbone, loaded, content, style, device)
    if images is not None:
        images.update(content=content, style=style)
    first = _reference_row(reference, content, reference_evals, images)
    rows = [first]
    for variant in (QUALITY_VARIANTS[name] for name in variants):
        if variant.precision == "bf16" and not bf16:
            continue
        inputs = bench_inputs(backbone, size, device, variant, reference_evals, calibration)
        rows.append({**_nst_row(inputs, loaded, reference, first["target"], variant.label, images),
                     "best": first["best"], "target": first["target"]})
    return rows


def _reference_row(reference: ReferenceLoss, content: torch.Tensor, evaluations: int,
                   images: dict[str, torch.Tensor] | None) -> dict:
    """The reference's run, which sets the target (its best + 5 %) and reaches it first by definition."""
    optimised: dict[str, torch.Tensor] = {}  # the reference's variable (one tensor, changed in place)
    trace = reference_lbfgs(reference, content, evaluations, on_eval=lambda x: optimised.update(x=x))
    if images is not None:
        images.update(reference=reference.preprocess.inverse(optimised["x"].detach()))
    best = min(value for _, value in trace)
    target = best * QUALITY_MARGIN
    reached = next(i for i, (_, value) in enumerate(trace) if value <= target)
    return {"impl": "reference (fp32)", "evals": reached + 1, "seconds": trace[reached][0],
            "loss": trace[reached][1], "best": best, "target": target,
            "trace": [{"evaluation": i + 1, "elapsed_s": seconds, "total": value}
                      for i, (seconds, value) in enumerate(trace)]}


def _nst_row(inputs: Inputs, loaded: Backbone, reference: ReferenceLoss, target: float, label: str,
             images: dict[str, torch.Tensor] | None) -> dict:
    """One nst run through the engine's scales, stopped when its full-size image reaches ``target``.

    Its trace holds every record (coarse scales' too, numbered across scales); seconds are wall
    time since the run began (per-scale targets and the start image on the clock), less the bf16
    rows' scoring by the fp32 reference loss (every 5th evaluation), which a run would not do.
    """
    size, fp32 = inputs.spec.shared.size, inputs.spec.shared.precision == "fp32"
    trace: list[dict] = []
    state = {"excluded": 0.0, "loss": None}
    start = time.perf_counter()

    def score(record: dict, image: torch.Tensor) -> None:
        trace.append({**record, "elapsed_s": time.perf_counter() - start - state["excluded"]})
        if record.get("scale", size) != size or not (fp32 or record["evaluation"] % 5 == 0):
            return
        if fp32:  # nst's fp32 loss is the reference's loss (tested)
            value = record["total"]
        else:
            begin = time.perf_counter()
            with torch.no_grad():
                value = float(reference(image))
            state["excluded"] += time.perf_counter() - begin
        if value <= target:
            state["loss"] = value
            if images is not None:
                images[label] = image.detach().clone()
            raise Reached

    weights = LossWeights.stack([member_weights(inputs)], inputs.device)
    try:  # a callback's exception leaves optimize_batch (and unwinds the member's optimiser)
        (outcome,) = optimize_scales([inputs], [[score]], loaded, weights)
    except Reached:
        outcome = None
    if isinstance(outcome, BaseException):  # a non-finite loss: the row failed, not merely slow
        raise outcome
    reached = state["loss"] is not None
    return {"impl": label, "evals": trace[-1]["evaluation"] if reached else None,
            "seconds": trace[-1]["elapsed_s"] if reached else None, "loss": state["loss"], "trace": trace}


def save_quality_images(images: dict[str, torch.Tensor], rows: list[dict], folder: Path) -> Path:
    """content | style | the reference's last image | each nst row's image when it reached the target,
    as one picture (its path returned), and beside it ``quality_trace.csv`` (``save_quality_trace``)."""
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
    """One line per evaluation of every row (column ``impl``; nst's rows per term and layer, with
    ``scale`` at coarse-to-fine's scales), evaluations and seconds counted as the table counts them:
    the table says how soon, the trace says why."""
    import pandas as pd  # the bench's own dependency; a run never imports it at start-up

    pd.DataFrame([{"impl": row["impl"], **record} for row in rows for record in row["trace"]]).to_csv(
        path, index=False)


def run_race(backbone: str, size: int, evaluations: int, device: str, bf16: bool = True) -> Iterator[dict]:
    """Wall time of one L-BFGS run of ``evaluations`` evaluations, reference against nst's modes, a row
    (impl, evals, seconds, loss) at a time.

    Each implementation first runs 5 evaluations untimed (cuDNN's algorithm search, the allocator's
    first requests); every final image is scored with the reference's fp32 loss, off the clock, so
    that the rows compare on one loss.
    """
    content, style = sample_pair(size, device)
    loaded = load_backbone(backbone, CONTENT_LAYERS + STYLE_LAYERS, device=device)
    reference = reference_loss(backbone, loaded, content, style, device)
    reference_lbfgs(reference, content, 5)
    synchronize(device)
    start = time.perf_counter()
    trace = reference_lbfgs(reference, content, evaluations)
    synchronize(device)
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
            synchronize(device)
            start = time.perf_counter()
            result = optimize(loss, content, settings, 1, progress=False, preprocess=loaded.extractor.preprocess)
            synchronize(device)
            seconds = time.perf_counter() - start
        with torch.no_grad():
            scored = float(reference(result.image))
        yield {"impl": label, "evals": result.evaluations, "seconds": seconds, "loss": scored}


def reference_sweep_job(backbone: str, size: int, beta: float, evaluations: int, device: str) -> float:
    """One member of the reference sweep, as its own process would run it (targets recomputed); its
    final loss."""
    content, style = sample_pair(size, device)
    loaded = load_backbone(backbone, CONTENT_LAYERS + STYLE_LAYERS, device=device)
    trace = reference_lbfgs(reference_loss(backbone, loaded, content, style, device, style_weight=beta),
                            content, evaluations)
    return trace[-1][1]


def sweep_race(backbone: str, size: int, evaluations: int, device: str, bf16: bool = True) -> Iterator[dict]:
    """Wall time of the 6-member ratio sweep, start-up included, a row (mode, seconds, optimising
    seconds from run.json) at a time: six reference processes against ``nst -m``'s modes."""
    start = time.perf_counter()
    for beta in RATIO_BETAS:
        _run_bench(["--reference-job", backbone, str(size), str(beta), str(evaluations), "--device", device], 7200)
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
            started = time.time()
            seconds = run_nst([*sweep, *pair_overrides(backbone, size, device), "epochs=1",
                               f"optimizer.max_iter={evaluations}", f"optimizer.max_eval={evaluations}",
                               "optimizer.tolerance_grad=0", "optimizer.tolerance_change=0", "tracking=none",
                               *(extra or [])], Path(out))
            yield {"mode": label, "seconds": seconds, "optimising": _optimising_seconds(Path(out), started)}


def store_sweep_race(backbone: str, size: int, repetitions: int, device: str) -> Iterator[dict]:
    """The tracked ratio sweep (``nst sweep=ratio ... epochs=2``), each repetition in a new output folder
    and so a new MLflow store, a row at a time: its wall time (seconds), the sum of its jobs'
    optimisation seconds (``optimising``, run.json's elapsed_s) and their number (``jobs``).

    A first sweep pays for everything a store and a sweep cost once; the gap between the two
    numbers is what a user waits for beyond the optimisation.
    """
    for _ in range(repetitions):
        with tempfile.TemporaryDirectory() as root:
            out = Path(root)
            seconds = run_nst(["sweep=ratio", *pair_overrides(backbone, size, device), "epochs=2"], out)
            records = [json.loads(path.read_text()) for path in sorted(out.glob("multiruns/*/*/run.json"))]
        if len(records) != len(RATIO_BETAS):  # a sweep that lost a job would look fast
            raise RuntimeError(f"the ratio sweep wrote {len(records)} run.json, not {len(RATIO_BETAS)}")
        yield {"seconds": seconds, "optimising": sum(float(record["elapsed_s"]) for record in records),
               "jobs": len(records)}


def pair_overrides(backbone: str, size: int, device: str) -> list[str]:
    """The overrides every race's ``nst`` command shares: the sample pair, the backbone, the size, the
    device and no progress bar (whose drawing is no part of the work)."""
    return ["content=tubingen", "style=starry_night", f"model={backbone}", f"image.size={size}",
            "progress=false", f"device={device}"]


def run_nst(overrides: Sequence[str], out: Path, timeout: float = 7200) -> float:
    """Run ``nst <overrides>`` in a process of its own, writing under ``out`` (its NST_OUTPUT_DIR), to its
    end; the wall seconds from its start to its exit, as a user waits for it. A failed run raises
    (``_run``)."""
    start = time.perf_counter()
    _run([sys.executable, "-m", "nst.cli", *overrides], timeout, env={**os.environ, "NST_OUTPUT_DIR": str(out)})
    return time.perf_counter() - start


def _optimising_seconds(out: Path, since: float) -> float | None:
    """The optimisation seconds the runs written under ``out`` since ``since`` record (run.json's elapsed_s);
    the members of one batch all record the batch's seconds, counted once."""
    records = [json.loads(path.read_text()) for path in out.rglob("run.json") if path.stat().st_mtime >= since]
    return sum({float(record.get("elapsed_s") or 0) for record in records}) or None


def measure_one(impl: str, backbone: str, size: int, evals: int, device: str) -> dict:
    """ms per evaluation (median of ``evals``) and peak memory of one implementation (nst, nst-bf16,
    nst-graph or reference), in this process: run it in a fresh one (``measure_in_subprocess``) for
    the peak to be its own."""
    content, style = sample_pair(size, device)
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
        synchronize(device)
        start = time.perf_counter()
        image.grad = None
        evaluate(image).backward()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if index == warmup - 1 and str(device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()  # not cuDNN's one-off algorithm search
    if str(device).startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"ms": 1000 * statistics.median(times[warmup:]), "peak_mib": peak / 2**20,
            "height": content.shape[-2], "width": content.shape[-1], "arch": loaded.spec.arch}


def measure_in_subprocess(impl: str, backbone: str, size: int, evals: int, device: str) -> dict:
    """``measure_one`` in a process of its own, so that its peak memory is its own."""
    out = _run_bench(["--one", impl, backbone, str(size), "--evals", str(evals), "--device", device], 1800)
    return json.loads(out.strip().splitlines()[-1])


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


def _run_bench(arguments: list[str], timeout: float) -> str:
    """``python -m nst.bench`` with ``arguments`` (its hidden one-measurement modes); its stdout."""
    return _run([sys.executable, "-m", "nst.bench", *arguments], timeout)


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``command`` to its end; its stdout, or a RuntimeError with the end of its stderr if it failed
    (a race on a failed run would time nothing)."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    return done.stdout
