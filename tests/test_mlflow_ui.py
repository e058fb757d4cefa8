"""The MLflow UI, served on 127.0.0.1 and opened in headless Chromium, shows nst's runs and images.

Slow; needs Debian's chromium (`.ci/run` installs it) and the playwright package (dev extra).
The screenshots are kept in outputs/test-artifacts/.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
KEEP = REPO / "outputs" / "test-artifacts"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is not installed: `apt-get install chromium` (.ci/run does this)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("ui") / "outputs"
    out.mkdir()
    env = {**os.environ, "NST_OUTPUT_DIR": str(out)}
    done = subprocess.run([sys.executable, "-m", "nst.cli", "-m", "content=tubingen", "style=starry_night",
                           "model=random", "image.size=48", "epochs=2", "optimizer.max_iter=4",
                           "progress=false", "loss.style_weight=1,1e4"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def ui(store):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
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


def test_ui_shows_runs_and_an_image(store, ui):
    from playwright.sync_api import sync_playwright

    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nst")
    child = client.search_runs([experiment.experiment_id], "tags.`nst.role` = 'run'")[0]
    KEEP.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # MLflow 3 opens experiments on its GenAI pages; the runs table is the "machine learning" view
        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
                  wait_until="load")
        page.get_by_text("3 matching runs").wait_for(timeout=60000)  # the parent and its 2 children
        page.get_by_text("sweep ", exact=False).first.wait_for(timeout=60000)
        page.screenshot(path=str(KEEP / "mlflow_ui_runs.png"), full_page=True)

        page.goto(f"{ui}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}/artifacts/"
                  "result/result.png?workflowType=machine_learning", wait_until="load")
        # the artifact viewer shows the run's result image, loaded from the server
        page.wait_for_function("() => [...document.images].some(i => i.src.startsWith('blob:') && "
                               "i.complete && i.naturalWidth === 48)", timeout=60000)
        assert "result/result.png" in page.inner_text("body")
        page.screenshot(path=str(KEEP / "mlflow_ui_image.png"), full_page=True)
        browser.close()
    assert (KEEP / "mlflow_ui_runs.png").stat().st_size > 10000
