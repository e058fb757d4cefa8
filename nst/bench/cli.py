"""``make bench``: cost of one function evaluation, against a plain reference and the roofline.

Prints markdown tables, each row as soon as it is measured:

* the cost of one evaluation (forward + backward) per backbone and size, nst against the
  reference (``nst.bench.reference``) and the roofline, each measured in a process of its own;
* time to quality: how soon the reference and nst's rows (fp32, bf16, coarse-to-fine,
  recoloured start) reach the best loss of a reference run + 5 %;
* optionally (``--run-size``) one L-BFGS run of ``--run-evals`` evaluations;
* the 6-member ratio sweep: six reference processes against ``nst -m`` (one job after another,
  and ``hydra/launcher=batched``);
* the phases of one run (``nst.bench.run_phases``): the ``nst`` command tracked and untracked, where its
  seconds go (run.json's phases) and how many lie outside the optimisation;
* the ratio sweep tracked into a new store: its wall time against its jobs' optimisation seconds.

bf16 rows appear only on devices with bfloat16 hardware (``--bf16 always``).

    python -m nst.bench                      # default: about 12 min on 2 CPU cores
    python -m nst.bench --sizes --quality-size 0 --sweep-size 0    # only the rows around the optimisation
    python -m nst.bench --sizes 128 256 --evals 5 --quality-size 256 --sweep-size 256
    python -m nst.bench --device cuda --sizes 128 256 512 --evals 20 --quality-size 512 \\
        --run-size 512 --run-evals 500 --sweep-size 512 --sweep-evals 300
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from nst.bench.races import (
    QUALITY_VARIANTS,
    RATIO_BETAS,
    available_backbones,
    measure_in_subprocess,
    measure_one,
    reference_sweep_job,
    run_race,
    save_quality_images,
    store_sweep_race,
    sweep_race,
    time_to_quality,
)
from nst.bench.reference import CONTENT_LAYERS, STYLE_LAYERS, evaluation_flops, matmul_gflops
from nst.bench.run_phases import BUDGET, medians, phases_race
from nst.engine import cuda_graphs
from nst.engine.backbones import SPECS, layer_table
from nst.engine.calibration import CALIBRATIONS
from nst.engine.devices import native_bf16, tune
from nst.phases import ORDER


def main(argv: list[str] | None = None) -> int:
    """Print the tables the options ask for (or run one hidden measurement for a parent bench)."""
    parser = _parser()
    args = parser.parse_args(argv)
    tune(torch.device(args.device))
    if args.sizes and min(args.sizes) < 64:
        parser.error("sizes must be >= 64 px: the reference runs to pool5, which needs 32 px per side")
    if args.one or args.reference_job:
        _one_measurement(args)
        return 0
    backbones = args.backbones or available_backbones()
    rate, with_bf16 = _print_machine(args)
    if args.sizes:
        _print_costs(args, backbones, rate, with_bf16)
    race_backbone = backbones[-1] if len(backbones) > 1 else backbones[0]  # a pretrained one if any
    if args.quality_size:
        _print_time_to_quality(args, race_backbone, with_bf16)
    if args.run_size:
        _print_run_race(args, race_backbone, with_bf16)
    if args.sweep_size:
        _print_sweep_race(args, race_backbone, with_bf16)
    if args.phases_size:
        _print_phases(args, race_backbone)
    if args.store_sweep_size:
        _print_store_sweep(args, race_backbone)
    return 0


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument("--phases-size", type=int, default=256,
                        help="image.size of the phases-of-one-run table; 0 skips it")
    parser.add_argument("--phases-runs", type=int, default=3, help="runs per mode (tracked, untracked) of that table")
    parser.add_argument("--store-sweep-size", type=int, default=128,
                        help="image.size of the tracked ratio sweep into a new store; 0 skips it")
    parser.add_argument("--store-sweep-runs", type=int, default=3, help="repetitions of that sweep, each a new store")
    parser.add_argument("--bf16", choices=["auto", "always", "never"], default="auto",
                        help="bf16 rows; auto: only where the device has bfloat16 hardware (emulated bf16 is slow)")
    # one measurement in a process of its own, for the parent bench (nst.bench.races)
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "BACKBONE", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--reference-job", nargs=4, metavar=("BACKBONE", "SIZE", "BETA", "EVALS"),
                        help=argparse.SUPPRESS)
    return parser


def _one_measurement(args: argparse.Namespace) -> None:
    """``--one`` (one implementation's cost, as JSON) or ``--reference-job`` (one reference sweep member's
    final loss): the last line of stdout is what the parent reads."""
    if args.one:
        impl, backbone, size = args.one
        print(json.dumps(measure_one(impl, backbone, int(size), args.evals, args.device)))
    else:
        backbone, size, beta, evals = args.reference_job
        print(reference_sweep_job(backbone, int(size), float(beta), int(evals), args.device))


def _print_machine(args: argparse.Namespace) -> tuple[float, bool]:
    """The device, its matmul rate and whether bf16 rows run: the numbers' context. Returns both."""
    rate = matmul_gflops(device=args.device)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
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
    return rate, with_bf16


