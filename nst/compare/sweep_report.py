"""Sweep reports built from MLflow alone: table, comparison grid, loss plot.

The same code serves the end of a multirun (``SweepCallback``) and the
``nst-report`` command, so a grid can always be rebuilt from the store. The
store's queries are in ``nst.tracking.store``, the drawing in ``nst.figures``, the
HTML page (``report.html``) in ``nst.compare.sweep_page``; the images it shows are
gathered from the store here.

The ``nst-report`` command that prints them is ``nst.cli.nst_report``.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image

from nst.compare import sweep_page
from nst.engine.run_files import LAST_FINITE_PNG, RECORD_JSON, result_png
from nst.figures import labels, plots
from nst.figures.grid import TILE, comparison_grid, layout, tile
from nst.tracking import store
from nst.tracking.tags import (
    HUMAN_METRICS,
    PARENT_TAG,
    TAG_DESCRIPTION,
    TAG_FAILURE,
    TAG_HOST,
    TAG_OUTPUT_DIR,
    TAG_OVERRIDES,
    TAG_ROLE,
    unliteral,
)

# a sweep of at most SMALL_SWEEP jobs gets tiles at its results' own resolution, up to LARGEST_TILE px
SMALL_SWEEP = 8
LARGEST_TILE = 512
REPORT_HTML = PurePosixPath(store.SWEEP_REPORT).name  # report.html, in the sweep folder and on the parent
RESULT_ARTIFACT = "result/result.png"  # a run's result in the store (its folder's result.png, or ``output``)
# a folder's file is the store's copy only if written while its run ran, give or take this (coarse file times)
CLOCK_SLACK_MS = 2000


@dataclass
class SweepSummary:
    table: pd.DataFrame
    grid: Image.Image
    plot: Image.Image | None
    folder: Path
    page: Path | None = None


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


def swept_keys(runs: list) -> list[str]:
    """Override keys whose values differ between the runs, in the order they were given."""
    overrides = [_parse_overrides(run.data.tags.get(TAG_OVERRIDES, "[]")) for _, run in runs]
    keys: list[str] = []
    for item in overrides:
        keys += [k for k in item if k not in keys]
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1]


def label(run, keys: list[str]) -> str:
    """A tile label: the swept values in the seed's terms (``β=1e4 · α/β=1e-4``), as the run names."""
    return labels.label(keys, run.data.params, run.data.tags) or run.info.run_name


def title(runs: list) -> str:
    """The grid's title line: images, backbone, size, epochs; what differs between the runs is left out."""
    def shared(key: str) -> str | None:
        found = {run.data.params.get(key) for _, run in runs}
        return found.pop() if len(found) == 1 else None

    content, style = shared("content"), shared("style")
    parts = [f"{content} + {style}" if content and style else "image pairs"]
    parts += [text.format(value) for key, text in (("run.backbone", "backbone {}"), ("image.size", "{} px"),
                                                     ("epochs", "{} epochs")) if (value := shared(key))]
    return labels.SEPARATOR.join(parts)


def sweep_table(client, parent_id: str) -> pd.DataFrame:
    """One row per job: job, run id, status, swept values, final losses, evaluations, seconds."""
    return table_of(store.sweep_runs(client, parent_id), parent_id)


