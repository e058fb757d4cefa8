"""The MLflow UI, served on 127.0.0.1 and opened in headless Chromium, shows nst's runs and images,
and a sweep is compared in its report, inside MLflow's artifact viewer.

Slow; needs Debian's chromium (`.ci/run` installs it) and the playwright package (dev extra).
The screenshots are kept in outputs/test-artifacts/.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from nst.tracking import tags
from tests.helpers import REPO
from tests.helpers.store import store_client
from tests.helpers.waiting import free_port

pytestmark = pytest.mark.slow
KEEP = REPO / "outputs" / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is not installed: `apt-get install chromium` (.ci/run does this)")


PARENT = "β · random 64 px · 2 epochs · tubingen + starry_night"  # the sweep's parent run, by its name


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("ui") / "outputs"
    out.mkdir()
    env = {**os.environ, "NST_OUTPUT_DIR": str(out)}
    done = subprocess.run([sys.executable, "-m", "nst.cli", "-m", "content=tubingen", "style=starry_night",
                           "model=random", "image.size=64", "epochs=2", "optimizer.max_iter=4", "frame_every=3",
                           "progress=false", "loss.style_weight=1e-2,1,1e4"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@contextlib.contextmanager
def serve(out, port: int | None = None):
    """``mlflow ui`` on the store under ``out``, on 127.0.0.1: its address."""
    port = port or free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{out / 'mlflow.db'}",
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"mlflow ui did not start: {server.stdout.read().decode()[-2000:]}")
                time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def ui(store):
    with serve(store) as url:
        yield url


def test_ui_shows_runs_and_an_image(store, ui):
    from playwright.sync_api import sync_playwright

    client = store_client(store)
    experiment = client.get_experiment_by_name("nst")
    child = client.search_runs([experiment.experiment_id], f"tags.`{tags.TAG_ROLE}` = 'run'")[0]
    KEEP.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # MLflow 3 opens experiments on its GenAI pages; the runs table is the "machine learning" view
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
                  wait_until="load")
        page.get_by_text("4 matching runs").wait_for(timeout=60000)  # the parent and its 3 children
        page.get_by_text(PARENT, exact=False).first.wait_for(timeout=60000)
        page.screenshot(path=str(KEEP / "mlflow_ui_runs.png"), full_page=True)

        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}/artifacts/"
                  "result/result.png?workflowType=machine_learning", wait_until="load")
        # the artifact viewer shows the run's result image, loaded from the server
        page.wait_for_function("() => [...document.images].some(i => i.src.startsWith('blob:') && "
                               "i.complete && i.naturalWidth === 64)", timeout=60000)
        assert "result/result.png" in page.inner_text("body")
        page.screenshot(path=str(KEEP / "mlflow_ui_image.png"), full_page=True)
        browser.close()
    assert (KEEP / "mlflow_ui_runs.png").stat().st_size > 10000


def _no_dialog(page) -> None:
    """Nothing modal over the page (MLflow 3's GenAI overview opened with a "Detect Issues" popover)."""
    assert page.get_by_role("dialog").count() == 0 or not page.get_by_role("dialog").first.is_visible()
    assert not page.get_by_text("Detect Issues").first.is_visible()


def test_a_sweep_is_compared_side_by_side_from_the_home_page(store, ui):
    """The clicks a person makes from MLflow's home page to two labelled results side by side."""
    from playwright.sync_api import sync_playwright

    client = store_client(store)
    experiment = client.get_experiment_by_name("nst")
    labels = ["β=0.01 · α/β=100", "β=1 · α/β=1", "β=1e4 · α/β=1e-4"]
    KEEP.mkdir(parents=True, exist_ok=True)
    clicks = []

    def click(locator, what):
        locator.click()
        clicks.append(what)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        # the address nst prints for the experiment's runs opens the runs table, no dialog over it
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning", wait_until="load")
        page.get_by_text("4 matching runs").wait_for(timeout=60000)
        assert "/runs" in page.url
        _no_dialog(page)
        page.screenshot(path=str(KEEP / "sweep_1_runs_table.png"))

        page = context.new_page()  # a new user: MLflow's home page, nothing remembered
        page.goto(ui + "/", wait_until="load")
        click(page.get_by_role("link", name="nst", exact=True).first, "the experiment")
        got_it = page.get_by_role("button", name="Got it")
        try:  # MLflow 3.17 opens it on its GenAI pages, with a popover over them
            got_it.wait_for(timeout=15000)
            click(got_it, "the popover's Got it")
        except Exception:  # noqa: BLE001 - another MLflow release: no popover
            pass
        click(page.get_by_text("Model training", exact=True).first, "Model training")
        page.get_by_text("4 matching runs").wait_for(timeout=60000)
        click(page.get_by_role("link", name=PARENT, exact=False).first, "the sweep's run")
        for label in labels:  # the parent's page lists its children by their swept values
            page.get_by_role("link", name=label).wait_for(timeout=60000)
        page.get_by_text("Compare the results").wait_for(timeout=60000)
        page.screenshot(path=str(KEEP / "sweep_2_parent.png"), full_page=True)
        with context.expect_page() as opened:  # the description's link opens the report in a new tab
            click(page.get_by_role("link", name="the sweep's report"), "the report link")
        page = opened.value
        report = page.frame_locator("iframe").first
        figures = report.locator("figure.job")
        figures.first.wait_for(timeout=60000)
        assert [figures.nth(i).get_attribute("data-label") for i in range(figures.count())] == labels
        for i, label in enumerate(labels):
            assert figures.nth(i).locator("figcaption").inner_text().startswith(label)
        page.screenshot(path=str(KEEP / "sweep_3_report.png"), full_page=True)

        shots = report.locator("figure.job img.shot")

        def sources():
            return [shots.nth(i).get_attribute("src") for i in range(shots.count())]

        final = sources()
        slider = report.locator("#step")
        frames = json.loads(report.locator("#frames").inner_text())

        def move(position):
            slider.evaluate("(s, v) => { s.value = v; s.dispatchEvent(new Event('input')); }", str(position))
            return sources()

        start, end = move(0), move(len(frames["steps"]) - 1)  # the starting images, the grid's last step
        for job, (first, last) in enumerate(zip(start, end, strict=True)):  # each run's own frames, every run moved
            assert first == frames["images"][frames["jobs"][str(job)][0]]
            assert last == frames["images"][frames["jobs"][str(job)][-1]] and last != first
        page.screenshot(path=str(KEEP / "sweep_4_slider.png"), full_page=True)
        slider.evaluate("s => { s.value = s.max; s.dispatchEvent(new Event('input')); }")
        assert sources() == final
        click(shots.nth(0), "the first result")
        click(shots.nth(2), "the third result")
        compare = report.locator("#compare")
        compare.wait_for(state="visible", timeout=10000)
        captions = compare.locator("figcaption")
        assert captions.nth(0).inner_text().startswith(labels[0]) and captions.nth(1).inner_text().startswith(labels[2])
        assert compare.locator("img").nth(0).get_attribute("src") == final[0]
        assert compare.locator("img").nth(1).get_attribute("src") == final[2]
        page.screenshot(path=str(KEEP / "sweep_5_side_by_side.png"), full_page=True)
        browser.close()
    print(f"clicks from MLflow's home page to a labelled side-by-side: {len(clicks)}: {', '.join(clicks)}")
    assert len(clicks) <= 7, clicks


def test_two_sweeps_are_compared_on_one_page_from_disk_and_from_mlflow(tmp_path):
    """Two sweeps that differ in epochs: nst-report --compare's page has a row per swept value and a column per
    sweep headed by epochs, every link on it at the UI's configured port, and MLflow shows the same page."""
    from playwright.sync_api import sync_playwright

    out = tmp_path / "outputs"
    out.mkdir()
    port = free_port()
    env = {**os.environ, "NST_OUTPUT_DIR": str(out), "NST_UI_PORT": str(port)}
    sweep = [sys.executable, "-m", "nst.cli", "-m", "content=tubingen", "style=starry_night", "model=random",
             "image.size=48", "optimizer.max_iter=4", "frame_every=3", "progress=false", "loss.style_weight=1,1e4"]
    for epochs in (1, 2):
        done = subprocess.run([*sweep, f"epochs={epochs}"], capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    experiment = client.get_experiment_by_name("nst")
    first, second = sorted(client.search_runs([experiment.experiment_id], f"tags.`{tags.TAG_ROLE}` = 'sweep'"),
                           key=lambda run: run.info.start_time)
    without_port = {key: value for key, value in env.items() if key != "NST_UI_PORT"}  # remembered beside the store
    done = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--uri", f"sqlite:///{out / 'mlflow.db'}",
                           "--compare", first.info.run_id, "latest"], capture_output=True, text=True,
                          env=without_port, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    page_path = lines[0].removeprefix("nst-report: comparison ")
    address = lines[1].removeprefix("nst-report: in MLflow ")
    assert address.startswith(f"http://127.0.0.1:{port}/#/experiments/") and address.endswith(
        "/artifacts/compare/report.html?workflowType=machine_learning")
    KEEP.mkdir(parents=True, exist_ok=True)

    def check(frame) -> None:
        figures = frame.locator("figure.job")
        figures.first.wait_for(timeout=60000)
        headings = [frame.locator("table.grid2d tr").first.locator("th").nth(i).inner_text() for i in (1, 2)]
        assert headings == ["epochs=1", "epochs=2"], headings
        rows = frame.locator("table.grid2d tr")
        assert [rows.nth(i).locator("th").first.inner_text() for i in (1, 2)] == ["β=1", "β=1e4"]
        for i, label in ((1, "β=1 · α/β=1"), (2, "β=1e4 · α/β=1e-4")):  # matched: one swept value per row
            assert [f.get_attribute("data-label") for f in rows.nth(i).locator("figure.job").all()] == [label] * 2
        assert "SSIM" in figures.first.locator(".details").inner_text()
        links = [a.get_attribute("href") for a in frame.locator("a[href^='http']").all()]
        assert len(links) == 4 and all(link.startswith(f"http://127.0.0.1:{port}/#/experiments/") for link in links)

    with serve(out, port) as ui, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"file://{page_path}", wait_until="load")
        check(page)
        page.screenshot(path=str(KEEP / "compare_page.png"), full_page=True)
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
                  wait_until="load")  # the runs list after two sweeps: every name tells its sweep
        page.get_by_text("β · random 48 px · 1 epochs · tubingen + starry_night").first.wait_for(timeout=60000)
        page.screenshot(path=str(KEEP / "compare_runs_list.png"), full_page=True)
        # the charts of the two sweeps' runs (each parent expanded, as a person clicks its "+"): the loss
        # companions on a log scale in a section of their own, the final values as bars
        jobs = urllib.parse.quote(f"tags.`{tags.TAG_ROLE}` = 'run'")
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
                  f"&compareRunsMode=CHART&searchFilter={jobs}", wait_until="load")
        expanders = page.locator("button[data-component-id*='runnamecellrenderer']")
        expanders.first.wait_for(timeout=60000)
        page.get_by_text("6 matching runs").wait_for(timeout=60000)  # the page has its runs
        page.wait_for_timeout(3000)  # and their charts
        for expander in expanders.all():
            expander.click()
        page.get_by_placeholder("Search metric charts").fill("log10")
        page.get_by_text("log10", exact=True).first.wait_for(timeout=60000)  # the section of the log10/ charts
        page.wait_for_timeout(3000)  # the charts draw after their data arrive
        page.screenshot(path=str(KEEP / "compare_charts.png"), full_page=True)
        page.goto(address, wait_until="load")  # the address nst-report printed: the same page inside MLflow
        check(page.frame_locator("iframe").first)
        page.screenshot(path=str(KEEP / "compare_in_mlflow.png"), full_page=True)
        browser.close()
