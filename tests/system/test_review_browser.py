"""nst-review in headless Chromium over a real sweep: judgements made with the keyboard reach the
store, survive a restart of the app, and two reviewers (on two apps) at once lose and double nothing.

Slow; needs Debian's chromium (`.ci/run` installs it) and the playwright package (dev extra).
The screenshots are kept in outputs/test-artifacts/.
"""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
from mlflow import MlflowClient

from nst.compare import review
from nst.tracking import store, tags
from tests.helpers.waiting import free_port
from tests.system.test_mlflow_ui import CHROMIUM_FLAGS, KEEP, _chromium

pytestmark = pytest.mark.slow
STYLE_WEIGHTS = ("1e-2", "1", "100", "1e4")
KEYS = {"ArrowLeft": "left", "ArrowRight": "right", "=": "tie", "s": "skip"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real sweep of 4 runs; (its store's tracking uri, its parent run id, its 4 child run ids)."""
    out = tmp_path_factory.mktemp("review") / "outputs"
    out.mkdir()
    env = {**os.environ, "NST_OUTPUT_DIR": str(out), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "nst.cli", "-m", "content=tubingen", "style=starry_night",
                           "model=random", "image.size=48", "epochs=1", "optimizer.max_iter=3", "progress=false",
                           f"loss.style_weight={','.join(STYLE_WEIGHTS)}"],
                          capture_output=True, text=True, env=env, cwd=out.parent, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = store.latest_sweep(client, store.DEFAULT_EXPERIMENT)
    children = [run for _, run in store.sweep_runs(client, parent)]
    assert len(children) == 4 and {run.info.status for run in children} == {"FINISHED"}
    return uri, parent, [run.info.run_id for run in children]


class App:
    """``python -m nst.cli.nst_review`` in a subprocess (its own session), its output drained by a thread."""

    def __init__(self, uri: str, port: int = 0):
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nst.cli.nst_review", "--tracking-uri", uri, "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.time() + 120
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.time()))
            except queue.Empty:
                line = None
            if line and "open http://" in line:
                self.url = line.split("open ", 1)[1].split()[0]
                return
            if line is None or (line == "" and self.process.poll() is not None):
                self.kill()
                pytest.fail(f"nst-review did not start: {''.join(self.output)[-3000:]}")

    def _drain(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put("")

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM, as a service manager stops it; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"nst-review did not stop within {timeout} s of SIGTERM: {''.join(self.output)[-2000:]}")

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


ANSWERS_KEPT = "Number(document.body.dataset.count) + Number(document.body.dataset.skipped || 0)"


def _count(page) -> int:
    """Answers kept: judgements and skips (the page shows them apart)."""
    return int(page.evaluate(ANSWERS_KEPT))


def _ready(page, count: int, timeout: float = 60000) -> None:
    """Wait until the page has kept ``count`` answers, has a pair and every answer button enabled."""
    page.wait_for_function(
        f"n => {ANSWERS_KEPT} === n && document.body.dataset.pair && "
        "[...document.querySelectorAll('button[data-answer]')].every(b => !b.disabled)", arg=count, timeout=timeout)


def _judge(page, key: str) -> None:
    """Answer the current pair with ``key`` and wait until the answer is kept and the next pair is there."""
    before, pair = _count(page), page.evaluate("document.body.dataset.pair")
    page.keyboard.press(key)
    _ready(page, before + 1)
    assert page.evaluate("document.body.dataset.pair") != pair


def _open(context, url: str, name: str | None = None):
    page = context.new_page()
    page.goto(url, wait_until="load")
    if name is not None:
        page.locator("#reviewer").fill(name)
        page.locator("#reviewer").press("Enter")
    page.locator("#name-form").wait_for(state="hidden", timeout=10000)
    _ready(page, _count(page))
    page.evaluate("document.activeElement && document.activeElement.blur()")
    return page


def _results_shown(page) -> None:
    page.wait_for_function("() => [...document.querySelectorAll('#pair img, #inputs img')].every("
                           "i => i.complete && i.naturalWidth > 0)", timeout=30000)


def _files(client, home: str) -> list[str]:
    return [item.path for item in client.list_artifacts(home, review.JUDGEMENTS)]