def table_of(runs: list, parent_id: str) -> pd.DataFrame:
    """``sweep_table`` of the sweep's (job, run) pairs already fetched (``store.sweep_runs``): the summary
    reads its runs' artifact roots and folders from the same search."""
    keys = swept_keys(runs)
    rows = []
    for job, run in runs:
        overrides = _parse_overrides(run.data.tags.get(TAG_OVERRIDES, "[]"))
        metrics = run.data.metrics
        row = {"job": job, "run_id": run.info.run_id, "status": run.info.status,
               "reused": run.data.tags.get(PARENT_TAG) != parent_id}
        row.update({k: None if overrides.get(k) is None else labels.short(overrides[k])  # 1e4, not 10000.0
                    for k in keys})
        row.update({"label": label(run, keys),
                    "final_total": metrics.get("total"), "final_content": metrics.get("content"),
                    "final_style": metrics.get("style"), "evaluations": metrics.get("evaluations"),
                    "converged": converged_text(metrics.get("converged")), "elapsed_s": metrics.get("elapsed_s"),
                    "failure": run.data.tags.get(TAG_FAILURE, "")})
        if f"{HUMAN_METRICS}rank" in metrics:  # judged with nst-review
            row.update({"human_rank": int(metrics[f"{HUMAN_METRICS}rank"]),
                        "human_score": metrics.get(f"{HUMAN_METRICS}score")})
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else [
        "job", "run_id", "status", "reused", "label", "final_total", "final_content", "final_style",
        "evaluations", "converged", "elapsed_s", "failure"])  # no run recorded (every job failed before MLflow)
    table.attrs["swept"] = keys
    table.attrs["title"] = title(runs) if runs else ""
    return table


def converged_text(flag: float | None) -> str:
    """A run's ``converged`` metric as the table shows it: yes, no (its budget ran out), or blank."""
    return "" if flag is None else ("yes" if flag else "no")


def summary_metrics(table: pd.DataFrame) -> list:
    """A sweep's parent metrics, under ``sweep/`` (their own section in MLflow's charts, apart from the jobs'
    curves): jobs finished and failed, the range of the final content and style losses."""
    from mlflow.entities import Metric

    finished = table[table["status"] == "FINISHED"] if len(table) else table
    values = {"jobs_finished": len(finished), "jobs_failed": len(table) - len(finished)}
    for term in ("content", "style"):
        losses = pd.to_numeric(finished.get(f"final_{term}", pd.Series(dtype=float)), errors="coerce").dropna()
        if len(losses):
            values.update({f"final_{term}_min": losses.min(), f"final_{term}_max": losses.max()})
    now = int(time.time() * 1000)
    return [Metric(f"sweep/{key}", float(value), now, 0) for key, value in values.items()]


def runs_table(client, experiment: str) -> pd.DataFrame:
    """Every run of an experiment (newest first) with its main settings and final losses."""
    rows = []
    for run in store.experiment_runs(client, experiment):
        params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
        rows.append({"run_id": run.info.run_id, "name": run.info.run_name, "role": tags.get(TAG_ROLE),
                     "status": run.info.status, "parent": tags.get(PARENT_TAG, ""),
                     "content": params.get("content"), "style": params.get("style"),
                     "backbone": params.get("run.backbone"),
                     "content_weight": params.get("loss.content_weight"),
                     "style_weight": params.get("loss.style_weight"),
                     "final_total": metrics.get("total"), "final_content": metrics.get("content"),
                     "final_style": metrics.get("style"), "elapsed_s": metrics.get("elapsed_s"),
                     "failure": tags.get(TAG_FAILURE, "")})
    return pd.DataFrame(rows)


