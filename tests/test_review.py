"""nst-review without a browser: the runs it picks, the judgements it keeps, what it refuses, what it
publishes, and that it listens on 127.0.0.1 only. A synthetic store (runs with small images, as nst
logs them) keeps these fast; tests/test_review_browser.py drives the page on a real sweep."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst.cli import nst_report, nst_review
from nst.compare import ranking, review, review_app, sweep_report
from nst.images import measures
from nst.tracking import store, tags

BETAS = ("0.01", "1", "100", "10000")


def _picture(seed: int, size=(24, 18)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _sweep(client, experiment_id: str, betas=BETAS, measured: bool = True, seeds=None) -> tuple[str, list[str]]:
    """A finished sweep as nst records one: a parent and a FINISHED child per β with its images."""
    sweep_id = uuid.uuid4().hex[:8]
    parent = client.create_run(experiment_id, run_name=f"sweep {sweep_id}", tags={
        tags.TAG_ROLE: "sweep", tags.TAG_SWEEP: sweep_id,
        tags.TAG_SWEPT: json.dumps({"loss.style_weight": True})}).info.run_id
    children, seeds = [], seeds or range(len(betas))
    for job, (beta, seed) in enumerate(zip(betas, seeds, strict=True)):
        run = client.create_run(experiment_id, tags={
            tags.TAG_ROLE: "run", tags.PARENT_TAG: parent, tags.TAG_JOB: str(job),
            tags.TAG_OVERRIDES: json.dumps([f"loss.style_weight={beta}"])}).info.run_id
        for key, value in {"content": "tubingen", "style": "starry_night", "loss.style_weight": beta,
                           "loss.content_weight": "1", "image.size": "24"}.items():
            client.log_param(run, key, value)
        client.log_image(run, _picture(seed), artifact_file="result/result.png")
        client.log_image(run, _picture(100), artifact_file="inputs/content.png")
        client.log_image(run, _picture(200), artifact_file="inputs/style.png")
        if measured:
            for name, value in measures.measure(_picture(seed), _picture(100), _picture(200)).items():
                client.log_metric(run, name, value)
        client.set_terminated(run, "FINISHED")
        children.append(run)
    client.set_terminated(parent, "FINISHED")
    return parent, children


@pytest.fixture
def world(tmp_path):
    """A store with experiment nst holding one 4-run sweep, and experiment other holding one run."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = store.open_store(uri, create=True, artifact_root=(tmp_path / "mlartifacts").as_uri())
    experiment = client.create_experiment("nst")
    parent, children = _sweep(client, experiment)
    other = client.create_run(client.create_experiment("other")).info.run_id
    return {"uri": uri, "client": client, "experiment": experiment, "parent": parent, "children": children,
            "other": other, "folder": tmp_path / "images"}


@pytest.fixture
def app(world):
    chosen = review.select(world["client"], "nst")
    flask_app = review_app.create_app(world["client"], chosen, world["uri"], world["folder"], seed=0)
    return flask_app.test_client(), chosen


def _judge(client, chosen, answer="left", reviewer="ana", judgement_id=None, pair=None):
    left, right = pair or chosen.ids[:2]
    return client.post("/api/judgements", json={"id": judgement_id or uuid.uuid4().hex, "left": left,
                                                "right": right, "answer": answer, "reviewer": reviewer})


def _snapshot(world, chosen) -> dict:
    """Everything a judgement changes: the judgement files, the runs' metric histories, the parent's files."""
    client = world["client"]
    histories = {run: [(m.step, m.value) for m in client.get_metric_history(run, "human.score")]
                 for run in chosen.ids}
    parent = [item.path for item in client.list_artifacts(chosen.home, review.HUMAN)]
    return {"ids": review.recorded_ids(client, chosen.home), "histories": histories, "parent": parent,
            "count": client.get_run(chosen.home).data.tags.get(tags.TAG_JUDGEMENTS)}


def test_the_latest_sweep_is_reviewed_on_its_parent(world):
    chosen = review.select(world["client"], "nst")
    assert chosen.home == world["parent"]
    assert set(chosen.ids) == set(world["children"])
    assert sorted(c.label for c in chosen.runs) == sorted(["β=0.01 · α/β=100", "β=1 · α/β=1",
                                                           "β=100 · α/β=0.01", "β=1e4 · α/β=1e-4"])
    assert all(c.settings["content"] == "tubingen" and "loss.style_weight" not in c.settings for c in chosen.runs)


