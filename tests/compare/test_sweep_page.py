"""report.html, a sweep's self-contained page: built from made-up rows (fast) and from real sweeps (CLI)."""

from __future__ import annotations

import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from nst.compare import sweep_page, sweep_report
from nst.tracking import store, tags
from tests.helpers.cli import run_nst
from tests.helpers.overrides import SWEEP_JOB
from tests.helpers.store import artifact_paths, runs, store_client


class Page(HTMLParser):
    """What a test looks at in the page: the job figures, every src/href, the slider, the plot's links."""

    def __init__(self, text: str):
        super().__init__()
        self.figures: list[dict] = []
        self.references: list[str] = []
        self.slider: dict | None = None
        self.plot_links: list[str] = []
        self.ids: list[str] = []
        self.table_links: list[str] = []
        self._in = {"plot": 0, "summary": 0, "figure": 0}
        self._stack: list[str] = []
        self.text = text
        self.feed(text)
        found = re.search(r'<script type="application/json" id="frames">(.*?)</script>', text, re.S)
        self.frames = json.loads(found[1]) if found else None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for name in ("src", "href", "xlink:href"):
            if name in attrs:
                self.references.append(attrs[name])
        if tag == "figure" and "job" in attrs.get("class", "").split():
            self.figures.append({**attrs, "captions": [], "images": 0})
        if tag == "img" and self.figures and self._in["figure"]:
            self.figures[-1]["images"] += 1
        if tag == "input" and attrs.get("id") == "step":
            self.slider = attrs
        if tag == "a" and self._in["plot"]:
            self.plot_links.append(attrs.get("xlink:href") or attrs.get("href"))
        if tag == "a" and self._in["summary"]:
            self.table_links.append(attrs.get("href"))
        for key in self._in:
            if (key == "figure" and tag == "figure" and "job" in attrs.get("class", "")) or attrs.get("id") == key:
                self._in[key] += 1
        self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "figure" and self._in["figure"]:
            self._in["figure"] -= 1
        if tag == "section" and self._in["plot"]:
            self._in["plot"] = 0
        if tag == "table" and self._in["summary"]:
            self._in["summary"] = 0

    def handle_data(self, data):
        if self._in["figure"] and self.figures and self.lasttag == "figcaption":
            self.figures[-1]["captions"].append(data)