class RunFiles:
    """One run's pictures, each read once: from the run's folder when this machine holds the very file the
    store keeps, else from the store.

    A job writes its pictures to its folder before logging them, so reading the folder spares the store a
    download per picture. A folder's file counts as the store's when the run was made on this host, the
    store lists the file with the same size, and it was last written while the run ran; a folder on another
    machine, deleted, reused since, or never recorded gives way to the store, so the report shows what the
    store holds. The store is read through the run's artifact root, not asked for the run again per picture.
    """

    def __init__(self, client, run_id: str, scratch: Path, run=None):
        self.client, self.run_id, self.scratch, self.run = client, run_id, scratch, run
        self._repository = None
        self._listed: dict[str, list | None] = {}
        self._read: dict[str, bytes | None] = {}

    def read(self, artifact: str, keep: bool = True) -> bytes | None:
        """The bytes of the run's ``artifact`` (None when the store has none); kept for the next read when
        ``keep``."""
        if artifact in self._read:
            return self._read[artifact]
        data = self._from_folder(artifact) or self._from_store(artifact)
        if keep:
            self._read[artifact] = data
        return data

    def list_artifacts(self, run_id: str, path: str | None = None) -> list:
        """MLflow's ``list_artifacts`` of this run (what ``store.step_images`` asks a client for): through the
        run's artifact root, listed once, when the run is known ([] when it cannot be listed)."""
        if self.run is None:
            return self.client.list_artifacts(run_id, path)
        return self._listing(path or "") or []

    def _store(self):
        """The run's artifact repository, made once from its artifact root."""
        if self._repository is None:
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            self._repository = get_artifact_repository(self.run.info.artifact_uri,
                                                       tracking_uri=self.client.tracking_uri)
        return self._repository

    def _listing(self, directory: str) -> list | None:
        """The store's entries in ``directory`` of the run, listed once; None when unknown (no run to list
        through, or the listing failed)."""
        if self.run is None:
            return None
        if directory not in self._listed:
            try:
                self._listed[directory] = list(self._store().list_artifacts(directory or None))
            except Exception:  # noqa: BLE001 - a listing that fails leaves the download to say
                self._listed[directory] = None
        return self._listed[directory]

    def _sizes(self, directory: str) -> dict[str, int | None] | None:
        """The store's files in ``directory`` of the run with their sizes; None when unknown."""
        listing = self._listing(directory)
        return None if listing is None else {item.path: item.file_size for item in listing if not item.is_dir}

    def _from_store(self, artifact: str) -> bytes | None:
        listed = self._sizes(posixpath.dirname(artifact))
        if listed is not None and artifact not in listed:
            return None  # a failed or killed run may have no such picture
        try:
            if self.run is None:
                local = self.client.download_artifacts(self.run_id, artifact, str(self.scratch))
            else:
                self.scratch.mkdir(parents=True, exist_ok=True)  # MLflow's client makes it; its repositories do not
                local = self._store().download_artifacts(artifact, str(self.scratch))
            return Path(local).read_bytes()
        except Exception:  # noqa: BLE001 - a failed or killed run may have no image
            return None

    def _from_folder(self, artifact: str) -> bytes | None:
        local = self._folder_file(artifact)
        size = (self._sizes(posixpath.dirname(artifact)) or {}).get(artifact) if local else None
        if local is None or size is None:
            return None
        try:
            found = local.stat()
            if found.st_size != size or not self._while_running(found.st_mtime):
                return None
            data = local.read_bytes()
        except OSError:
            return None
        return data if len(data) == size else None

    def _folder_file(self, artifact: str) -> Path | None:
        """The file of the run's folder that the store keeps as ``artifact``: the result image as
        result/result.png, the folder's own files at the store's top level; None when this machine does
        not hold the run's folder."""
        tags = self.run.data.tags if self.run is not None else {}
        if not tags.get(TAG_OUTPUT_DIR) or tags.get(TAG_HOST) != this_host():
            return None
        folder = Path(tags[TAG_OUTPUT_DIR])
        if artifact == RESULT_ARTIFACT:
            try:
                return result_png(folder, json.loads((folder / RECORD_JSON).read_text(encoding="utf-8")))
            except (OSError, ValueError, AttributeError):
                return None
        return folder / artifact if "/" not in artifact else None

    def _while_running(self, written_s: float) -> bool:
        """Whether a file last written at ``written_s`` (seconds) was written while the run ran."""
        started = self.run.info.start_time or 0
        ended = self.run.info.end_time or time.time() * 1000
        return started - CLOCK_SLACK_MS <= written_s * 1000 <= ended + CLOCK_SLACK_MS


def this_host() -> str:
    """This machine's name, as runs record it in ``nst.host``."""
    return os.uname().nodename


class Pictures:
    """The ``RunFiles`` of one report's runs, by run id, so the grid and the page read each picture once;
    ``runs`` are the runs already fetched (the others are read from the store by id)."""

    def __init__(self, client, scratch: Path, runs: Iterable = ()):
        self.client, self.scratch = client, scratch
        self._runs = {run.info.run_id: run for run in runs}
        self._files: dict[str, RunFiles] = {}

    def __call__(self, run_id: str) -> RunFiles:
        if run_id not in self._files:
            self._files[run_id] = RunFiles(self.client, run_id, self.scratch / run_id, self._runs.get(run_id))
        return self._files[run_id]


