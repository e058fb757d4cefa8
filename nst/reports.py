"""Sweep reports built from MLflow alone: table, comparison grid, loss plot.

The same code serves the end of a multirun (``SweepCallback``) and the
``nst-report`` command, so a grid can always be rebuilt from the store.

    nst-report                         # every run of experiment "nst", Markdown
    nst-report --sweep latest          # the latest sweep: one row per job
    nst-report --sweep <run id> --format csv --rebuild reports/
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont

from nst import tracking
from nst.images import tensor_to_pil

WEIGHT_KEYS = ("loss.content_weight", "loss.style_weight")
TILE = 192


@dataclass
class SweepSummary:
    table: pd.DataFrame
    grid: Image.Image
    plot: Image.Image | None
    folder: Path


def _parse_overrides(text: str) -> dict[str, str]:
    try:
        items = json.loads(text)
    except (TypeError, ValueError):
        return {}
    out = {}
    for item in items:
        key, _, value = str(item).partition("=")
        out[key.lstrip("+~")] = value
    return out


def child_runs(client, parent_id: str) -> list:
    """Every run started under the sweep ``parent_id``, retried attempts included."""
    parent = client.get_run(parent_id)
    return client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.`{tracking.PARENT_TAG}` = '{parent_id}'", max_results=10000)


def sweep_runs(client, parent_id: str) -> list:
    """The runs of a sweep in job order: its children plus FINISHED runs reused by resume."""
    parent = client.get_run(parent_id)
    children = child_runs(client, parent_id)
    by_job = {}
    for run in children:
        job = int(run.data.tags.get(tracking.TAG_JOB, len(by_job)))
        # a job that ran twice in one sweep (Ray runs again a job whose worker died) keeps its latest run
        if job not in by_job or run.info.start_time > by_job[job][1].info.start_time:
            by_job[job] = (job, run)
    for key, run_id in parent.data.tags.items():
        if key.startswith(tracking.TAG_REUSED):
            job = int(key.removeprefix(tracking.TAG_REUSED))
            by_job.setdefault(job, (job, client.get_run(run_id)))
    return [pair for _, pair in sorted(by_job.items())]


def swept_keys(runs: list) -> list[str]:
    """Override keys whose values differ between the runs, in the order they were given."""
    overrides = [_parse_overrides(run.data.tags.get(tracking.TAG_OVERRIDES, "[]")) for _, run in runs]
    keys: list[str] = []
    for item in overrides:
        keys += [k for k in item if k not in keys]
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1]


def _number(value: object) -> float | None:
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def label(run, keys: list[str]) -> str:
    """A tile label: the swept values; alpha/beta when the loss weights are swept (Figure 5)."""
    params = run.data.params
    parts = []
    if any(k in WEIGHT_KEYS for k in keys):
        alpha, beta = _number(params.get(WEIGHT_KEYS[0])), _number(params.get(WEIGHT_KEYS[1]))
        if alpha is not None and beta:
            parts.append(f"α/β = {alpha / beta:g}")
    for key in keys:
        if key not in WEIGHT_KEYS:
            value = params.get(key, _parse_overrides(run.data.tags.get(tracking.TAG_OVERRIDES, "[]")).get(key))
            parts.append(f"{key.split('.')[-1]}={value}")
    return ", ".join(parts) or run.info.run_name


def sweep_table(client, parent_id: str) -> pd.DataFrame:
    """One row per job: job, run id, status, swept values, final losses, evaluations, seconds."""
    runs = sweep_runs(client, parent_id)
    keys = swept_keys(runs)
    rows = []
    for job, run in runs:
        overrides = _parse_overrides(run.data.tags.get(tracking.TAG_OVERRIDES, "[]"))
        metrics = run.data.metrics
        row = {"job": job, "run_id": run.info.run_id, "status": run.info.status,
               "reused": run.data.tags.get(tracking.PARENT_TAG) != parent_id}
        row.update({k: overrides.get(k) for k in keys})
        row.update({"label": label(run, keys),
                    "final_total": metrics.get("total"), "final_content": metrics.get("content"),
                    "final_style": metrics.get("style"), "evaluations": metrics.get("evaluations"),
                    "elapsed_s": metrics.get("elapsed_s"),
                    "failure": run.data.tags.get(tracking.TAG_FAILURE, "")})
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else [
        "job", "run_id", "status", "reused", "label", "final_total", "final_content", "final_style",
        "evaluations", "elapsed_s", "failure"])  # no run recorded (every job failed before MLflow)
    table.attrs["swept"] = keys
    return table


def runs_table(client, experiment: str) -> pd.DataFrame:
    """Every run of an experiment (newest first) with its main settings and final losses."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise tracking.TrackingError(f"no experiment named {experiment!r} in {client.tracking_uri}")
    runs = client.search_runs([found.experiment_id], max_results=10000, order_by=["attributes.start_time DESC"])
    rows = []
    for run in runs:
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        rows.append({"run_id": run.info.run_id, "name": run.info.run_name, "role": tags.get(tracking.TAG_ROLE),
                     "status": run.info.status, "parent": tags.get(tracking.PARENT_TAG, ""),
                     "content": params.get("content"), "style": params.get("style"),
                     "backbone": params.get("run.backbone"),
                     "content_weight": params.get("loss.content_weight"),
                     "style_weight": params.get("loss.style_weight"),
                     "final_total": metrics.get("total"), "final_content": metrics.get("content"),
                     "final_style": metrics.get("style"), "elapsed_s": metrics.get("elapsed_s")})
    return pd.DataFrame(rows)


