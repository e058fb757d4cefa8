"""The Pareto front of a multi-objective search (nst/compare/pareto.py, pareto_page.py): dominance,
the hypervolume, reading the study's files, the page and what is published to the search's parent
run."""

from __future__ import annotations

import io
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nst.compare import pareto, pareto_page
from nst.tracking import store, tags
from tests.helpers.reviews import picture

SSIM, GRAM = pareto.SSIM_CONTENT, pareto.GRAM_DISTANCE_STYLE
BOTH = [pareto.MAXIMIZE, pareto.MINIMIZE]  # (ssim, gram)


# --- dominance and the hypervolume ------------------------------------------------------------


def test_a_point_beaten_on_every_objective_is_off_the_front_either_way_round():
    points = [(0.9, 1.0), (0.5, 0.5), (0.4, 0.6), (0.95, 2.0)]
    assert pareto.non_dominated(points, BOTH) == [True, True, False, True]
    # the same trade-off with both objectives maximized (the distance negated) and both minimized
    expected = [True, True, False, True]
    assert pareto.non_dominated([(s, -g) for s, g in points], ["maximize", "maximize"]) == expected
    assert pareto.non_dominated([(-s, g) for s, g in points], ["minimize", "minimize"]) == expected


def test_equal_points_both_stay_and_one_better_on_a_single_objective_dominates():
    assert pareto.non_dominated([(1, 1), (1, 1), (0, 2)], BOTH) == [True, True, False]
    # the same ssim and less distance to the style
    assert pareto.non_dominated([(1, 1), (1, 0.5)], BOTH) == [False, True]


def test_a_point_with_a_nan_is_never_on_the_front_and_beats_nothing():
    points = [(math.nan, 0.0), (0.5, 1.0), (0.6, math.nan)]
    assert pareto.non_dominated(points, BOTH) == [False, True, False]
    assert pareto.non_dominated([(math.nan, math.nan)], BOTH) == [False]
    assert pareto.non_dominated([], BOTH) == []
    with pytest.raises(ValueError, match="direction"):
        pareto.non_dominated([(1, 1)], ["up", "down"])


def _grid_count(points, directions, reference, cells=400) -> float:
    """The dominated area counted on a fine grid of cell centres (both objectives turned to larger
    is better)."""
    sign = np.array([1 if d == "maximize" else -1 for d in directions], dtype=float)
    gains = np.array(points, dtype=float) * sign
    corner = np.array(reference, dtype=float) * sign
    top = gains.max(axis=0)
    xs = corner[0] + (np.arange(cells) + 0.5) * (top[0] - corner[0]) / cells
    ys = corner[1] + (np.arange(cells) + 0.5) * (top[1] - corner[1]) / cells
    gx, gy = np.meshgrid(xs, ys)
    covered = np.zeros_like(gx, dtype=bool)
    for x, y in gains:
        covered |= (gx <= x) & (gy <= y)
    return covered.mean() * (top[0] - corner[0]) * (top[1] - corner[1])


@pytest.mark.parametrize("seed", range(4))
def test_the_hypervolume_is_the_area_a_grid_count_finds(seed):
    rng = np.random.default_rng(seed)
    points = list(zip(rng.uniform(-1, 1, 12).tolist(), rng.uniform(0, 3, 12).tolist(), strict=True))
    reference = (-1.1, 3.3)
    exact = pareto.hypervolume(points, BOTH, reference)
    assert exact == pytest.approx(_grid_count(points, BOTH, reference), rel=0.02)


def test_the_hypervolume_of_simple_points_and_of_points_not_beyond_the_reference():
    # ssim up, distance down, reference (0, 10): (1, 5) covers 1 x 5, (0.5, 2) adds 0.5 x 3
    assert pareto.hypervolume([(1, 5), (0.5, 2)], BOTH, (0, 10)) == pytest.approx(6.5)
    # a duplicate and a dominated point add nothing
    assert pareto.hypervolume([(1, 5), (1, 5), (0.2, 8)], BOTH, (0, 10)) == pytest.approx(5.0)
    # on the reference's edge, or with a NaN: nothing
    assert pareto.hypervolume([(0, 5), (1, 10), (math.nan, 1)], BOTH, (0, 10)) == 0.0
    assert pareto.hypervolume([], BOTH, (0, 10)) == 0.0


