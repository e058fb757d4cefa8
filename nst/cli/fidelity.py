"""``make fidelity``: does the ratio experiment still reproduce? (seed Figure 5, Gatys et al. Fig. 3)

Runs the seed's ratio sweep (alpha = 1, beta = 1e-2 ... 1e4) through the real
``nst`` command on sample pairs, then prints per beta the final content and
style losses and the structural similarity (SSIM) of the result to the content
image, and exits 1 unless, on every pair,

- SSIM falls monotonically as beta grows (within ``--tolerance``),
- SSIM is at least ``--min-photo`` at alpha/beta = 100 (a lightly textured photo),
- SSIM at alpha/beta = 1e-4 is at least ``--min-drop`` below that (a texture).

SSIM is grayscale with a Gaussian window of sigma 1.5 (Wang et al. 2004, as
scikit-image computes it), the content resized to the result's size. For scale:
an unrelated painting scores 0.05-0.25 against a photo. SSIM sees structure,
not colour: it measures how much of the photo survives, which is the axis the
figure is about, and the printed grid is there for a person to judge the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from nst.engine.run_files import result_png
from nst.images import measures

# a landscape and a swirling painting, a portrait and an abstract, and the pair whose jobs ended furthest from
# converged among the samples (docs/pages/reproducing.md)
PAIRS = ("tubingen:starry_night", "mona_lisa:composition_vii", "tubingen:shipwreck")
BETAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e4)  # conf/sweep/ratio.yaml, the seed's grid


def ssim_to_content(result: Path, content: Path) -> float:
    """Grayscale SSIM (Gaussian window, sigma 1.5) of the ``result`` file to the ``content`` file resized to
    it: ``nst.measures.ssim_to_content``, the ``auto.ssim_content`` metric of every run."""
    with Image.open(result) as image, Image.open(content) as reference:
        return measures.ssim_to_content(image, reference)


def checkerboard_energy(path: Path) -> float:
    """Pixel-level noise: mean |2x2 checkerboard response| in 0-255 grey levels.

    ``|a - b - c + d| / 4`` over every 2x2 block is zero on any plane or edge and
    largest on the one-pixel checkerboard that optimising through strided VGG
    layers leaves behind; photos at these sizes score about 1-3.
    """
    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    response = grey[:-1, :-1] - grey[1:, :-1] - grey[:-1, 1:] + grey[1:, 1:]
    return float(np.abs(response).mean() / 4)


@dataclass
class Row:
    beta: float
    content: float
    style: float
    ssim: float
    evaluations: int
    noise: float
    converged: bool = False


def run_pair(content: str, style: str, size: int, epochs: int, model: str, folder: Path,
             extra: list[str]) -> list[Row]:
    """The ratio sweep on one pair, through the ``nst`` command; one row per beta, in grid order."""
    command = [sys.executable, "-m", "nst.cli", "sweep=ratio", f"content={content}", f"style={style}",
               f"model={model}", f"image.size={size}", f"epochs={epochs}", "progress=false",
               f"hydra.sweep.dir={folder}", *extra]
    # tracked in a store of its own beside the sweeps, so the check also draws the sweep's grid
    env = {**os.environ, "NST_OUTPUT_DIR": str(folder.parent)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"nst fidelity: the sweep failed ({' '.join(command)}):\n{done.stderr[-2000:]}")
    return read_rows(folder)


def read_rows(folder: Path) -> list[Row]:
    """One row per job of a finished ratio sweep folder, by beta."""
    rows = []
    for job in (p for p in folder.iterdir() if p.name.isdigit()):
        record = json.loads((job / "run.json").read_text())
        beta = float(OmegaConf.load(job / "config.yaml").loss.style_weight)
        rows.append(Row(beta, record["final_losses"]["content"], record["final_losses"]["style"],
                        ssim_to_content(result_png(job, record), Path(record["content_image"])),
                        int(record["evaluations"]), checkerboard_energy(result_png(job, record)),
                        record.get("stopped") == "converged"))
    return sorted(rows, key=lambda r: r.beta)


def problems(rows: list[Row], tolerance: float, min_photo: float, min_drop: float) -> list[str]:
    """What makes a pair's progression fail the check (empty: it reproduces)."""
    found = []
    for before, after in zip(rows, rows[1:], strict=False):
        if after.ssim > before.ssim + tolerance:
            found.append(f"SSIM rises from {before.ssim:.3f} at beta={before.beta:g} to {after.ssim:.3f} "
                         f"at beta={after.beta:g}")
    ssim = [r.ssim for r in rows]
    if ssim[0] < min_photo:
        found.append(f"SSIM {ssim[0]:.3f} at alpha/beta={1 / rows[0].beta:g} is below {min_photo}")
    if ssim[0] - ssim[-1] < min_drop:
        found.append(f"SSIM falls by {ssim[0] - ssim[-1]:.3f} from alpha/beta={1 / rows[0].beta:g} to "
                     f"{1 / rows[-1].beta:g}; at least {min_drop} is needed")
    return found


def table(pair: str, rows: list[Row]) -> str:
    lines = [f"### {pair}", "| beta | alpha/beta | content loss | style loss | SSIM to content | checkerboard "
             "| evaluations | converged |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.beta:g} | {1 / r.beta:g} | {r.content:.4g} | {r.style:.4g} | {r.ssim:.3f} | {r.noise:.2f} "
              f"| {r.evaluations} | {'yes' if r.converged else 'no (budget)'} |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nst.cli.fidelity", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), help="content:style sample names or paths")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--model", default="vgg16_hed")
    parser.add_argument("--tolerance", type=float, default=0.01,
                        help="SSIM rise between neighbours still counted as flat (two converged textures differ by ~0.005)")
    parser.add_argument("--min-photo", type=float, default=0.6)
    parser.add_argument("--min-drop", type=float, default=0.25)
    parser.add_argument("--out", type=Path, default=None, help="sweep folders (default: a temporary folder)")
    parser.add_argument("overrides", nargs="*", help="extra nst overrides, e.g. loss.tv_weight=0")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="nst-fidelity-"))
    failed = False
    for pair in args.pairs:
        content, style = pair.split(":")
        start = time.perf_counter()
        rows = run_pair(content, style, args.size, args.epochs, args.model, out / f"{content}_{style}",
                        args.overrides)
        print(table(f"{content} + {style}, {args.model}, {args.size} px, {args.epochs} epochs "
                    f"({time.perf_counter() - start:.0f} s)", rows))
        for problem in problems(rows, args.tolerance, args.min_photo, args.min_drop):
            failed = True
            print(f"FAIL: {problem}")
        print(f"grid: {out / f'{content}_{style}' / 'grid.png'}\n", flush=True)
    print("fidelity: " + ("the ratio experiment does NOT reproduce" if failed else "the ratio experiment reproduces"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