def test_a_judgement_is_one_file_and_publishes_every_runs_human_metrics(world, app):
    client, chosen = app
    pair = client.get("/api/pair").get_json()
    assert re.fullmatch(r"[0-9a-f]{32}", pair["id"]) and pair["left"] != pair["right"]
    assert {pair["left"], pair["right"]} <= set(chosen.ids)
    answer = _judge(client, chosen, "right", judgement_id=pair["id"], pair=(pair["left"], pair["right"]))
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["count"] == 1 and body["left"] == chosen.candidate(pair["left"]).label  # revealed after
    mlflow_client = world["client"]
    assert review.recorded_ids(mlflow_client, chosen.home) == {pair["id"]}
    (kept,) = review.read(mlflow_client, chosen.home)
    assert (kept.left, kept.right, kept.answer, kept.reviewer) == (pair["left"], pair["right"], "right", "ana")
    for run in chosen.ids:
        metrics = mlflow_client.get_run(run).data.metrics
        assert {"human.score", "human.score_low", "human.score_high", "human.rank", "human.wins",
                "human.losses", "human.ties", "human.comparisons"} <= set(metrics)
        assert metrics["human.comparisons"] == (1 if run in (pair["left"], pair["right"]) else 0)
    assert mlflow_client.get_run(pair["right"]).data.metrics["human.rank"] == 1
    assert mlflow_client.get_run(pair["right"]).data.metrics["human.wins"] == 1
    files = {item.path for item in mlflow_client.list_artifacts(chosen.home, review.HUMAN)}
    assert files == {"human/ranking.csv", "human/ranking.md", "human/judgements.jsonl"}
    assert mlflow_client.get_run(chosen.home).data.tags[tags.TAG_JUDGEMENTS] == "1"


def test_bad_requests_are_refused_and_change_nothing(world, app):
    client, chosen = app
    assert _judge(client, chosen, "left").status_code == 201
    before = _snapshot(world, chosen)
    a, b = chosen.ids[:2]
    kept = review.read(world["client"], chosen.home)[0]
    bad = {
        "unknown run": ({"left": uuid.uuid4().hex}, "no run"),
        "another experiment's run": ({"right": world["other"]}, "belongs to experiment"),
        "malformed answer": ({"answer": "up"}, "answer must be one of"),
        "a run against itself": ({"right": a}, "two different runs"),
        "no reviewer": ({"reviewer": "  "}, "reviewer"),
        "bad id": ({"id": "../../etc"}, "id must be"),
        "a number for a run": ({"left": 3}, "string"),
    }
    for what, (change, message) in bad.items():
        payload = {"id": uuid.uuid4().hex, "left": a, "right": b, "answer": "left", "reviewer": "ana", **change}
        answer = client.post("/api/judgements", json=payload)
        assert answer.status_code == 400, what
        assert message in answer.get_json()["error"], (what, answer.get_json())
    for raw in ("not json", json.dumps([1, 2]), json.dumps({"id": uuid.uuid4().hex})):
        answer = client.post("/api/judgements", data=raw, content_type="application/json")
        assert answer.status_code == 400 and "exactly the fields" in answer.get_json()["error"]
    replay = _judge(client, chosen, "right", judgement_id=kept.id, pair=(a, b))
    assert replay.status_code == 409 and "already recorded" in replay.get_json()["error"]
    assert replay.get_json()["kept"] is True  # the page moves on: that judgement is in the store
    assert client.get(f"/image/{world['other']}/result").status_code == 404
    assert client.get("/api/judgements").status_code == 405
    assert _snapshot(world, chosen) == before
    assert review.read(world["client"], chosen.home) == [kept]