def _print_costs(args: argparse.Namespace, backbones: list[str], rate: float, with_bf16: bool) -> None:
    """The cost of one evaluation: a row per backbone and size."""
    print("## Cost of one evaluation (forward + backward), median of", args.evals, "\n")
    print("| backbone | size | GFLOP/eval | roofline ms | nst ms/eval | % of roofline | nst bf16 ms/eval "
          "| reference ms/eval | reference / nst | reference / nst bf16 | nst peak MiB | reference peak MiB "
          "| nst CUDA graph ms/eval | reference / nst CUDA graph |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for backbone in backbones:
        for size in args.sizes:
            print(_cost_row(backbone, size, args.evals, args.device, rate, with_bf16), flush=True)


def _cost_row(backbone: str, size: int, evals: int, device: str, rate: float, with_bf16: bool) -> str:
    """One backbone at one size: each implementation measured in its own process, against the roofline."""
    arch = SPECS[backbone].arch
    depth = max(layer_table(arch)[n].index for n in CONTENT_LAYERS + STYLE_LAYERS)
    ours = measure_in_subprocess("nst", backbone, size, evals, device)
    bf16 = measure_in_subprocess("nst-bf16", backbone, size, evals, device) if with_bf16 else None
    graph = (measure_in_subprocess("nst-graph", backbone, size, evals, device)
             if cuda_graphs.available(torch.device(device), "fp32") else None)
    ref = measure_in_subprocess("reference", backbone, size, evals, device)
    flops = evaluation_flops(arch, depth, ours["height"], ours["width"])
    roofline = flops / (rate * 1e9) * 1000
    bf16_ms, bf16_ratio = (_ms(bf16["ms"]), f"{ref['ms'] / bf16['ms']:.2f}x") if bf16 else ("skipped", "-")
    graph_ms, graph_ratio = ((_ms(graph["ms"]), f"{ref['ms'] / graph['ms']:.2f}x") if graph
                             else ("n/a (CUDA only)", "-"))
    return (f"| {backbone} ({arch}) | {ours['width']}x{ours['height']} | {flops / 1e9:.1f} | "
            f"{_ms(roofline)} | {_ms(ours['ms'])} | {100 * roofline / ours['ms']:.0f} % | {bf16_ms} | "
            f"{_ms(ref['ms'])} | {ref['ms'] / ours['ms']:.2f}x | {bf16_ratio} | "
            f"{ours['peak_mib']:.0f} | {ref['peak_mib']:.0f} | {graph_ms} | {graph_ratio} |")


def _print_time_to_quality(args: argparse.Namespace, backbone: str, with_bf16: bool) -> None:
    """The time-to-quality race (and its images and trace with ``--quality-images``)."""
    print(f"\n## Time to quality: {backbone}, {args.quality_size} px, loss within 5 % of the best of "
          f"a {args.quality_evals}-evaluation reference L-BFGS run, model.calibration={args.quality_calibration}\n")
    images: dict[str, torch.Tensor] = {}
    rows = time_to_quality(backbone, args.quality_size, args.quality_evals, args.device, with_bf16, images,
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


def _print_run_race(args: argparse.Namespace, backbone: str, with_bf16: bool) -> None:
    """One L-BFGS run of a fixed budget, each implementation's final image on the reference's loss."""
    print(f"\n## One L-BFGS run: {backbone}, {args.run_size} px, {args.run_evals} evaluations, "
          f"after a 5-evaluation warm-up; final images scored by the reference's fp32 loss\n")
    _race_table(["implementation", "evaluations", "seconds", "ms/evaluation", "speed-up", "final loss"],
                run_race(backbone, args.run_size, args.run_evals, args.device, with_bf16),
                lambda row, base: [row["impl"], str(row["evals"]), f"{row['seconds']:.2f}",
                                   f"{1000 * row['seconds'] / row['evals']:.1f}",
                                   f"{base / row['seconds']:.2f}x", f"{row['loss']:.6g}"])


def _print_sweep_race(args: argparse.Namespace, backbone: str, with_bf16: bool) -> None:
    """The ratio sweep: wall time (start-up included) and the optimisation seconds the runs record."""
    print(f"\n## Ratio sweep: {backbone}, {args.sweep_size} px, 6 members (beta "
          f"{', '.join(f'{b:g}' for b in RATIO_BETAS)}), {args.sweep_evals} L-BFGS evaluations each, "
          f"wall time including start-up\n")
    _race_table(["mode", "seconds", "optimising s (run.json)", "wall / optimising", "speed-up"],
                sweep_race(backbone, args.sweep_size, args.sweep_evals, args.device, with_bf16),
                lambda row, base: [row["mode"], f"{row['seconds']:.1f}",
                                   f"{row['optimising']:.1f}" if row.get("optimising") else "-",
                                   f"{row['seconds'] / row['optimising']:.1f}" if row.get("optimising") else "-",
                                   f"{base / row['seconds']:.2f}x"])


def _print_phases(args: argparse.Namespace, backbone: str) -> None:
    """The phases of one run, a row per run as it ends, then each mode's medians."""
    print(f"\n## Phases of one run: nst content=tubingen style=starry_night model={backbone} "
          f"image.size={args.phases_size} {' '.join(BUDGET)} progress=false; {args.phases_runs} runs per mode, "
          f"tracked and untracked (tracking=none) alternately; tracked: into an existing store (created by an "
          f"untimed tracked run first); seconds; wall: measured around the process\n")
    columns = ["run", "mode", *ORDER, "wall", "optimisation loop (elapsed_s)", "outside the optimisation",
               "start + exit (wall - phases)"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    rows = []
    for row in phases_race(backbone, args.phases_size, args.phases_runs, args.device):
        rows.append(row)
        print(_phases_row(row), flush=True)
    for mode in dict.fromkeys(row["mode"] for row in rows):
        print(_phases_row(medians(rows, mode)), flush=True)


def _phases_row(row: dict) -> str:
    """One run's (or a mode's medians') cells: its phases in ``nst.phases.ORDER``, then its totals."""
    cells = [str(row["run"]), row["mode"], *(_fmt(row["phases"].get(name), ".2f") for name in ORDER),
             *(f"{row[key]:.2f}" for key in ("wall", "elapsed", "outside", "exit"))]
    return "| " + " | ".join(cells) + " |"


def _print_store_sweep(args: argparse.Namespace, backbone: str) -> None:
    """The tracked ratio sweep into a new store, a row per repetition as it ends, then the medians."""
    print(f"\n## Ratio sweep into a new store: nst sweep=ratio content=tubingen style=starry_night "
          f"model={backbone} image.size={args.store_sweep_size} epochs=2 progress=false, tracked (the local "
          f"store, new each repetition); wall / optimising: target <= 1.5\n")
    print("| repetition | wall s | optimising s (sum of the 6 jobs' elapsed_s) | wall / optimising |")
    print("|---|---|---|---|")
    rows = []
    for index, row in enumerate(store_sweep_race(backbone, args.store_sweep_size, args.store_sweep_runs,
                                                 args.device), start=1):
        rows.append(row)
        print(_store_sweep_row(str(index), row["seconds"], row["optimising"]), flush=True)
    print(_store_sweep_row("median", statistics.median(row["seconds"] for row in rows),
                           statistics.median(row["optimising"] for row in rows)), flush=True)


def _store_sweep_row(label: str, wall: float, optimising: float) -> str:
    """One repetition's (or the medians') cells: the ratio from the two seconds it shows beside it."""
    return f"| {label} | {wall:.2f} | {optimising:.2f} | {wall / optimising:.2f} |"


def _race_table(columns: list[str], rows: Iterator[dict], cells: Callable[[dict, float], list[str]]) -> None:
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
    """``value`` formatted, or "not reached" for a row that never got there."""
    return "not reached" if value is None else format(value, spec)
