"""nst-review's app (nst/compare/review_app.py) without a browser: the judgements it keeps, what it refuses,
what it publishes, two apps at once, the ranking page."""

import io
import json
import logging
import re
import socket
import threading
import uuid

from werkzeug.serving import make_server

from nst.compare import review, review_app
from nst.tracking import store, tags
from tests.helpers.reviews import damage, judge, published


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


def test_a_judgement_beside_a_damaged_file_is_recorded_and_published(review_world, review_client):
    """A damaged judgement file among the home run's: each judgement after it answers 201 and the published
    judgements.jsonl, count tag and human.* metrics have it."""
    client, chosen = review_client
    mlflow_client = review_world["client"]
    sent = [uuid.uuid4().hex for _ in range(3)]
    assert judge(client, chosen, "left", judgement_id=sent[0]).status_code == 201
    damage(mlflow_client, chosen.home, b'{"id": "0123", "left": ')  # cut short
    for k, judgement_id in enumerate(sent[1:], 1):
        answer = judge(client, chosen, "right", judgement_id=judgement_id, pair=tuple(chosen.ids[k:k + 2]))
        assert answer.status_code == 201, answer.get_json()
        assert answer.get_json()["count"] == k + 1
    assert published(mlflow_client, chosen.home) == sent
    assert mlflow_client.get_run(chosen.home).data.tags[tags.TAG_JUDGEMENTS] == "3"
    comparisons = sum(mlflow_client.get_run(run).data.metrics["human.comparisons"] for run in chosen.ids)
    assert comparisons == 2 * 3


def test_damaged_judgement_files_are_skipped_named_and_warned_about_once(review_world, review_client, caplog):
    """Cut short, nested 100,000 deep, not UTF-8: every page and API answers 200 on the one good judgement, the
    pages and /api/pair name the three files, and each is warned about once however many requests read it."""
    client, chosen = review_client
    mlflow_client = review_world["client"]
    assert judge(client, chosen, "left").status_code == 201
    damaged = sorted(damage(mlflow_client, chosen.home, content)
                     for content in (b'{"left": "', b"[" * 100_000, b"\xff\xfe\x00not text"))
    caplog.set_level(logging.WARNING, logger="nst.compare.review")
    for _ in range(2):
        answers = {path: client.get(path) for path in ("/", "/ranking", "/api/pair", "/api/ranking")}
        assert {path: answer.status_code for path, answer in answers.items()} == dict.fromkeys(answers, 200)
    for path in ("/", "/ranking"):
        page = answers[path].get_data(as_text=True)
        assert f"3 damaged judgement files skipped: {', '.join(damaged)}" in page, path
    assert "1 judgements; the top three" in answers["/ranking"].get_data(as_text=True)
    assert answers["/api/pair"].get_json()["damaged"] == damaged and answers["/api/pair"].get_json()["count"] == 1
    assert sum(row["comparisons"] for row in answers["/api/ranking"].get_json()) == 2
    for name in damaged:
        warnings = [r for r in caplog.records if name in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING, name
        assert "damaged and skipped" in warnings[0].getMessage()
    assert review.read(mlflow_client, chosen.home) == review.kept(mlflow_client, chosen.home).judgements


class _Body(io.RawIOBase):
    """A request body of ``size`` spaces, made as it is read, counting the bytes read (seekable: the test
    client measures a stream's length by seeking to its end and back)."""

    def __init__(self, size: int):
        self.size, self.position, self.read_bytes = size, 0, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.position = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        buffer[:count] = b" " * count
        self.position += count
        self.read_bytes += count
        return count


def test_an_oversized_body_is_refused_413_before_it_is_read(review_world, review_client):
    client, chosen = review_client
    before = _snapshot(review_world, chosen)
    body = _Body(60 * 2**20)
    answer = client.post("/api/judgements", input_stream=body, content_type="application/json")
    assert answer.status_code == 413 and answer.is_json and "Too Large" in answer.get_json()["error"]
    assert body.read_bytes == 0
    assert _snapshot(review_world, chosen) == before


def test_the_server_answers_413_to_an_oversized_body_before_it_is_sent(review_world):
    """Over a socket to the real server: the headers of a 60 MB judgement and its first KiB get the 413 at once."""
    chosen = review.select(review_world["client"], "nst")
    app = review_app.create_app(review_world["client"], chosen, review_world["uri"], review_world["folder"])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=10) as connection:
            connection.sendall(b"POST /api/judgements HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n" % (60 * 2**20) + b" " * 1024)
            answer = b""
            while not answer.endswith(b"}\n") and (chunk := connection.recv(65536)):
                answer += chunk
        head, body = answer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 413 ") and b"application/json" in head
        assert "Too Large" in json.loads(body)["error"]
    finally:
        server.shutdown()
        server.server_close()