def png(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def row(job, value, status="FINISHED", content=0.1, style=0.01, key="loss.style_weight"):
    return {"job": job, "run_id": f"run{job}", "status": status, key: value, "label": f"β={value}",
            "final_total": content + style, "final_content": content, "final_style": style,
            "evaluations": 12, "elapsed_s": 1.5, "failure": ""}


def assert_self_contained(page: Page) -> None:
    outside = [ref for ref in page.references if not ref.startswith(("data:", "#"))]
    assert not outside, f"the page refers to files or the network: {outside[:3]}"
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", page.text)
    assert "<link" not in page.text and not re.search(r"<script[^>]+src=", page.text)


# --- the page from made-up rows (no MLflow) ----------------------------------------------------


def test_page_shows_every_job_large_in_table_order_with_its_label_and_status():
    rows = [row(2, "1e4"), row(0, "1", status="FAILED"), row(1, "100")]
    images = {2: sweep_page.JobImages(result=png((300, 200))), 0: sweep_page.JobImages(result=png()),
              1: sweep_page.JobImages()}
    page = Page(sweep_page.render(rows, ["loss.style_weight"], images, "a title"))
    assert [f["id"] for f in page.figures] == ["job-2", "job-0", "job-1"]
    assert [f["data-job"] for f in page.figures] == ["2", "0", "1"]
    assert [f["data-label"] for f in page.figures] == ["β=1e4", "β=1", "β=100"]
    assert ["".join(f["captions"]) for f in page.figures] == ["β=1e4", "β=1 [FAILED]", "β=100"]
    # shown at its own resolution, not a thumbnail; a run without an image says so
    assert 'style="width:300px;height:200px"' in page.text
    assert page.figures[2]["images"] == 0 and ">no image</div>" in page.text
    assert_self_contained(page)
    assert {"compare", "flicker", "compare-close", "summary"} <= set(page.ids)


def test_slider_has_a_frame_per_run_and_position_and_a_run_that_stopped_keeps_its_last():
    rows = [row(0, "1"), row(1, "100")]
    images = {0: sweep_page.JobImages(result=png(), progress={0: png(colour=(1, 2, 3)), 10: png(),
                                                              20: png(colour=(7, 7, 7))}),
              1: sweep_page.JobImages(result=png(), progress={0: png(), 10: png(colour=(9, 9, 9))})}  # stopped
    page = Page(sweep_page.render(rows, ["loss.style_weight"], images, "t"))
    frames = page.frames
    assert frames["steps"] == [0, 10, 20]
    assert page.slider["min"] == "0" and page.slider["max"] == str(len(frames["steps"]))  # the last: the result
    for job in ("0", "1"):
        assert len(frames["jobs"][job]) == 3 and None not in frames["jobs"][job]
    assert frames["at"]["1"] == [0, 10, 10] and frames["jobs"]["1"][2] == frames["jobs"]["1"][1]
    assert len(set(frames["jobs"]["0"])) == 3
    # an identical frame is embedded once (a run that stopped early repeats its result at every later step)
    assert frames["jobs"]["1"][0] == frames["jobs"]["0"][1] and len(frames["images"]) == 4
    assert all(uri.startswith("data:image/") for uri in frames["images"])
    assert_self_contained(page)


def test_slider_positions_are_thinned_out_and_a_late_starter_has_no_frame_before_its_first():
    assert sweep_page.positions(range(0, 1000, 10)) == sorted(set(sweep_page.positions(range(0, 1000, 10))))
    thinned = sweep_page.positions(range(0, 1000, 10))
    assert len(thinned) == sweep_page.MAX_POSITIONS and thinned[0] == 0 and thinned[-1] == 990
    # a big sweep gets fewer positions, so the page stays a few MB; frames no larger than shown
    assert sweep_page.most_positions(6) == 20 and sweep_page.most_positions(24) == 5
    frame = Image.open(io.BytesIO(sweep_page.encode_frame(Image.new("RGB", (800, 600)))))
    assert frame.format == "WEBP" and frame.size == (sweep_page.SHOW_MAX, 288)
    assert sweep_page.frame_at([0, 10], 25) == 10 and sweep_page.frame_at([5], 0) is None
    frames = sweep_page.frames_data([row(0, "1"), row(1, "2")], {
        0: sweep_page.JobImages(progress={0: png(), 5: png()}), 1: sweep_page.JobImages(progress={5: png()})})
    assert frames["steps"] == [0, 5] and frames["jobs"]["1"][0] is None and frames["jobs"]["1"][1] is not None


def test_plot_points_link_to_their_jobs_on_log_axes_with_tooltips():
    rows = [row(0, "1", content=0.01, style=0.1), row(1, "100", content=0.1, style=0.01),
            row(2, "1e4", content=1.0, style=0.001)]
    page = Page(sweep_page.render(rows, ["loss.style_weight"], {}, "t"))
    # two panels (content, style loss), a link per job in each
    assert sorted(page.plot_links) == sorted(["#job-0", "#job-1", "#job-2"] * 2)
    svg = page.text[page.text.index("<svg"):page.text.index("</svg>")]
    assert "<title>β=1e4: loss.style_weight=1e4, final content loss 1, final style loss 0.001 (job 2)</title>" in svg
    assert "10^{" in svg or "10^" in svg or "\\mathdefault{10^" in svg  # log ticks on the axes
    assert "(log x," in page.text
    assert_self_contained(page)


def test_plot_is_skipped_with_a_reason_when_the_values_are_not_numbers():
    rows = [{**row(0, "x"), "content": "tubingen"}, {**row(1, "y"), "content": "golden_gate"}]
    text = sweep_page.render(rows, ["content"], {}, "t")
    assert "<svg" not in text and "image pairs, not numbers" in text
    rows = [row(0, "[conv1_1]", key="loss.style_layers"), row(1, "[conv2_1]", key="loss.style_layers")]
    text = sweep_page.render(rows, ["loss.style_layers"], {}, "t")
    assert "<svg" not in text and "are not numbers" in text


def test_two_swept_keys_form_rows_by_columns_and_one_series_per_column_value():
    keys = ["loss.style_weight", "image.size"]
    rows = [{**row(job, weight), "image.size": size, "label": f"β={weight} · size={size}"}
            for job, (weight, size) in enumerate([("100", "48"), ("100", "32"), ("1", "48"), ("1", "32")])]
    page = Page(sweep_page.render(rows, keys, {}, "t"))
    assert [f["id"] for f in page.figures] == ["job-3", "job-2", "job-1", "job-0"]  # β ascending, then size
    assert sweep_page.grid_order(rows, keys) == [3, 2, 1, 0]
    assert page.text.count('<table class="grid2d">') == 1 and page.text.count("<th>β=") == 2
    assert sorted(page.plot_links) == sorted([f"#job-{n}" for n in range(4)] * 2)
    assert "size=32" in page.text and "size=48" in page.text  # the legend: a series per size


def test_table_is_sortable_and_every_row_links_to_its_image():
    rows = [row(0, "1"), row(1, "100")]
    page = Page(sweep_page.render(rows, ["loss.style_weight"], {}, "t"))
    assert {"#job-0", "#job-1"} <= set(page.table_links)
    assert 'data-sort="0.01"' in page.text and "localeCompare" in page.text and "parseFloat" in page.text


# --- the page of real sweeps (the CLI in this process, random backbone) ---------------------------------


def report_of(client: MlflowClient, tmp_path) -> tuple[str, Page]:
    parent = runs(client, "sweep")[0].info.run_id
    assert "sweep/report.html" in artifact_paths(client, parent)
    text = open(client.download_artifacts(parent, "sweep/report.html", str(tmp_path))).read()
    return parent, Page(text)


@pytest.fixture(scope="module")
def sweep_1d(tmp_path_factory, random_calibration_cache):
    out = tmp_path_factory.mktemp("page") / "outputs"
    out.mkdir()
    done = run_nst(out, "-m", *SWEEP_JOB, "loss.style_weight=1e4,1",
                   env={"NST_CACHE_DIR": str(random_calibration_cache)})
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_a_sweep_logs_its_report_page_to_the_parent_and_says_where_it_is(sweep_1d, tmp_path):
    out, done = sweep_1d
    client = store_client(out)
    parent, page = report_of(client, tmp_path)
    folder = runs(client, "sweep")[0].data.tags[tags.TAG_SWEEP_DIR]
    assert f"nst: sweep report {folder}/report.html" in done.stdout.splitlines()
    assert (Path(folder) / "report.html").read_text() == page.text
    table = sweep_report.sweep_table(client, parent)
    assert list(table["converged"]) == ["no", "no"]  # 19 evaluations: under the 50 the convergence test needs
    assert "<th>converged</th>" in page.text or ">converged<" in page.text
    assert [f["data-job"] for f in page.figures] == [str(job) for job in table["job"]]
    assert [f["data-label"] for f in page.figures] == list(table["label"])
    assert all(f["images"] == 1 for f in page.figures)
    assert_self_contained(page)


def test_a_sweeps_slider_covers_every_logged_step_of_every_run(sweep_1d, tmp_path):
    out, _ = sweep_1d
    client = store_client(out)
    _, page = report_of(client, tmp_path)
    logged = set()
    for child in runs(client, "run"):
        steps = set(store.step_images(client, child.info.run_id))
        assert steps, "the run logged progress images"
        logged |= steps
    assert page.frames["steps"] == sweep_page.positions(sorted(logged), sweep_page.most_positions(2))
    assert int(page.slider["max"]) == len(page.frames["steps"])
    for child in runs(client, "run"):
        job = child.data.tags[tags.TAG_JOB]
        assert len(page.frames["jobs"][job]) == len(page.frames["steps"])
        first = min(store.step_images(client, child.info.run_id))
        assert all(index is not None for step, index in zip(page.frames["steps"], page.frames["jobs"][job],
                                                               strict=True) if step >= first)


def test_a_sweeps_plot_links_every_finished_job(sweep_1d, tmp_path):
    out, _ = sweep_1d
    _, page = report_of(store_client(out), tmp_path)
    ids = {f["id"] for f in page.figures}
    assert sorted(set(page.plot_links)) == sorted(f"#{i}" for i in ids) and len(page.plot_links) == 2 * len(ids)


@pytest.mark.slow
def test_a_two_key_sweep_page_is_rows_by_columns(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    tiny = [item for item in SWEEP_JOB if not item.startswith("image.size")]
    done = nst(out, "-m", *tiny, "loss.style_weight=1e4,1", "image.size=48,32")
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    parent, page = report_of(client, tmp_path)
    table = sweep_report.sweep_table(client, parent)
    assert table.attrs["swept"] == ["loss.style_weight", "image.size"]
    order = sweep_page.grid_order(table.to_dict("records"), table.attrs["swept"])
    by_job = table.set_index("job")
    assert [(float(by_job.loc[j, "loss.style_weight"]), int(by_job.loc[j, "image.size"])) for j in order] == [
        (1.0, 32), (1.0, 48), (1e4, 32), (1e4, 48)]
    assert [f["data-job"] for f in page.figures] == [str(j) for j in order]
    assert page.text.count('<table class="grid2d">') == 1
    assert sorted(set(page.plot_links)) == sorted(f"#job-{j}" for j in order)
    assert_self_contained(page)


@pytest.mark.slow
def test_an_image_pair_sweep_page_shows_each_jobs_own_inputs(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    tiny = [item for item in SWEEP_JOB if not item.startswith("content=")]
    done = nst(out, "-m", *tiny, "content=tubingen,golden_gate")
    assert done.returncode == 0, done.stderr[-3000:]
    _, page = report_of(store_client(out), tmp_path)
    assert [f["data-label"] for f in page.figures] == ["content=tubingen", "content=golden_gate"]
    assert all(f["images"] == 3 for f in page.figures)  # content, style, result
    contents = re.findall(r'<div class="input"><img src="(data:[^"]+)"[^>]*alt="content"', page.text)
    assert len(contents) == 2 and contents[0] != contents[1]
    assert "<svg" not in page.text and "image pairs, not numbers" in page.text
    assert 'id="inputs"' not in page.text  # no shared inputs above the jobs
    assert "image pairs · backbone random · 32 px · 2 epochs · 2 jobs varying content (content)" in page.text
    assert_self_contained(page)