def test_the_default_reference_lies_a_tenth_of_the_range_beyond_the_worst():
    points = [(0.2, 1.0), (0.6, 3.0), (math.nan, 9.0)]
    assert pareto.reference_point(points, BOTH) == pytest.approx((0.16, 3.2))
    alone = pareto.reference_point([(0.5, 2.0)], BOTH)
    assert alone == pytest.approx((0.5 - 1e-9, 2.0 + 1e-9), abs=1e-12)
    assert pareto.hypervolume([(0.5, 2.0)], BOTH, pareto.reference_point([(0.5, 2.0)], BOTH)) > 0
    with pytest.raises(ValueError):
        pareto.reference_point([(math.nan, 1.0)], BOTH)


def test_the_hypervolume_after_each_trial_never_falls():
    rng = np.random.default_rng(3)
    table = _table(rng, 15, failed={2, 7})
    volumes = pareto.hypervolume_by_trial(table, pareto.OBJECTIVES)
    assert len(volumes) == 15 and all(b >= a for a, b in zip(volumes, volumes[1:], strict=False))
    assert volumes[2] == volumes[1] and volumes[-1] > 0  # a failed trial adds nothing
    complete = table[table["state"] == "COMPLETE"]
    assert volumes[-1] == pytest.approx(pareto.hypervolume(
        list(zip(complete[SSIM], complete[GRAM], strict=True)), BOTH,
        pareto.reference_point(list(zip(complete[SSIM], complete[GRAM], strict=True)), BOTH)))
    assert pareto.hypervolume_by_trial(table.assign(state="FAIL"), pareto.OBJECTIVES) == [0.0] * 15


# --- the study's files ------------------------------------------------------------------------


def _table(rng, count: int, failed=(), run_ids=None) -> pd.DataFrame:
    rows = []
    for trial in range(count):
        done = trial not in failed
        rows.append({"trial": trial, "state": "COMPLETE" if done else "FAIL",
                     "run_id": (run_ids or {}).get(trial, f"run{trial:02d}" if done else ""),
                     "params.loss.style_weight": float(10 ** rng.uniform(-2, 4)),
                     "params.content_layers": "[conv4_2]" if trial % 2 else "[conv5_2]",
                     "params.optimizer.lr": float(rng.uniform(0.1, 1)), "params.init": "content",
                     SSIM: float(rng.uniform(-0.2, 1)) if done else math.nan,
                     GRAM: float(rng.uniform(0, 3)) if done else math.nan})
    return pd.DataFrame(rows)


STUDY = {"name": "tubingen-starry", "storage": "sqlite:///study.db", "sampler": "NSGAIISampler",
         "seed": 7, "objectives": {SSIM: "maximize", GRAM: "minimize"},
         "space": {"loss.style_weight": "tag(log, interval(1e-2, 1e4))",
                   "content_layers": "choice([conv4_2], [conv5_2])"},
         "importances": {SSIM: {"loss.style_weight": 0.8, "optimizer.lr": 0.15, "init": 0.05},
                         GRAM: {"loss.style_weight": 0.6, "optimizer.lr": 0.4}}}


def _write_study(sweep_dir: Path, table: pd.DataFrame, described=None, missing: str = "") -> Path:
    folder = sweep_dir / "study"
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "trials.csv", index=False, na_rep=missing)
    (folder / "study.json").write_text(json.dumps(described or STUDY), encoding="utf-8")
    return sweep_dir


def _small_study(tmp_path: Path, run_ids=None) -> pareto.Study:
    """Six trials: 0, 2 and 4 on the front, 1 and 5 beaten by 2, 3 failed; trial 4's layers are
    markup, which the page must escape."""
    table = pd.DataFrame({
        "trial": [0, 1, 2, 3, 4, 5],
        "state": ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"],
        "run_id": [(run_ids or {}).get(t, f"run{t}") if t != 3 else "" for t in range(6)],
        "params.loss.style_weight": [0.01, 1.0, 100.0, 1e3, 1e4, 10.0],
        "params.content_layers": ["[conv4_2]", "[conv4_2]", "[conv5_2]", "[conv4_2]", "<b>x</b>",
                                  "[conv4_2]"],
        SSIM: [0.9, 0.5, 0.6, math.nan, 0.2, 0.55],
        GRAM: [2.0, 1.8, 1.0, math.nan, 0.3, 1.2]})
    return pareto.read_study(_write_study(tmp_path / "sweep", table))


def test_a_study_is_read_back_with_its_trials_in_order_and_its_description(tmp_path):
    table = _table(np.random.default_rng(0), 5, failed={3}).iloc[[4, 0, 1, 2, 3]]  # out of order
    study = pareto.read_study(_write_study(tmp_path, table, missing="nan"))  # as csv writes NaN
    assert list(study.table["trial"]) == [0, 1, 2, 3, 4]
    assert study.table.loc[3, "run_id"] == "" and math.isnan(study.table.loc[3, SSIM])
    assert study.params == ["params.loss.style_weight", "params.content_layers",
                            "params.optimizer.lr", "params.init"]
    assert study.objectives == STUDY["objectives"] and list(study.objectives) == [SSIM, GRAM]
    assert (study.name, study.sampler, study.seed) == ("tubingen-starry", "NSGAIISampler", 7)
    assert study.importances[GRAM]["optimizer.lr"] == 0.4 and study.space == STUDY["space"]
    assert list(study.complete) == [True, True, True, False, True]


