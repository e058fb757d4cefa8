"""nst-review's app (nst/compare/review_app.py) without a browser: the judgements it keeps, what it refuses,
what it publishes, two apps at once, the ranking page."""

import json
import re
import threading
import uuid

from nst.compare import review, review_app
from nst.tracking import store, tags
from tests.helpers.reviews import judge


def _snapshot(review_world, chosen) -> dict:
    """Everything a judgement changes: the judgement files, the runs' metric histories, the parent's files."""
    client = review_world["client"]
    histories = {run: [(m.step, m.value) for m in client.get_metric_history(run, "human.score")]
                 for run in chosen.ids}
    parent = [item.path for item in client.list_artifacts(chosen.home, review.HUMAN)]
    return {"ids": review.recorded_ids(client, chosen.home), "histories": histories, "parent": parent,
            "count": client.get_run(chosen.home).data.tags.get(tags.TAG_JUDGEMENTS)}


def test_a_judgement_is_one_file_and_publishes_every_runs_human_metrics(review_world, review_client):
    client, chosen = review_client
    pair = client.get("/api/pair").get_json()
    assert re.fullmatch(r"[0-9a-f]{32}", pair["id"]) and pair["left"] != pair["right"]
    assert {pair["left"], pair["right"]} <= set(chosen.ids)
    answer = judge(client, chosen, "right", judgement_id=pair["id"], pair=(pair["left"], pair["right"]))
    assert answer.status_code == 201, answer.get_json()
    body = answer.get_json()
    assert body["count"] == 1 and body["left"] == chosen.candidate(pair["left"]).label  # revealed after
    mlflow_client = review_world["client"]
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


def test_a_skip_is_kept_and_shown_but_not_counted_as_a_judgement(review_world, review_client):
    client, chosen = review_client
    assert judge(client, chosen, "skip").status_code == 201
    answer = judge(client, chosen, "tie", pair=tuple(chosen.ids[1:3]))
    assert answer.status_code == 201 and (answer.get_json()["count"], answer.get_json()["skipped"]) == (1, 1)
    assert len(review.read(review_world["client"], chosen.home)) == 2  # both kept in the store
    pair = client.get("/api/pair").get_json()
    assert (pair["count"], pair["skipped"]) == (1, 1)
    page = client.get("/").get_data(as_text=True)
    assert '<span id="count">1 judgements · 1 skipped</span>' in page and 'data-skipped="1"' in page
    assert "1 judgements; the top three" in client.get("/ranking").get_data(as_text=True)


def test_bad_requests_are_refused_and_change_nothing(review_world, review_client):
    client, chosen = review_client
    assert judge(client, chosen, "left").status_code == 201
    before = _snapshot(review_world, chosen)
    a, b = chosen.ids[:2]
    kept = review.read(review_world["client"], chosen.home)[0]
    bad = {
        "unknown run": ({"left": uuid.uuid4().hex}, "no run"),
        "another experiment's run": ({"right": review_world["other"]}, "belongs to experiment"),
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
    replay = judge(client, chosen, "right", judgement_id=kept.id, pair=(a, b))
    assert replay.status_code == 409 and "already recorded" in replay.get_json()["error"]
    assert replay.get_json()["kept"] is True  # the page moves on: that judgement is in the store
    assert client.get(f"/image/{review_world['other']}/result").status_code == 404
    assert client.get("/api/judgements").status_code == 405
    assert _snapshot(review_world, chosen) == before
    assert review.read(review_world["client"], chosen.home) == [kept]


def test_two_apps_at_once_keep_every_judgement_once(review_world):
    """Two app instances on one store (two people, two processes' worth of state), 12 judgements each sent
    from 4 threads at once, and every one of them sent twice: 24 files, none lost, none doubled."""
    chosen = review.select(review_world["client"], "nst")
    apps = [review_app.create_app(store.StoreClient(review_world["uri"]), chosen, review_world["uri"],
                                  review_world["folder"]).test_client()
            for _ in range(2)]
    sent = {name: [uuid.uuid4().hex for _ in range(12)] for name in ("ana", "ben")}
    codes: list[int] = []

    def send(app_client, reviewer, ids):
        for k, judgement_id in enumerate(ids):
            pair = (chosen.ids[k % 4], chosen.ids[(k + 1) % 4])
            codes.append(judge(app_client, chosen, ("left", "right", "tie")[k % 3], reviewer, judgement_id,
                                pair).status_code)

    threads = [threading.Thread(target=send, args=(apps[k % 2], name, sent[name][half::2]))
               for k, name in enumerate(sent) for half in (0, 1)]
    threads += [threading.Thread(target=send, args=(apps[1 - k % 2], name, sent[name]))  # the replays
                for k, name in enumerate(sent)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = review.read(review_world["client"], chosen.home)
    assert sorted(j.id for j in kept) == sorted(sent["ana"] + sent["ben"])
    assert sorted(codes).count(201) == 24 and sorted(codes).count(409) == 24
    assert {j.reviewer for j in kept} == {"ana", "ben"}
    comparisons = sum(review_world["client"].get_run(run).data.metrics["human.comparisons"] for run in chosen.ids)
    assert comparisons == 2 * 24  # the latest published fit saw all 24 (step = judgement count wins)


def test_the_ranking_page_lists_the_runs_in_score_order(review_world, review_client):
    client, chosen = review_client
    best, good, poor, worst = chosen.ids
    for winner, loser in [(best, good), (best, poor), (good, poor), (poor, worst), (good, worst), (best, worst)] * 2:
        assert judge(client, chosen, "left", pair=(winner, loser)).status_code == 201
    assert judge(client, chosen, "right", reviewer="ben", pair=(good, best)).status_code == 201
    page = client.get("/ranking").get_data(as_text=True)
    assert re.findall(r'<tr data-run="([0-9a-f]{32})">', page) == [best, good, poor, worst]
    scores = [float(s) for s in re.findall(r'<td class="num score">([^<]+)</td>', page)]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0 > scores[-1]
    assert "since judgement" in page and "Agreement between reviewers" in page and "<td>ana</td>" in page
    for name in review.MEASURE_NAMES:
        assert name in page
    data = client.get("/api/ranking").get_json()
    assert [row["run_id"] for row in data] == [best, good, poor, worst]
    metrics = {run: review_world["client"].get_run(run).data.metrics for run in chosen.ids}
    assert [metrics[run]["human.rank"] for run in (best, good, poor, worst)] == [1, 2, 3, 4]


def test_the_ranking_pages_mlflow_link_uses_the_uis_port(review_world, monkeypatch):
    """The port `make ui UI_PORT=5077` was given is remembered beside the store: an app started later
    without it links there too."""
    chosen = review.select(review_world["client"], "nst")
    for env in ({"NST_UI_PORT": "5077"}, {}):
        monkeypatch.delenv("NST_UI_PORT", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        app = review_app.create_app(review_world["client"], chosen, review_world["uri"], review_world["folder"], seed=0)
        page = app.test_client().get("/ranking").get_data(as_text=True)
        links = re.findall(r'href="(http[^"]+)"', page)
        assert links and all(link.startswith("http://127.0.0.1:5077/#/experiments/") for link in links), links