def _check_metrics(client, runs: list[str], judgements) -> None:
    """Each run's human.* metrics are the fit on all ``judgements``, at step = their number."""
    total, skips = len(judgements), sum(j.answer == "skip" for j in judgements)
    comparisons = 0
    for run in runs:
        for name in ("human.score", "human.comparisons"):
            history = client.get_metric_history(run, name)
            assert max(m.step for m in history) == total, (run, name)
        comparisons += client.get_run(run).data.metrics["human.comparisons"]
    assert comparisons == 2 * (total - skips)


def _check_published(client, home: str, judgements) -> None:
    """The home run's human/judgements.jsonl and judgement count tag hold every judgement."""
    with open(client.download_artifacts(home, f"{review.HUMAN}/judgements.jsonl"), encoding="utf-8") as f:
        assert sorted(f.read().splitlines()) == sorted(j.to_json() for j in judgements)
    assert client.get_run(home).data.tags[tags.TAG_JUDGEMENTS] == str(len(judgements))


def _ranking(page, url: str, client, runs: list[str]) -> list[str]:
    """The ranking page's rows: the runs in descending order of their human.score in the store."""
    page.goto(url + "ranking", wait_until="load")
    rows = page.locator("#ranking tr[data-run]")
    shown = [rows.nth(i).get_attribute("data-run") for i in range(rows.count())]
    assert sorted(shown) == sorted(runs)
    scores = [client.get_run(run).data.metrics["human.score"] for run in shown]
    assert scores == sorted(scores, reverse=True), scores
    for i, score in enumerate(scores):
        assert rows.nth(i).locator("td.score").inner_text() == f"{score:+.3g}"
    return shown