def test_two_apps_at_once_keep_every_judgement_once(world):
    """Two app instances on one store (two people, two processes' worth of state), 12 judgements each sent
    from 4 threads at once, and every one of them sent twice: 24 files, none lost, none doubled."""
    chosen = review.select(world["client"], "nst")
    apps = [review_app.create_app(store.StoreClient(world["uri"]), chosen, world["uri"], world["folder"]).test_client()
            for _ in range(2)]
    sent = {name: [uuid.uuid4().hex for _ in range(12)] for name in ("ana", "ben")}
    codes: list[int] = []

    def send(app_client, reviewer, ids):
        for k, judgement_id in enumerate(ids):
            pair = (chosen.ids[k % 4], chosen.ids[(k + 1) % 4])
            codes.append(_judge(app_client, chosen, ("left", "right", "tie")[k % 3], reviewer, judgement_id,
                                pair).status_code)

    threads = [threading.Thread(target=send, args=(apps[k % 2], name, sent[name][half::2]))
               for k, name in enumerate(sent) for half in (0, 1)]
    threads += [threading.Thread(target=send, args=(apps[1 - k % 2], name, sent[name]))  # the replays
                for k, name in enumerate(sent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = review.read(world["client"], chosen.home)
    assert sorted(j.id for j in kept) == sorted(sent["ana"] + sent["ben"])
    assert sorted(codes).count(201) == 24 and sorted(codes).count(409) == 24
    assert {j.reviewer for j in kept} == {"ana", "ben"}
    comparisons = sum(world["client"].get_run(run).data.metrics["human.comparisons"] for run in chosen.ids)
    assert comparisons == 2 * 24  # the latest published fit saw all 24 (step = judgement count wins)


def test_the_ranking_page_lists_the_runs_in_score_order(world, app):
    client, chosen = app
    best, good, poor, worst = chosen.ids
    for winner, loser in [(best, good), (best, poor), (good, poor), (poor, worst), (good, worst), (best, worst)] * 2:
        assert _judge(client, chosen, "left", pair=(winner, loser)).status_code == 201
    assert _judge(client, chosen, "right", reviewer="ben", pair=(good, best)).status_code == 201
    page = client.get("/ranking").get_data(as_text=True)
    assert re.findall(r'<tr data-run="([0-9a-f]{32})">', page) == [best, good, poor, worst]
    scores = [float(s) for s in re.findall(r'<td class="num score">([^<]+)</td>', page)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0 > scores[-1]
    assert "since judgement" in page and "Agreement between reviewers" in page and "<td>ana</td>" in page
    for name in review.MEASURE_NAMES:
        assert name in page
    data = client.get("/api/ranking").get_json()
    assert [row["run_id"] for row in data] == [best, good, poor, worst]
    metrics = {run: world["client"].get_run(run).data.metrics for run in chosen.ids}
    assert [metrics[run]["human.rank"] for run in (best, good, poor, worst)] == [1, 2, 3, 4]


def test_stable_since_counts_the_judgements_after_which_the_top_three_stayed(world):
    chosen = review.select(world["client"], "nst")
    a, b, c, d = chosen.ids

    def j(left, right):
        return ranking.Judgement.new(left, right, "left", "ana")

    settled = [j(a, b), j(b, c), j(c, d), j(a, c), j(b, d), j(a, d)]
    assert review.stable_since(chosen, settled) <= len(settled)
    upset = settled + [j(d, a), j(d, b), j(d, c), j(d, a), j(d, b), j(d, c)]
    since = review.stable_since(chosen, upset)
    assert len(settled) < since <= len(upset)  # d climbing changed the top three after the sixth
    assert ranking.fit(upset, runs=chosen.ids).order[0] == d
    assert review.stable_since(chosen, []) is None


def test_runs_logged_before_the_measures_get_them_when_reviewed(world, tmp_path):
    client = world["client"]
    parent, children = _sweep(client, world["experiment"], betas=("1", "10"), measured=False)
    chosen = review.prepare(client, review.select(client, "nst", [parent]), tmp_path)
    for run in children:
        logged = client.get_run(run).data.metrics
        assert set(review.MEASURE_NAMES) <= set(logged)
        assert logged == pytest.approx({**logged, **chosen.candidate(run).metrics})
    assert client.get_run(children[0]).data.metrics["auto.ssim_content"] == pytest.approx(
        measures.ssim_to_content(_picture(0), _picture(100)))


def test_two_identical_results_are_never_paired(world, tmp_path):
    """The ratio sweep's β=0.01 and 0.1 are both the photo: a reviewer was shown them 5 times in 19."""
    client = world["client"]
    parent, (photo, same, styled) = _sweep(client, world["experiment"], betas=("0.01", "0.1", "1e4"), seeds=(7, 7, 8))
    chosen = review.prepare(client, review.select(client, "nst", [parent]), tmp_path)
    assert chosen.identical == [(photo, same)]
    app = review_app.create_app(client, chosen, world["uri"], tmp_path, seed=1).test_client()
    shown = []
    for _ in range(8):
        pair = app.get("/api/pair").get_json()
        shown.append({pair["left"], pair["right"]})
        assert _judge(app, chosen, "tie", judgement_id=pair["id"], pair=(pair["left"], pair["right"])).status_code == 201
    assert {photo, same} not in shown and {photo, styled} in shown and {same, styled} in shown


def test_runs_picked_by_a_filter_keep_their_judgements_on_one_review_run(world):
    client = world["client"]
    filter_string = "params.`loss.style_weight` != '0.01'"
    first = review.select(client, "nst", filter_string=filter_string)
    assert len(first.runs) == 3 and first.home not in world["children"] + [world["parent"]]
    home = client.get_run(first.home)
    assert home.data.tags[tags.TAG_ROLE] == review.ROLE and home.info.status == "FINISHED"
    assert review.select(client, "nst", filter_string=filter_string).home == first.home  # found again
    both = review.select(client, "nst", sweeps=[world["parent"]], filter_string=filter_string)
    assert len(both.runs) == 4 and both.home != first.home
    with pytest.raises(review.TrackingError, match="at least two FINISHED runs"):
        review.select(client, "nst", filter_string="params.content = 'nowhere'")


def test_nst_report_human_prints_the_ranking_and_marks_the_report(world, app, capsys):
    client, chosen = app
    assert nst_report.main(["--uri", world["uri"], "--human"]) == 2  # nothing judged yet
    assert "judge the runs with nst-review first" in capsys.readouterr().err
    best, *rest = chosen.ids
    for other in rest * 2:
        assert _judge(client, chosen, "left", pair=(best, other)).status_code == 201
    assert nst_report.main(["--uri", world["uri"], "--human", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].startswith("run_id,rank,label,score") and lines[1].startswith(f"{best},1,")
    assert len(lines) == 5 and "sweep/report.html" in err
    page = Path(world["client"].download_artifacts(world["parent"], "sweep/report.html", str(world["folder"])))
    text = page.read_text(encoding="utf-8")
    assert f"{chosen.candidate(best).label} · human #1" in text and "human_rank" in text
    assert nst_report.main(["--uri", world["uri"], "--human"]) == 0
    assert "top three have not changed since judgement" in capsys.readouterr().out


def _listening(port: int) -> set[str]:
    """The local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                words = [raw[k:k + 4][::-1] for k in range(0, len(raw), 4)]  # little-endian words
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, b"".join(words)))
    return found


def _outside_address() -> str | None:
    """This machine's address on its network, if it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.slow  # a process of its own: MLflow's import alone is seconds
def test_the_server_listens_on_127_0_0_1_only(world):
    server = subprocess.Popen([sys.executable, "-m", "nst.cli.nst_review", "--tracking-uri", world["uri"], "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline, line = time.monotonic() + 120, ""
        while "open http://" not in line and time.monotonic() < deadline:
            line = server.stdout.readline()
            assert line or server.poll() is None, "nst-review ended before it listened"
        host, port = re.search(r"open http://([\d.]+):(\d+)/", line).groups()
        assert host == "127.0.0.1"
        assert _listening(int(port)) == {"127.0.0.1"}
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass
        outside = _outside_address()
        if outside is not None:  # reached from the network's side: refused
            with pytest.raises(OSError):
                socket.create_connection((outside, int(port)), timeout=5).close()
        server.terminate()
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()


def test_no_sweep_and_a_busy_port_are_one_line_each(world, tmp_path, capsys):
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    store.open_store(empty, create=True)
    assert nst_review.main(["--tracking-uri", empty]) == 2
    assert capsys.readouterr().err.strip() == "nst-review: error: no sweep in experiment 'nst'"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert nst_review.main(["--tracking-uri", world["uri"], "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"nst-review: error: cannot listen on 127.0.0.1:{port}") and "\n" not in err


def test_an_artifact_is_downloaded_once_per_folder(world, tmp_path, monkeypatch):
    """The report's images and nst-review's come from one cache (it missed every nested artifact)."""
    client, run = world["client"], world["children"][0]
    downloads = []
    real = client.download_artifacts

    def counting(*args, **kwargs):
        downloads.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "download_artifacts", counting, raising=False)
    first = sweep_report.artifact_bytes(client, run, "result/result.png", tmp_path)
    assert sweep_report.artifact_bytes(client, run, "result/result.png", tmp_path) == first
    assert review.image_bytes(client, run, "content", tmp_path) == review.image_bytes(client, run, "content", tmp_path)
    assert downloads == ["result/result.png", "inputs/content.png"]
    assert sweep_report.artifact_bytes(client, run, "result/missing.png", tmp_path) is None