def _font(size: int):
    """DejaVu Sans (shipped with matplotlib, has Greek letters for alpha/beta), else Pillow's default."""
    try:
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        return ImageFont.truetype(str(path), size)
    except (ImportError, OSError):
        return ImageFont.load_default()


def _tile(picture: Image.Image | None, caption: str) -> Image.Image:
    """A square tile: the picture fitted in, the caption below it."""
    tile = Image.new("RGB", (TILE, TILE + 28), "white")
    if picture is not None:
        scale = TILE / max(picture.size)
        fitted = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                Image.Resampling.LANCZOS)
        tile.paste(fitted, ((TILE - fitted.width) // 2, (TILE - fitted.height) // 2))
    else:
        ImageDraw.Draw(tile).text((TILE // 2, TILE // 2), "no image", fill="grey", anchor="mm", font=_font(14))
    draw = ImageDraw.Draw(tile)
    size = 14
    while size > 8 and draw.textlength(caption, font=_font(size)) > TILE - 4:
        size -= 1
    draw.text((TILE // 2, TILE + 14), caption, fill="black", anchor="mm", font=_font(size))
    return tile


def comparison_grid(content: Image.Image | None, style: Image.Image | None,
                    tiles: list[tuple[str, Image.Image | None]],
                    rows: list[str] | None = None, columns: list[str] | None = None,
                    cell: dict[tuple[str, str], int] | None = None) -> Image.Image:
    """Content, style, then one labelled tile per job (Figure 5).

    With ``rows``/``columns``/``cell`` (two swept parameters) the jobs form a 2-D
    grid and content and style sit in an extra first column.
    """
    if rows and columns and cell:
        grid = [[None] * (len(columns) + 1) for _ in range(max(2, len(rows)))]
        grid[0][0], grid[1][0] = _tile(content, "content"), _tile(style, "style")
        for (r, c), index in cell.items():
            grid[rows.index(r)][columns.index(c) + 1] = _tile(tiles[index][1], tiles[index][0])
    else:
        flat = [_tile(content, "content"), _tile(style, "style")] + [_tile(p, t) for t, p in tiles]
        width = min(4, len(flat))
        grid = [flat[i:i + width] for i in range(0, len(flat), width)]
    return _layout(grid)


def _layout(grid: list[list[Image.Image | None]]) -> Image.Image:
    gap = 6
    n_cols = max(len(r) for r in grid)
    canvas = Image.new("RGB", (n_cols * (TILE + gap) + gap, len(grid) * (TILE + 28 + gap) + gap), "white")
    for y, row in enumerate(grid):
        for x, tile in enumerate(row):
            if tile is not None:
                canvas.paste(tile, (gap + x * (TILE + gap), gap + y * (TILE + 28 + gap)))
    return canvas


def loss_curve(history: list[dict]) -> Image.Image:
    """Total, content and style loss against the evaluation number (log scale)."""
    figure, axis = _figure()
    steps = [r["evaluation"] for r in history]
    for key in ("total", "content", "style", "tv"):
        values = [r.get(key, 0.0) for r in history]
        if any(v > 0 for v in values):
            axis.plot(steps, values, label=key)
    axis.set_yscale("log")
    axis.set_xlabel("function evaluation")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    return _to_image(figure)


def triptych(content: torch.Tensor, style: torch.Tensor, result: torch.Tensor, height: int = 256) -> Image.Image:
    """content | style | result side by side at one height (the seed's Figure 1)."""
    pictures = [tensor_to_pil(t) for t in (content, style, result)]
    pictures = [p.resize((max(1, round(p.width * height / p.height)), height)) for p in pictures]
    canvas = Image.new("RGB", (sum(p.width for p in pictures) + 8 * 2, height), "white")
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + 8
    return canvas


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6, 4), dpi=100)


def _to_image(figure) -> Image.Image:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def loss_plot(table: pd.DataFrame) -> Image.Image | None:
    """Final content and style loss against the (first) swept value; log axis for log-spaced values."""
    keys = table.attrs.get("swept", [])
    done = table[table["status"] == "FINISHED"]
    if not keys or done.empty:
        return None
    import matplotlib.pyplot as plt

    key = keys[0]
    values = [_number(v) for v in done[key]]
    numeric = all(v is not None for v in values)
    figure, axis = _figure()
    order = sorted(range(len(done)), key=lambda i: values[i]) if numeric else list(range(len(done)))
    xs = [values[i] for i in order] if numeric else [str(done[key].iloc[i]) for i in order]
    for column, name in (("final_content", "content"), ("final_style", "style")):
        ys = [done[column].iloc[i] for i in order]
        axis.plot(xs, ys, marker="o", label=f"final {name} loss")
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 100:
        axis.set_xscale("log")
    if all((y or 0) > 0 for y in [*done["final_content"], *done["final_style"]]):
        axis.set_yscale("log")
    axis.set_xlabel(key)
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    if not numeric:
        plt.setp(axis.get_xticklabels(), rotation=20, ha="right")
    return _to_image(figure)


def _download(client, run_id: str, artifact: str, folder: Path) -> Image.Image | None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        local = client.download_artifacts(run_id, artifact, str(folder))
        return Image.open(local).convert("RGB")
    except Exception:  # noqa: BLE001 - a failed or killed run may have no image
        return None


def build_sweep_grid(client, table: pd.DataFrame, scratch: Path) -> Image.Image:
    """Download each job's result (and the inputs of the first) and lay out the grid."""
    keys = table.attrs.get("swept", [])
    tiles = []
    for _, row in table.iterrows():
        folder = scratch / str(row["run_id"])
        result = _download(client, row["run_id"], "result/result.png", folder)
        if result is None:
            result = _download(client, row["run_id"], "last_finite.png", folder)
        tiles.append((f"{row['label']}" + ("" if row["status"] == "FINISHED" else f" [{row['status']}]"),
                      result))
    if any(k.split(".")[-1].lstrip("+") in ("content", "style", "pair") for k in keys):
        # the inputs change from job to job: one row per job, content | style | result (Figures 6-9)
        rows = []
        for (_, row), (caption, result) in zip(table.iterrows(), tiles, strict=True):
            folder = scratch / str(row["run_id"])
            rows.append([_tile(_download(client, row["run_id"], f"inputs/{name}.png", folder), name)
                         for name in ("content", "style")] + [_tile(result, caption)])
        return _layout(rows)
    first = table.iloc[0]["run_id"] if len(table) else None
    content = _download(client, first, "inputs/content.png", scratch / "inputs") if first else None
    style = _download(client, first, "inputs/style.png", scratch / "inputs") if first else None
    if len(keys) == 2:
        rows = _sorted_unique(table[keys[0]])
        columns = _sorted_unique(table[keys[1]])
        cell = {(str(r), str(c)): i for i, (r, c) in enumerate(zip(table[keys[0]], table[keys[1]], strict=True))}
        return comparison_grid(content, style, tiles, [str(r) for r in rows], [str(c) for c in columns], cell)
    return comparison_grid(content, style, tiles)


def _sorted_unique(values) -> list:
    unique = list(dict.fromkeys(values))
    if all(_number(v) is not None for v in unique):
        return sorted(unique, key=lambda v: _number(v))
    return unique


def summarise_sweep(client, parent_id: str, folder: Path, log_to_parent: bool = True) -> SweepSummary:
    """Write grid.png, summary.csv and losses_vs_<key>.png to ``folder`` (and log them to the parent)."""
    folder.mkdir(parents=True, exist_ok=True)
    table = sweep_table(client, parent_id)
    with tempfile.TemporaryDirectory() as scratch:
        grid = build_sweep_grid(client, table, Path(scratch))
    plot = loss_plot(table)
    grid.save(folder / "grid.png")
    table.to_csv(folder / "summary.csv", index=False)
    written = [folder / "grid.png", folder / "summary.csv"]
    if plot is not None:
        written.append(folder / f"losses_vs_{table.attrs['swept'][0].replace('.', '_')}.png")
        plot.save(written[-1])
    if log_to_parent:
        for path in written:
            client.log_artifact(parent_id, str(path), "sweep")
        client.log_table(parent_id, table.astype(str), "sweep/summary.json")
    return SweepSummary(table, grid, plot, folder)


def latest_sweep(client, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id] if found else [],
                              filter_string=f"tags.`{tracking.TAG_ROLE}` = 'sweep'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise tracking.TrackingError(f"no sweep in experiment {experiment!r}")
    return runs[0].info.run_id


def main(argv: list[str] | None = None) -> int:
    """``nst-report``: print runs or a sweep as a table; rebuild a sweep's grid and plot."""
    parser = argparse.ArgumentParser(prog="nst-report", description=main.__doc__)
    default_root = Path(os.environ.get("NST_OUTPUT_DIR", "outputs")).resolve()
    parser.add_argument("--uri", default=f"sqlite:///{default_root / 'mlflow.db'}",
                        help="MLflow tracking URI (default: the local store under $NST_OUTPUT_DIR or ./outputs)")
    parser.add_argument("--experiment", default="nst", help="MLflow experiment name")
    parser.add_argument("--sweep", help="a sweep's parent run id, or 'latest'")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    parser.add_argument("--rebuild", type=Path, metavar="DIR",
                        help="with --sweep: rebuild grid.png, summary.csv and the loss plot into DIR")
    args = parser.parse_args(argv)
    if args.uri.startswith("sqlite:///") and not Path(args.uri.removeprefix("sqlite:///")).is_file():
        print(f"nst-report: error: no MLflow store at {args.uri}", file=sys.stderr)
        return 2
    client = tracking._client(args.uri)
    try:
        if args.sweep:
            parent = latest_sweep(client, args.experiment) if args.sweep == "latest" else args.sweep
            if args.rebuild:
                table = summarise_sweep(client, parent, args.rebuild, log_to_parent=False).table
            else:
                table = sweep_table(client, parent)
        else:
            table = runs_table(client, args.experiment)
    except tracking.TrackingError as exc:
        print(f"nst-report: error: {exc}", file=sys.stderr)
        return 2
    print(table.to_csv(index=False) if args.format == "csv" else table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