def test_twelve_judgements_a_restart_and_three_more_are_fifteen_in_the_store(sweep):
    from playwright.sync_api import sync_playwright

    uri, parent, runs = sweep
    client = MlflowClient(tracking_uri=uri)
    assert _files(client, parent) == []
    keys = ["ArrowLeft", "ArrowRight", "=", "ArrowLeft"] * 3 + ["ArrowRight", "=", "ArrowLeft"]
    port = free_port()  # the same port after the restart: the page's origin, so the name is remembered
    KEEP.mkdir(parents=True, exist_ok=True)
    app = App(uri, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = _open(context, app.url, name="ana")
            assert _count(page) == 0 and page.locator("#who").inner_text() == "reviewer: ana"
            for k, key in enumerate(keys[:12]):
                _judge(page, key)
                if k == 5:  # mid-review: zoomed in once, the settings of the last pair shown
                    page.keyboard.press("+")
                    _results_shown(page)
                    assert "scale(1.25)" in page.locator("#left img").evaluate("i => i.style.transform")
                    page.screenshot(path=str(KEEP / "review_compare.png"))
            assert page.locator("#count").inner_text() == "12 judgements"

            restarted_at = datetime.now(timezone.utc)
            assert app.stop() == 0
            app = App(uri, port)
            assert app.url.endswith(f":{port}/")
            page.reload(wait_until="load")
            page.locator("#name-form").wait_for(state="hidden", timeout=10000)  # the name is remembered
            _ready(page, 12)
            assert page.locator("#count").inner_text() == "12 judgements"
            assert page.locator("#who").inner_text() == "reviewer: ana"
            page.evaluate("document.activeElement && document.activeElement.blur()")
            for key in keys[12:]:
                _judge(page, key)
            assert _count(page) == 15

            files = _files(client, parent)
            assert len(files) == 15 and all(f.startswith("judgements/") and f.endswith(".json") for f in files)
            judgements = review.read(client, parent)
            assert len(judgements) == 15 and len({j.id for j in judgements}) == 15
            assert {j.reviewer for j in judgements} == {"ana"}
            assert {j.left for j in judgements} | {j.right for j in judgements} <= set(runs)
            assert [j.answer for j in judgements] == [KEYS[key] for key in keys]  # oldest first
            made = [datetime.fromisoformat(j.time) for j in judgements]
            assert all(t < restarted_at for t in made[:12]) and all(t > restarted_at for t in made[12:])
            _check_metrics(client, runs, judgements)
            _check_published(client, parent, judgements)

            _ranking(page, app.url, client, runs)
            page.wait_for_function("() => [...document.querySelectorAll('img.thumb')].every("
                                   "i => i.complete && i.naturalWidth > 0)", timeout=30000)
            page.screenshot(path=str(KEEP / "review_ranking.png"), full_page=True)
            browser.close()
        assert app.stop() == 0
    finally:
        app.kill()
    assert (KEEP / "review_compare.png").stat().st_size > 10000


def test_a_publish_overtaken_by_another_apps_is_published_again(sweep, monkeypatch):
    """Two apps at once: the app whose publish ends last had read one judgement fewer than the other;
    the home run's files must still hold every judgement (they were left one behind)."""
    from nst.compare import ranking

    uri, parent, runs = sweep
    client = MlflowClient(tracking_uri=uri)
    chosen = review.select(client, store.DEFAULT_EXPERIMENT, [parent])
    first, second = review.JudgementLog(client, chosen), review.JudgementLog(client, chosen)
    # apps on one machine take turns (a lock file per home run); this is one on another machine, which
    # does not see that lock file (a tracking server shared by two machines)
    second._lock = threading.Lock()
    real, calls = review.publish, []

    def publish(client, chosen, judgements):
        if not calls:  # the other app records one and publishes it while this one is about to publish
            calls.append(len(judgements))
            second.add(ranking.Judgement.new(runs[2], runs[3], "right", "ben"))
        return real(client, chosen, judgements)

    monkeypatch.setattr(review, "publish", publish)
    first.add(ranking.Judgement.new(runs[0], runs[1], "left", "ana"))
    judgements = review.read(client, parent)
    assert len(judgements) == calls[0] + 1
    _check_metrics(client, runs, judgements)
    _check_published(client, parent, judgements)


def test_two_reviewers_at_once_lose_and_double_nothing(sweep):
    from playwright.sync_api import sync_playwright

    uri, parent, runs = sweep
    client = MlflowClient(tracking_uri=uri)
    before = {j.id for j in review.read(client, parent)}
    first = App(uri)
    try:
        second = App(uri)  # two apps on one store at once
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS)
                a = _open(browser.new_context(), first.url, name="ana")
                b = _open(browser.new_context(), second.url, name="ben")
                keys = ["ArrowLeft", "ArrowRight", "=", "ArrowRight"]
                for k in range(8):
                    counts = _count(a), _count(b)
                    pairs = a.evaluate("document.body.dataset.pair"), b.evaluate("document.body.dataset.pair")
                    a.keyboard.press(keys[k % 4])
                    b.keyboard.press(keys[(k + 1) % 4])  # without waiting for page a's answer
                    for page, count, pair, app in ((a, counts[0], pairs[0], first), (b, counts[1], pairs[1], second)):
                        try:
                            page.wait_for_function(
                                f"([n, p]) => {ANSWERS_KEPT} > n && "
                                "document.body.dataset.pair !== p && "
                                "[...document.querySelectorAll('button[data-answer]')].every(b => !b.disabled)",
                                arg=[count, pair], timeout=60000)
                        except Exception:
                            pytest.fail(f"round {k}: {page.locator('#status').inner_text()!r}; app: "
                                        f"{''.join(app.output)[-4000:]}")

                judgements = review.read(client, parent)
                new = [j for j in judgements if j.id not in before]
                assert len(judgements) == len(before) + 16 and len({j.id for j in judgements}) == len(judgements)
                assert sorted(j.reviewer for j in new) == ["ana"] * 8 + ["ben"] * 8
                assert len(_files(client, parent)) == len(judgements)
                _check_metrics(client, runs, judgements)
                _check_published(client, parent, judgements)
                assert max(_count(a), _count(b)) == len(judgements)

                _ranking(a, first.url, client, runs)
                agreement = a.locator("#agreement")
                assert "Agreement between reviewers" in agreement.inner_text()
                # every two reviewers get a row, whether or not they judged a common pair
                rows = agreement.locator("table tbody tr")
                assert rows.count() == 1
                assert rows.first.locator("td").nth(0).inner_text() == "ana"
                assert rows.first.locator("td").nth(1).inner_text() == "ben"
                browser.close()
            assert second.stop() == 0
        finally:
            second.kill()
        assert first.stop() == 0
    finally:
        first.kill()
