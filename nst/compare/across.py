"""Several sweeps (and runs picked by a filter) on one page: ``nst-report --compare``.

Each sweep is a column, headed by what differs between the sweeps (``epochs=5`` against ``epochs=10``,
or the image pair); runs with the same swept values share a row. Under each image: its final losses and
automatic measures, and a link to the run in MLflow; the step slider moves every image together. The
page is the sweep report's (``nst.compare.sweep_page``) with the columns as its second axis, written to
disk and logged to a run of role ``comparison`` that the same selection finds again.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nst.compare import sweep_page
from nst.compare.sweep_report import converged_text, job_images, swept_keys
from nst.errors import TrackingError
from nst.figures import labels
from nst.tracking import store, tags

ROLE = "comparison"
REPORT = "compare/report.html"  # on the comparison's run
TAG_SELECTION = "nst.compared"  # what a comparison's run shows: its sweeps and filter (JSON)
SHOWN = (("content", "content"), ("style", "style"), ("auto.ssim_content", "SSIM"),
         ("auto.gram_distance_style", "Gram distance"),
         ("auto.color_distance_style", "colour distance"))  # under each image: metric, name
IGNORED = ("run.", "sweep.")  # params that say where a run ran, or repeat its swept values


@dataclass
class Column:
    """One sweep (or the runs a filter picked): its runs (as ``store.sweep_runs`` gives them), its name."""

    name: str
    runs: list
    parent: str | None = None


def select(client, experiment: str, sweeps: list[str], filter_string: str | None) -> list[Column]:
    """The columns: each sweep named (a parent run id or ``latest``), then the runs ``filter_string`` picks."""
    columns = []
    for sweep in sweeps:
        parent = store.named_sweep(client, experiment, sweep)
        run = client.get_run(parent)
        columns.append(Column(run.data.tags.get(tags.TAG_SWEEP_NAME, run.info.run_name), store.sweep_runs(client, parent),
                              parent))
    if filter_string:
        matched = store.filtered_runs(client, experiment, filter_string)
        columns.append(Column(f"filter: {filter_string}", list(enumerate(matched))))
    if len(columns) < 2 or not all(column.runs for column in columns):
        raise TrackingError("a comparison needs at least two sweeps (or a sweep and a --filter), each with runs")
    return columns


def headings(columns: list[Column], keys: list[str]) -> list[str]:
    """Each column's heading: the settings in which the columns differ (their runs' params, the swept keys
    left out), or its name when they differ in none."""
    def setting(column: Column) -> dict[str, str]:
        params = column.runs[0][1].data.params
        return {key: value for key, value in params.items()
                if key not in keys and not key.startswith(IGNORED)}

    settings = [setting(column) for column in columns]
    differing = [key for key in sorted(set().union(*settings)) if len({s.get(key) for s in settings}) > 1]
    if not differing:
        return [column.name for column in columns]
    return [labels.SEPARATOR.join(f"{key}={s.get(key, 'unset')}" for key in differing[:3]) for s in settings]


def table(client, columns: list[Column], uri: str) -> pd.DataFrame:
    """One row per run: a running number (``job``), run id, status, its row (the swept values) and column
    (the heading), final losses, evaluations, whether it converged, what is shown under its image."""
    keys = list(dict.fromkeys(key for column in columns for key in swept_keys(column.runs)))
    row_key = keys[0] if len(keys) == 1 else "label"
    rows = []
    for column, heading in zip(columns, headings(columns, keys), strict=True):
        for _, run in column.runs:
            params, metrics = run.data.params, run.data.metrics
            value = labels.label(keys, params, run.data.tags) or run.info.run_name
            rows.append({
                "job": len(rows), "run_id": run.info.run_id, "status": run.info.status,
                row_key: labels.short(params.get(row_key)) if row_key != "label" else value,
                "label": value, "sweep": heading,
                "final_total": metrics.get("total"), "final_content": metrics.get("content"),
                "final_style": metrics.get("style"), "evaluations": metrics.get("evaluations"),
                "converged": converged_text(metrics.get("converged")),
                "details": labels.SEPARATOR.join(f"{name} {labels.short(metrics[metric])}"
                                                 for metric, name in SHOWN if metric in metrics),
                "link": store.run_address(uri, run.info.experiment_id, run.info.run_id)})
    found = pd.DataFrame(rows)
    found.attrs["axes"] = [row_key, "sweep"]
    return found


def selection_key(columns: list[Column], filter_string: str | None) -> str:
    """What identifies a comparison: its sweeps and filter."""
    return json.dumps({"sweeps": [column.parent for column in columns if column.parent],
                       "filter": filter_string}, sort_keys=True)


def comparison_run(client, experiment_id: str, key: str, names: list[str]) -> str:
    """The comparison's run: found again for the same selection, else created (FINISHED)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{tags.TAG_ROLE}` = '{ROLE}'", max_results=10000)
    for run in runs:
        if run.data.tags.get(TAG_SELECTION) == key:
            return run.info.run_id
    name = "compare · " + " | ".join(names)
    run = client.create_run(experiment_id, run_name=name[:250], tags={
        tags.TAG_ROLE: ROLE, TAG_SELECTION: key,
        tags.TAG_DESCRIPTION: tags.literal("Sweeps side by side, made with nst-report --compare: " + " | ".join(names))})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def compare(client, experiment: str, sweeps: list[str], filter_string: str | None,
            folder: Path | None = None) -> tuple[Path, str]:
    """Build the page, write it to ``folder`` (default: ``comparisons/<key>`` beside a local store, else in
    the current folder) and log it to the comparison's run; returns its path and its address in MLflow."""
    columns = select(client, experiment, sweeps, filter_string)
    uri = client.tracking_uri
    found = table(client, columns, uri)
    rows = found.to_dict("records")
    key = selection_key(columns, filter_string)
    experiment_id = columns[0].runs[0][1].info.experiment_id
    run_id = comparison_run(client, experiment_id, key, [column.name for column in columns])
    with tempfile.TemporaryDirectory() as scratch:
        images, steps = job_images(client, rows, Path(scratch), every_input=True)
    pairs = {(row.get("content"), row.get("style")) for row in
             ({**run.data.params} for column in columns for _, run in column.runs)}
    title = f"{len(columns)} sweeps side by side" + labels.SEPARATOR + " | ".join(column.name for column in columns)
    description = "Rows: the same swept values; columns: what differs between the sweeps."
    page = sweep_page.render(rows, found.attrs["axes"], images, title, description, images[0], steps,
                             inputs_per_job=len(pairs) > 1)
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    if folder is None:
        base = Path(uri.removeprefix("sqlite:///")).parent if uri.startswith("sqlite:///") else Path.cwd()
        folder = base / "comparisons" / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "report.html"
    path.write_text(page, encoding="utf-8")
    client.log_artifact(run_id, str(path), str(Path(REPORT).parent))
    return path, store.run_address(uri, experiment_id, run_id, REPORT)