def test_no_study_files_is_no_study(tmp_path):
    assert pareto.read_study(tmp_path) is None
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text(json.dumps(STUDY))
    assert pareto.read_study(tmp_path) is None  # no trials.csv


def test_the_objectives_and_their_order_come_from_the_study(tmp_path):
    table = pd.DataFrame({"trial": [0, 1, 2], "state": ["COMPLETE"] * 3, "run_id": ["a", "b", "c"],
                          "params.x": [1, 2, 3], "loss": [1.0, 2.0, 3.0], "speed": [1.0, 1.0, 5.0]})
    described = {**STUDY, "objectives": {"loss": "minimize", "speed": "maximize"},
                 "importances": {}}
    study = pareto.read_study(_write_study(tmp_path, table, described))
    front = pareto.front_table(study)
    assert list(front["trial"]) == [0, 2]  # the lowest loss first
    assert list(front.columns) == ["trial", "run_id", "params.x", "loss", "speed"]


def test_the_front_table_holds_the_complete_trials_no_other_beats_best_first(tmp_path):
    study = _small_study(tmp_path)
    front = pareto.front_table(study)
    assert list(front["trial"]) == [0, 2, 4]  # by ssim, highest first
    assert list(front.columns) == ["trial", "run_id", "params.loss.style_weight",
                                   "params.content_layers", SSIM, GRAM]
    assert list(study.on_front) == [True, False, True, False, True, False]


# --- the page ---------------------------------------------------------------------------------


class _Elements(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self):
        super().__init__()
        self.found: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)


def _elements(page: str) -> list[tuple[str, dict]]:
    parser = _Elements()
    parser.feed(page)
    return parser.found


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    picture(seed).save(out, format="PNG")
    return out.getvalue()


def test_the_page_plots_one_point_per_complete_trial_with_the_front_marked(tmp_path):
    study = _small_study(tmp_path)
    page = pareto.render_page(study, {0: _png(0), 2: _png(2)})
    points = [a for tag, a in _elements(page) if tag == "circle" and "data-front" in a]
    assert sorted(int(a["data-trial"]) for a in points) == [0, 1, 2, 4, 5]
    assert sorted(int(a["data-trial"]) for a in points if a["data-front"] == "1") == [0, 2, 4]
    assert all("front" in a["class"].split() for a in points if a["data-front"] == "1")
    assert all("dominated" in a["class"].split() for a in points if a["data-front"] == "0")
    assert any(tag == "path" and a.get("class") == "staircase" for tag, a in _elements(page))
    assert "trial 3 (FAIL)" in page  # listed, not plotted
    # the hypervolume after each of the six trials, and every trial in the table in order
    assert any(tag == "svg" and a.get("id") == "hypervolume" for tag, a in _elements(page))
    rows = re.findall(r"<tr(?: data-trial=\"\d\" tabindex=\"0\")?><td>(\d)</td>", page)
    assert rows == ["0", "1", "2", "3", "4", "5"]


def test_a_trials_image_and_settings_are_in_its_panel(tmp_path):
    study = _small_study(tmp_path)
    image = _png(2)
    page = pareto.render_page(study, {2: image})
    panel = page[page.index('id="detail-2"'):]
    panel = panel[:panel.index("</div>")]
    assert pareto_page.data_uri(image) in panel
    for text in ("<dt>loss.style_weight</dt><dd>100</dd>",
                 "<dt>content_layers</dt><dd>[conv5_2]</dd>", f"<dt>{SSIM}</dt><dd>0.6</dd>",
                 f"<dt>{GRAM}</dt><dd>1</dd>", "<dt>MLflow run</dt><dd>run2</dd>"):
        assert text in panel
    assert "no result image" in page[page.index('id="detail-0"'):]  # a missing image leaves a note
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page  # every value escaped