def build_sweep_grid(client, table: pd.DataFrame, scratch: Path, pictures: Pictures | None = None) -> Image.Image:
    """Read each job's result (and the inputs of the first) through ``pictures`` and lay out the grid."""
    pictures = pictures or Pictures(client, scratch)
    keys = table.attrs.get("swept", [])
    tiles = []
    for _, row in table.iterrows():
        result = decoded(result_bytes(pictures(str(row["run_id"]))))
        tiles.append((f"{row['label']}" + ("" if row["status"] == "FINISHED" else f" [{row['status']}]"),
                      result))
    box = tile_box([result for _, result in tiles])
    heading = table.attrs.get("title")
    if any(k.split(".")[-1].lstrip("+") in ("content", "style", "pair") for k in keys):
        # the inputs change from job to job: one row per job, content | style | result (Figures 6-9)
        rows = []
        for (_, row), (caption, result) in zip(table.iterrows(), tiles, strict=True):
            files = pictures(str(row["run_id"]))
            rows.append([tile(decoded(files.read(f"inputs/{name}.png")), name, box)
                         for name in ("content", "style")] + [tile(result, caption, box)])
        return layout(rows, heading)
    first = pictures(str(table.iloc[0]["run_id"])) if len(table) else None
    content = decoded(first.read("inputs/content.png")) if first else None
    style = decoded(first.read("inputs/style.png")) if first else None
    if len(keys) == 2:
        rows = labels.sorted_unique(table[keys[0]])
        columns = labels.sorted_unique(table[keys[1]])
        cell = {(str(r), str(c)): i for i, (r, c) in enumerate(zip(table[keys[0]], table[keys[1]], strict=True))}
        return comparison_grid(content, style, tiles, [str(r) for r in rows], [str(c) for c in columns], cell,
                               box, heading)
    return comparison_grid(content, style, tiles, box=box, title=heading)


def decoded(data: bytes | None) -> Image.Image | None:
    """A picture's bytes as an RGB image; None for none, or for bytes that are not a picture."""
    if not data:
        return None
    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception:  # noqa: BLE001 - a damaged picture is shown as a missing one
        return None


def result_bytes(files: RunFiles) -> bytes | None:
    """A run's final picture: its result, else the last finite image of a run whose loss blew up."""
    return files.read(RESULT_ARTIFACT) or files.read(LAST_FINITE_PNG)


def tile_box(results: list[Image.Image | None]) -> tuple[int, int]:
    """The tiles' (width, height): the results' own resolution when the sweep is small (a 256 px result
    was cut to 192), else ``TILE``, never below it, so that labels fit; as high as the results' shape
    needs (square tiles left 32 px of white above and below a 4:3 result)."""
    shown = [result for result in results if result is not None]
    if len(results) > SMALL_SWEEP or not shown:
        side = TILE
    else:
        side = max(TILE, min(max(max(result.size) for result in shown), LARGEST_TILE))
    tallest = max((result.height / result.width for result in shown), default=1.0)
    return side, min(side, max(1, round(side * tallest)))


def artifact_bytes(client, run_id: str, artifact: str, folder: Path) -> bytes | None:
    """An artifact's bytes, downloaded into ``folder`` once: MLflow puts a file it downloads at
    ``folder/<its name>``, where the grid's download of the same picture already is (the cache looked
    at ``folder/<its path>`` before, so the report downloaded every result and input a second time)."""
    local = folder / Path(artifact).name
    if local.is_file():
        return local.read_bytes()
    try:
        return Path(client.download_artifacts(run_id, artifact, str(folder))).read_bytes()
    except Exception:  # noqa: BLE001 - a failed or killed run may have no image
        return None


