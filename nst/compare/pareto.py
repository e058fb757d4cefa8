"""The content-style Pareto front of a multi-objective search, from the files the search leaves.

A search (``nst sweep=pareto``) writes ``<sweep folder>/study/trials.csv`` (one row per Optuna
trial: trial, state, run_id, ``params.<key>``..., one column per objective named by its MLflow
metric) and ``study/study.json`` (name, storage, sampler, seed, objectives and their directions, the
searched space, Optuna's importances). This module reads them (``read_study``), finds the trials no
other trial beats on every objective (``non_dominated``, ``front_table``), measures how much of the
objective space the trials cover (``hypervolume``) and publishes the front to the search's parent
run (``publish_study``: pareto.csv, the page of ``nst.compare.pareto_page``, a section of the run's
description).

Which objectives there are, in which order and which way each is better, comes from study.json; the
names below are only the defaults (``nst-review --pareto`` uses them).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from nst.compare import pareto_page, sweep_report
from nst.compare.pareto_page import COMPLETE, PARAMS_PREFIX, key_of
from nst.figures import labels
from nst.images import measures
from nst.tracking import store, tags

SSIM_CONTENT, GRAM_DISTANCE_STYLE = measures.SSIM_CONTENT.name, measures.GRAM_DISTANCE.name
MAXIMIZE, MINIMIZE = "maximize", "minimize"
# the content-style objectives: the default when a study does not name its own
OBJECTIVES: dict[str, str] = {SSIM_CONTENT: MAXIMIZE, GRAM_DISTANCE_STYLE: MINIMIZE}
# what a better value of a known objective means, for the page's axes
MEANINGS = {SSIM_CONTENT: "more of the content kept", GRAM_DISTANCE_STYLE: "more of the style taken"}
STUDY_FOLDER = "study"  # in the sweep folder, and on the parent run
TRIALS_CSV, STUDY_JSON = "trials.csv", "study.json"
FRONT_CSV, FRONT_HTML = "pareto.csv", "pareto.html"
# the default reference point lies this share of the observed range beyond the worst value
REFERENCE_MARGIN = 0.1
ZERO_RANGE_MARGIN = 1e-9
THUMBNAIL_SIDE = 256
SECTION_HEADING = "### Pareto front"


# --- the front --------------------------------------------------------------------------------


def _check_directions(directions: Sequence[str]) -> None:
    wrong = [d for d in directions if d not in (MAXIMIZE, MINIMIZE)]
    if wrong:
        raise ValueError(f"a direction is {MAXIMIZE!r} or {MINIMIZE!r}, not {wrong[0]!r}")


def _gains(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[tuple[float, ...]]:
    """The points with every objective turned so that larger is better (minimized ones negated)."""
    _check_directions(directions)
    signs = [1.0 if direction == MAXIMIZE else -1.0 for direction in directions]
    return [tuple(sign * float(v) for v, sign in zip(point, signs, strict=True))
            for point in points]


def _finite(point: Sequence[float]) -> bool:
    return all(math.isfinite(v) for v in point)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether gains ``a`` are at least ``b``'s on every objective and larger on one."""
    pairs = list(zip(a, b, strict=True))
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def non_dominated(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """For each point, whether no other point dominates it (is as good on every objective and better
    on one, ``directions`` saying per objective whether ``maximize`` or ``minimize`` is better). A
    point with a NaN (or infinite) value is never on the front and dominates nothing; equal points
    do not dominate each other, so both stay on the front."""
    gains = _gains(points, directions)
    valid = [_finite(g) for g in gains]
    rivals = [g for g, ok in zip(gains, valid, strict=True) if ok]
    # a point never dominates itself (nor an equal one): it is better on no objective
    return [ok and not any(_dominates(rival, g) for rival in rivals)
            for g, ok in zip(gains, valid, strict=True)]


def reference_point(points: Sequence[Sequence[float]],
                    directions: Sequence[str]) -> tuple[float, ...]:
    """The default reference point of ``hypervolume``: per objective, the worst finite value
    observed (the lowest for ``maximize``, the highest for ``minimize``) moved outward, away from
    better, by 10 % of the observed range (by 1e-9 when every value is the same), so that every
    observed point, the worst included, adds some area. Raises ``ValueError`` when no point is
    finite."""
    _check_directions(directions)
    finite = [tuple(float(v) for v in p) for p in points if _finite([float(v) for v in p])]
    if not finite:
        raise ValueError("a reference point needs at least one point with finite values")
    reference = []
    for values, direction in zip(zip(*finite, strict=True), directions, strict=True):
        margin = (max(values) - min(values)) * REFERENCE_MARGIN or ZERO_RANGE_MARGIN
        reference.append(min(values) - margin if direction == MAXIMIZE else max(values) + margin)
    return tuple(reference)


def hypervolume(points: Sequence[Sequence[float]], directions: Sequence[str],
                reference: Sequence[float]) -> float:
    """The area (two objectives) that the points dominate, bounded by ``reference``: the measure of
    the objective space at least one point beats, which grows whenever a search finds a better
    trade-off. A point not strictly better than the reference on both objectives (or with a NaN)
    adds nothing."""
    if len(directions) != 2:
        raise ValueError(f"hypervolume is computed for two objectives, not {len(directions)}")
    corner = _gains([reference], directions)[0]
    inside = [g for g in _gains(points, directions)
              if _finite(g) and g[0] > corner[0] and g[1] > corner[1]]
    area, reached = 0.0, corner[1]
    for x, y in sorted(inside, reverse=True):  # from the best first objective down
        # a step up: the strip between the last height and this one, as wide as x reaches
        if y > reached:
            area += (x - corner[0]) * (y - reached)
            reached = y
    return area


@dataclass
class Study:
    """An Optuna study as the search left it: every trial (``table``, trials.csv's rows in trial
    order) and study.json's description of it."""

    table: pd.DataFrame
    objectives: dict[str, str]  # MLflow metric -> maximize | minimize, in the study's order
    name: str = ""
    storage: str = ""
    sampler: str = ""
    seed: int | None = None
    space: dict[str, str] = field(default_factory=dict)
    # objective -> searched key -> share of the objective's variance
    importances: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def params(self) -> list[str]:
        """The searched keys' columns (``params.<key>``), in trials.csv's order."""
        return [column for column in self.table.columns if column.startswith(PARAMS_PREFIX)]

    @property
    def directions(self) -> list[str]:
        return list(self.objectives.values())

    @property
    def complete(self) -> pd.Series:
        """For each trial, whether it is COMPLETE with a finite value of every objective."""
        return pd.Series(_complete(self.table, self.objectives), index=self.table.index, dtype=bool)

    @property
    def points(self) -> list[tuple[float, ...]]:
        """Each trial's objective values, NaN where missing."""
        return _points(self.table, self.objectives)

    @property
    def on_front(self) -> pd.Series:
        """For each trial, whether it is a COMPLETE trial no other COMPLETE trial dominates."""
        points = [p if ok else (math.nan,) * len(p)
                  for p, ok in zip(self.points, self.complete, strict=True)]
        return pd.Series(non_dominated(points, self.directions), index=self.table.index, dtype=bool)


def _points(table: pd.DataFrame, objectives: Mapping[str, str]) -> list[tuple[float, ...]]:
    """Each row's objective values, NaN where missing or not a number."""
    values = table[list(objectives)].apply(pd.to_numeric, errors="coerce")
    return [tuple(float(v) for v in row) for row in values.itertuples(index=False)]


def _complete(table: pd.DataFrame, objectives: Mapping[str, str]) -> list[bool]:
    """For each row, whether its trial is COMPLETE with a finite value of every objective."""
    return [state == COMPLETE and _finite(point)
            for state, point in zip(table["state"], _points(table, objectives), strict=True)]


def read_study(sweep_dir: Path) -> Study | None:
    """The study a search left in ``sweep_dir/study`` (trials.csv and study.json); None when either
    file is missing. Objectives missing from study.json default to ``OBJECTIVES``."""
    folder = Path(sweep_dir) / STUDY_FOLDER
    if not (folder / TRIALS_CSV).is_file() or not (folder / STUDY_JSON).is_file():
        return None
    described = json.loads((folder / STUDY_JSON).read_text(encoding="utf-8"))
    objectives = dict(described.get("objectives") or OBJECTIVES)
    _check_directions(list(objectives.values()))
    table = pd.read_csv(folder / TRIALS_CSV, dtype={"run_id": str, "state": str})
    for objective in objectives:
        found = table[objective] if objective in table else pd.Series(math.nan, index=table.index)
        table[objective] = pd.to_numeric(found, errors="coerce")
    table["trial"] = table["trial"].astype(int)
    table["run_id"] = table["run_id"].fillna("").astype(str)
    table = table.sort_values("trial", kind="stable").reset_index(drop=True)
    seed = described.get("seed")
    importances = described.get("importances") or {}
    return Study(table=table, objectives=objectives, name=str(described.get("name", "")),
                 storage=str(described.get("storage", "")),
                 sampler=str(described.get("sampler", "")),
                 seed=None if seed is None else int(seed), space=dict(described.get("space") or {}),
                 importances={str(name): dict(found) for name, found in importances.items()})


def front_table(study: Study) -> pd.DataFrame:
    """The COMPLETE trials on the front with their trial, run_id, params and objectives, best first
    on the first objective (the order a reader walks the trade-off in)."""
    columns = ["trial", "run_id", *study.params, *study.objectives]
    front = study.table[study.on_front][columns]
    first, direction = next(iter(study.objectives.items()))
    front = front.sort_values(first, ascending=direction == MINIMIZE, kind="stable")
    return front.reset_index(drop=True)


def hypervolume_by_trial(table: pd.DataFrame, objectives: Mapping[str, str],
                         reference: Sequence[float] | None = None) -> list[float]:
    """For k = 1..n, the hypervolume of the COMPLETE trials among the first k (the table's order),
    so a search's progress can be set against random sampling; ``reference`` defaults to
    ``reference_point`` of every COMPLETE trial, and with no COMPLETE trial every value is 0."""
    directions = list(objectives.values())
    points, done = _points(table, objectives), _complete(table, objectives)
    finished = [p for p, ok in zip(points, done, strict=True) if ok]
    if not finished:
        return [0.0] * len(points)
    reference = reference_point(finished, directions) if reference is None else reference
    volumes, so_far = [], []
    for point, ok in zip(points, done, strict=True):
        so_far += [point] if ok else []
        volumes.append(hypervolume(so_far, directions, reference))
    return volumes


# --- publishing -------------------------------------------------------------------------------


def shown(value) -> str:
    """A value as the description's table writes it: a number as the seed writes weights (``1e4``, 4
    significant digits otherwise), '' for a missing one, text as it is."""
    found = labels.finite_number(value) if not isinstance(value, str) else None
    if found is not None:
        return labels.compact(found)
    return "" if value is None or isinstance(value, float) else str(value)


def front_markdown(study: Study, page_link: str) -> str:
    """The description's section: a heading naming how many trials are on the front, the front as a
    Markdown table (trial, searched values, objectives) and a link to the page."""
    front = front_table(study)
    columns = ["trial", *study.params, *study.objectives]
    header = ["trial", *(key_of(c) for c in study.params), *study.objectives]

    def cell(text: str) -> str:
        return tags.literal(text).replace("|", "\\|")

    lines = [f"{SECTION_HEADING} ({len(front)} of {len(study.table)} trials)", "",
             "| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(shown(row[c])) for c in columns) + " |"
              for row in front.to_dict("records")]
    directions = ", ".join(f"{name} {'higher' if d == MAXIMIZE else 'lower'} is better"
                           for name, d in study.objectives.items())
    lines += ["", f"The trials no other trial beats on every objective ({directions}): "
                  f"[the Pareto page]({page_link})."]
    return "\n".join(lines)


# an earlier Pareto section: from its heading to the next heading of level 1 to 3, or the end
_EARLIER_SECTION = re.compile(rf"\n*{re.escape(SECTION_HEADING)} \(.*?(?=\n#{{1,3}} |\Z)",
                              re.DOTALL)


def with_section(description: str, section: str) -> str:
    """``description`` with ``section`` at its end, in place of an earlier Pareto section (a search
    run again publishes its grown front once, not twice); the rest of the text is kept as it was."""
    kept = _EARLIER_SECTION.sub("", description).rstrip()
    return f"{kept}\n\n{section}" if kept else section


def trial_images(client, study: Study, scratch: Path,
                 side: int = THUMBNAIL_SIDE) -> dict[int, bytes]:
    """Each COMPLETE trial's result (else its last finite image) as a PNG at most ``side`` px; a
    trial whose run has no readable picture is left out, so a missing image never stops the page."""
    from nst.compare.review import thumbnail  # review imports pareto: imported when used

    pictures = sweep_report.Pictures(client, scratch)
    found = {}
    for row in study.table[study.complete].to_dict("records"):
        if not row["run_id"]:
            continue
        data = sweep_report.result_bytes(pictures(row["run_id"]))
        try:
            found[int(row["trial"])] = thumbnail(data, side) if data else None
        except Exception:  # noqa: BLE001 - a damaged picture is shown as a missing one
            found[int(row["trial"])] = None
    return {trial: data for trial, data in found.items() if data}


def render_page(study: Study, images: Mapping[int, bytes], extra: Sequence[Mapping] = ()) -> str:
    """pareto.html for ``study``: every trial with whether it is on the front, the hypervolume after
    each trial and ``images`` (trial -> PNG bytes), laid out by ``nst.compare.pareto_page``."""
    rows = study.table.to_dict("records")
    for row, front in zip(rows, study.on_front, strict=True):
        row["front"] = bool(front)
    complete = [p for p, ok in zip(study.points, study.complete, strict=True) if ok]
    reference = reference_point(complete, study.directions) if complete else None
    volumes = (hypervolume_by_trial(study.table, study.objectives, reference)
               if len(study.objectives) == 2 else [])
    return pareto_page.render(
        title=f"Pareto front · {study.name}" if study.name else "Pareto front", rows=rows,
        params=study.params, objectives=study.objectives, meanings=MEANINGS,
        importances=study.importances, hypervolumes=volumes, reference=reference, images=images,
        space=study.space, sampler=study.sampler, seed=study.seed, extra=extra)


def publish_study(client, parent_id: str, study: Study, folder: Path) -> Path:
    """Write pareto.csv (``front_table``) and pareto.html (the page) into ``folder``, log both to
    the parent run under ``study/``, and end the parent's description with the front's section
    (``front_markdown``), keeping the text before it. Returns the page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        images = trial_images(client, study, Path(scratch))
    front_table(study).to_csv(folder / FRONT_CSV, index=False)
    page = folder / FRONT_HTML
    page.write_text(render_page(study, images), encoding="utf-8")
    for path in (folder / FRONT_CSV, page):
        client.log_artifact(parent_id, str(path), STUDY_FOLDER)
    parent = client.get_run(parent_id)
    link = store.run_address(None, parent.info.experiment_id, parent_id,
                             f"{STUDY_FOLDER}/{FRONT_HTML}")
    section = front_markdown(study, link)
    description = parent.data.tags.get(tags.TAG_DESCRIPTION, "")
    client.set_tag(parent_id, tags.TAG_DESCRIPTION, with_section(description, section))
    return page
