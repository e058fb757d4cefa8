"""``make search-comparison``: does the Pareto search find better trade-offs than random settings?

On each pair it runs, through the real ``nst`` command and into a store of its own:

- ``sweep=pareto`` with Optuna's multi-objective TPE, ``--trials`` trials;
- the same search with ``hydra.sweeper.sampler=random`` and the same seed (the same space, the same number
  of trials: TPE's first, random, trials are the same settings, which the jobs' resume runs once);
- the seed's ratio grid (``sweep=ratio``, six betas) on the same backbone, size and epochs.

It prints, per pair, the hypervolume of each one's points (the area of the objective plane their front
beats, against one reference point per pair: ``nst.compare.pareto.reference_point`` of all the points), and
writes a page per pair and search (``<folder>/<pair>-<sampler>.html``) with the grid's six runs on the plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from nst.compare import pareto
from nst.engine.run_files import RECORD_JSON
from nst.tracking import store

PAIRS = (("tubingen", "starry_night"), ("golden_gate", "the_scream"))
SAMPLERS = ("tpe", "random")


def run_nst(folder: Path, *overrides: str) -> None:
    """``nst`` with ``overrides``, its outputs and store under ``folder``; raises with its last lines if it
    fails."""
    env = {**os.environ, "NST_OUTPUT_DIR": str(folder)}
    done = subprocess.run([sys.executable, "-m", "nst.cli", *overrides, "progress=false"], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"nst {' '.join(overrides)} exited {done.returncode}:\n{done.stderr[-2000:]}")


def newest_sweep(folder: Path, before: set[Path]) -> Path:
    (found,) = set((folder / "multiruns").iterdir()) - before
    return found


def grid_points(sweep_dir: Path, objectives: list[str]) -> list[dict]:
    """The grid's runs as extra points of the page: label and the two objectives from each run.json."""
    points = []
    for record_file in sorted(sweep_dir.glob(f"*/{RECORD_JSON}")):
        record = json.loads(record_file.read_text())
        measures = record.get("measures", {})
        beta = record.get("loss_weights", {}).get("style")
        points.append({"label": f"grid β={beta:g}", "x": measures.get(objectives[1]),
                       "y": measures.get(objectives[0]), "values": [measures.get(k) for k in objectives]})
    return points


def compare_pair(content: str, style: str, common: list[str], trials: int, folder: Path) -> dict:
    """Run the two searches and the grid on one pair; their hypervolumes and pages."""
    pair = f"{content}+{style}"
    (folder / "multiruns").mkdir(parents=True, exist_ok=True)
    studies = {}
    for sampler in SAMPLERS:
        before = set((folder / "multiruns").iterdir())
        run_nst(folder, "sweep=pareto", f"content={content}", f"style={style}", *common,
                f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.sampler={sampler}")
        studies[sampler] = pareto.read_study(newest_sweep(folder, before))
    before = set((folder / "multiruns").iterdir())
    run_nst(folder, "sweep=ratio", f"content={content}", f"style={style}", *common)
    objectives = list(studies["tpe"].objectives)
    grid = grid_points(newest_sweep(folder, before), objectives)
    directions = studies["tpe"].directions
    everything = [p for s in studies.values() for p, ok in zip(s.points, s.complete, strict=True) if ok]
    everything += [g["values"] for g in grid]
    reference = pareto.reference_point(everything, directions)
    volumes = {sampler: pareto.hypervolume(s.points, directions, reference) for sampler, s in studies.items()}
    volumes["grid"] = pareto.hypervolume([g["values"] for g in grid], directions, reference)
    os.environ["NST_OUTPUT_DIR"] = str(folder)
    client = store.open_store(store.store_uri())
    for sampler, study in studies.items():
        with tempfile.TemporaryDirectory() as scratch:
            images = pareto.trial_images(client, study, Path(scratch))
        page = folder / f"{pair}-{sampler}.html"
        page.write_text(pareto.render_page(study, images, extra=grid), encoding="utf-8")
    return {"pair": pair, "reference": reference, "hypervolume": volumes,
            "front": {sampler: int(sum(study.on_front)) for sampler, study in studies.items()},
            "by_trial": {sampler: pareto.hypervolume_by_trial(study.table, study.objectives, reference)
                         for sampler, study in studies.items()}}


def main(argv: list[str] | None = None) -> int:
    """``make search-comparison``: Optuna's TPE against random settings and the ratio grid, on two pairs."""
    parser = argparse.ArgumentParser(prog="search-comparison", description=main.__doc__)
    parser.add_argument("--folder", type=Path, default=Path("outputs/search-comparison"))
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--model", default="vgg16_hed")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    common = [f"model={args.model}", f"image.size={args.size}", f"epochs={args.epochs}"]
    results = []
    for content, style in PAIRS:
        result = compare_pair(content, style, common, args.trials, args.folder.resolve())
        results.append(result)
        volumes = result["hypervolume"]
        print(f"{result['pair']}: hypervolume tpe {volumes['tpe']:.4f} ({result['front']['tpe']} on the front), "
              f"random {volumes['random']:.4f} ({result['front']['random']} on the front), ratio grid "
              f"{volumes['grid']:.4f}; tpe/random {volumes['tpe'] / volumes['random']:.2f}", flush=True)
    (args.folder / "comparison.json").write_text(json.dumps(results, indent=1))
    print(f"pages and comparison.json in {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