def test_the_page_explains_the_importances_and_draws_extra_points(tmp_path):
    study = _small_study(tmp_path)
    rows = study.table.assign(front=study.on_front).to_dict("records")
    page = pareto_page.render("t", rows, study.params, study.objectives, pareto.MEANINGS,
                              STUDY["importances"],
                              extra=[{"label": "grid run β=1e4", "x": 0.5, "y": 0.4}])
    assert "fANOVA" in page and "not a cause" in page
    assert ('<th>loss.style_weight</th><td class="num">80 %</td><td class="num">60 %</td>'
            in page)
    diamonds = [a for tag, a in _elements(page) if tag == "rect" and a.get("class") == "extra"]
    assert len(diamonds) == 2  # the point and its legend entry
    assert "grid run β=1e4" in page and "more of the style taken" in page
    grid = [{"label": "grid β=1", "x": 1, "y": 0.5}, {"label": "grid β=100", "x": 0.4, "y": 0.3}]
    assert pareto_page.extra_legend(grid) == "grid"
    assert pareto_page.extra_legend([*grid, {"label": "seed", "x": 1, "y": 1}]) == "other runs"
    empty = pareto_page.render("t", [], [], study.objectives, importances={SSIM: {}, GRAM: {}})
    assert "could not compute importances" in empty and "No complete trial" in empty


def test_the_page_loads_nothing_from_the_network(tmp_path):
    study = _small_study(tmp_path)
    page = pareto.render_page(study, {0: _png(0)})
    for tag, attributes in _elements(page):
        for name in ("src", "href", "xlink:href"):
            assert not re.match(r"\s*(https?:)?//", attributes.get(name) or ""), (tag, attributes)
    assert "<link" not in page and not re.search(r"@import|url\(\s*['\"]?https?:", page)


# --- publishing to the parent run -------------------------------------------------------------


@pytest.fixture
def parent(tmp_path):
    """A store with a search's parent run (with a description) and a FINISHED child per trial of
    ``_small_study``, each with a result image but the second."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.open_store(uri, create=True, artifact_root=(tmp_path / "mlartifacts").as_uri())
    experiment = client.create_experiment(
        "nst", artifact_location=(tmp_path / "mlartifacts" / "nst").as_uri())
    parent = client.create_run(experiment, tags={
        tags.TAG_ROLE: "sweep", tags.TAG_DESCRIPTION: "Searched β and the layers."}).info.run_id
    children = {}
    for trial in (0, 1, 2, 4, 5):
        run = client.create_run(experiment, tags={tags.PARENT_TAG: parent}).info.run_id
        if trial != 2:
            client.log_image(run, picture(trial), artifact_file="result/result.png")
        client.set_terminated(run, "FINISHED")
        children[trial] = run
    return client, parent, children


def test_publishing_logs_the_front_and_extends_the_description(parent, tmp_path):
    client, parent_id, children = parent
    study = _small_study(tmp_path, run_ids=children)
    page = pareto.publish_study(client, parent_id, study, tmp_path / "sweep" / "study")
    assert page == tmp_path / "sweep" / "study" / "pareto.html" and page.is_file()
    logged = {item.path for item in client.list_artifacts(parent_id, "study")}
    assert logged == {"study/pareto.csv", "study/pareto.html"}
    assert list(pd.read_csv(tmp_path / "sweep" / "study" / "pareto.csv")["trial"]) == [0, 2, 4]
    text = page.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 4  # every plotted trial's result but trial 2's
    description = client.get_run(parent_id).data.tags[tags.TAG_DESCRIPTION]
    assert description.startswith("Searched β and the layers.\n\n### Pareto front (3 of 6 trials)")
    lines = description.splitlines()
    table = lines[lines.index(f"| trial | loss.style_weight | content_layers | {SSIM} | {GRAM} |"):]
    # the front, best ssim first; Markdown's brackets escaped (MLflow renders the description)
    assert table[2:5] == ["| 0 | 0.01 | \\[conv4_2\\] | 0.9 | 2 |",
                          "| 2 | 100 | \\[conv5_2\\] | 0.6 | 1 |",
                          "| 4 | 1e4 | &lt;b&gt;x&lt;/b&gt; | 0.2 | 0.3 |"]
    experiment = client.get_run(parent_id).info.experiment_id
    link = store.run_address(None, experiment, parent_id, "study/pareto.html")
    assert f"]({link})" in description
    # published again (the search went on): one section, the latest
    pareto.publish_study(client, parent_id, study, tmp_path / "sweep" / "study")
    again = client.get_run(parent_id).data.tags[tags.TAG_DESCRIPTION]
    assert again == description and again.count("### Pareto front") == 1


def test_a_trial_whose_image_cannot_be_read_is_shown_without_one(parent, tmp_path):
    client, parent_id, children = parent
    study = _small_study(tmp_path, run_ids={**children, 0: "0" * 32})  # no such run
    images = pareto.trial_images(client, study, tmp_path / "scratch")
    assert set(images) == {1, 4, 5}
    assert Image.open(io.BytesIO(images[1])).size == picture(1).size  # small ones are not enlarged