def page_title(client, parent_id: str, table: pd.DataFrame) -> tuple[str, str]:
    """The page's title line (the grid's, and what was swept) and the parent's description."""
    keys = table.attrs.get("swept", [])
    swept = ", ".join(f"{labels.name(key)} ({key.lstrip('+~')})" for key in keys) or "nothing"
    heading = labels.SEPARATOR.join(part for part in (table.attrs.get("title"), f"{len(table)} jobs varying {swept}")
                                    if part)
    description = client.get_run(parent_id).data.tags.get(TAG_DESCRIPTION, "")
    return heading, unliteral(description.split("\n\n")[0])  # not its link to this very page


def build_sweep_page(client, parent_id: str, table: pd.DataFrame, scratch: Path,
                     pictures: Pictures | None = None) -> str:
    """report.html: each job's final image, inputs and progress images (thinned out to the slider's
    positions, re-encoded lossy) read through ``pictures`` and laid out by ``nst.compare.sweep_page``."""
    keys = table.attrs.get("swept", [])
    rows = table.to_dict("records")
    images, wanted = job_images(client, rows, scratch, every_input=sweep_page.varies_inputs(keys), pictures=pictures)
    title, description = page_title(client, parent_id, table)
    shared = images[int(rows[0]["job"])] if rows else None
    return sweep_page.render(rows, keys, images, title, description, shared, wanted)


def job_images(client, rows: list[dict], scratch: Path, every_input: bool,
               pictures: Pictures | None = None) -> tuple[dict[int, sweep_page.JobImages], list[int]]:
    """Each row's run's pictures (its result, its progress images at the slider's positions, re-encoded
    lossy, and its inputs: every row's when ``every_input``, else the first row's only), and the slider's
    positions; read through ``pictures`` (by default straight from the store)."""
    pictures = pictures or Pictures(client, scratch)
    files = {int(row["job"]): pictures(str(row["run_id"])) for row in rows}
    available = {job: store.step_images(found, found.run_id) for job, found in files.items()}
    wanted = sweep_page.positions([step for found in available.values() for step in found],
                                  sweep_page.most_positions(len(rows)))
    images = {}
    for row in rows:
        job = int(row["job"])
        found = sweep_page.JobImages(result=result_bytes(files[job]))
        if every_input or job == int(rows[0]["job"]):
            found.content = files[job].read("inputs/content.png")
            found.style = files[job].read("inputs/style.png")
        for position in wanted:
            step = sweep_page.frame_at(list(available[job]), position)
            if step is not None and step not in found.progress:
                data = files[job].read(available[job][step], keep=False)  # read once: no copy kept
                if data is not None:
                    found.progress[step] = sweep_page.encode_frame(Image.open(io.BytesIO(data)))
        images[job] = found
    return images, wanted


def summarise_sweep(client, parent_id: str, folder: Path, log_to_parent: bool = True) -> SweepSummary:
    """Write grid.png, summary.csv, losses_vs_<key>.png and report.html to ``folder`` (and log them to the
    parent under ``sweep/``)."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = store.sweep_runs(client, parent_id)
    table = table_of(runs, parent_id)
    with tempfile.TemporaryDirectory() as scratch:
        pictures = Pictures(client, Path(scratch), [run for _, run in runs])
        grid = build_sweep_grid(client, table, Path(scratch), pictures)
        page = build_sweep_page(client, parent_id, table, Path(scratch), pictures)
    drawn = plots.final_losses(table.to_dict("records"), table.attrs.get("swept", []))
    plot = drawn.png() if drawn else None
    grid.save(folder / "grid.png")
    table.to_csv(folder / "summary.csv", index=False)
    (folder / REPORT_HTML).write_text(page, encoding="utf-8")
    written = [folder / "grid.png", folder / "summary.csv", folder / REPORT_HTML]
    if plot is not None:
        written.append(folder / f"losses_vs_{table.attrs['swept'][0].replace('.', '_')}.png")
        plot.save(written[-1])
    if log_to_parent:
        for path in written:
            client.log_artifact(parent_id, str(path), "sweep")
        client.log_table(parent_id, table.astype(str), "sweep/summary.json")
    return SweepSummary(table, grid, plot, folder, folder / REPORT_HTML)