def test_a_deeply_nested_body_is_a_400_not_a_server_error(review_world, review_client):
    """Under the size bound, nested 30,000 deep (Python's parser recursed until RecursionError, a 500 page);
    a string left open is not JSON; brackets inside a reviewer's name are text."""
    client, chosen = review_client
    before = _snapshot(review_world, chosen)
    for raw in ("[" * 30_000 + "]" * 30_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
        assert len(raw) <= review_app.BODY_MAX
        answer = client.post("/api/judgements", data=raw, content_type="application/json")
        assert answer.status_code == 400 and answer.is_json, answer.get_data(as_text=True)[:200]
        assert "nested thousands of levels deep" in answer.get_json()["error"]
    answer = client.post("/api/judgements", data='["' + '\\"' * 30_000, content_type="application/json")
    assert answer.status_code == 400 and "exactly the fields" in answer.get_json()["error"]
    assert _snapshot(review_world, chosen) == before
    assert judge(client, chosen, reviewer="[[[[[[[[{{{{{{{{ ana").status_code == 201


def test_api_errors_answer_one_line_of_json_and_a_failure_logs_its_traceback(review_world, caplog):
    chosen = review.select(review_world["client"], "nst")
    app = review_app.create_app(review_world["client"], chosen, review_world["uri"], review_world["folder"])
    app.add_url_rule("/api/broken", "broken", lambda: {}["missing"])  # an API route with a bug
    app.add_url_rule("/broken", "broken_page", lambda: {}["missing"])  # a page's: Flask's own 500 page
    client = app.test_client()
    caplog.set_level(logging.ERROR, logger=app.logger.name)
    answers = {
        400: client.post("/api/judgements", data="[]", content_type="application/json"),
        404: client.get("/api/nothing"),
        405: client.get("/api/judgements"),
        413: client.post("/api/judgements", data=b" " * (review_app.BODY_MAX + 1), content_type="application/json"),
        500: client.get("/api/broken"),
    }
    for code, answer in answers.items():
        assert answer.status_code == code and answer.is_json, (code, answer.get_data(as_text=True)[:200])
        error = answer.get_json()["error"]
        assert error and "\n" not in error and "<" not in error, (code, error)
    assert "KeyError: 'missing'" in answers[500].get_json()["error"]
    page = client.get("/broken")
    assert page.status_code == 500 and page.mimetype == "text/html"
    logged = [r for r in caplog.records if r.exc_info]
    assert [(r.exc_info[0], r.getMessage()) for r in logged] == [(KeyError, "GET /api/broken failed"),
                                                                  (KeyError, "GET /broken failed")]


def test_a_judgement_sent_as_text_is_told_its_content_type(review_client):
    client, chosen = review_client
    body = json.dumps({"id": uuid.uuid4().hex, "left": chosen.ids[0], "right": chosen.ids[1], "answer": "left",
                       "reviewer": "ana"})
    answer = client.post("/api/judgements", data=body, content_type="text/plain")
    assert answer.status_code == 400 and answer.get_json()["error"] == (
        "send a judgement as JSON (Content-Type: application/json)")
