"""nst-review's web app: a local page where people judge results two at a time, blind.

Flask, because MLflow's own server is Flask and brings it: no new web stack. The server
listens on 127.0.0.1 unless ``--host`` says otherwise (``mlflow ui``'s options and defaults),
serves one thread per request, and keeps nothing that matters in memory: every judgement is
written to the store before the answer goes back (``nst.compare.review``), so two browsers, or two
apps, at once lose and double nothing, and a restarted app goes on where the store stands.

Routes: ``/`` the comparison page, ``/ranking`` the ranking page, ``/api/pair`` (GET: the next
two runs, sides at random, and a fresh judgement id), ``/api/judgements`` (POST: one judgement;
400 for a malformed one, 409 for one already recorded; the store is not touched by either),
``/api/ranking`` (GET), ``/image/<run>/<result|content|style|thumb>``.

A damaged judgement file (``nst.compare.review.Kept``) is skipped and named: under the pages' headers and
in ``/api/pair``'s ``damaged``. A request body over ``BODY_MAX`` bytes is refused (413) before it is read,
one nested too deep to parse is a 400 (``review.parse``). Every error answers one line of
JSON, ``{"error": ...}``: the store refusing (locked beyond NST_STORE_WAIT, disk full) 503; an unexpected
exception 500 on ``/api/`` routes (Flask's page elsewhere), its traceback in the server's log.
"""

from __future__ import annotations

import html
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nst.compare import ranking, review, review_page
from nst.errors import NSTError
from nst.tracking import store

KINDS = ("result", "content", "style", "thumb")
BODY_MAX = 64 * 1024  # bytes: a judgement is a few hundred


def create_app(client, chosen: review.Review, uri: str, folder: Path, seed: int | None = None):
    """The Flask app over ``chosen``'s runs; images are cached in ``folder``."""
    from flask import Flask, Response, abort, jsonify, request
    from werkzeug.exceptions import HTTPException, InternalServerError

    app = Flask("nst.compare.review")
    app.config["MAX_CONTENT_LENGTH"] = BODY_MAX
    judgements = review.JudgementLog(client, chosen)
    rng, rng_lock = np.random.default_rng(seed), threading.Lock()
    mlflow_url = store.run_address(uri, chosen.experiment_id, chosen.home)

    @app.get("/")
    def compare_page():
        known = judgements.kept()
        page = review_page.compare(chosen.title, len(chosen.runs), *review.tally(known.judgements))
        return with_damaged(page, known.damaged, chosen.home)

    @app.get("/api/pair")
    def pair():
        known = judgements.kept()
        with rng_lock:
            left, right = ranking.next_pair(chosen.entries, chosen.as_entries(known.judgements), rng)
        count, skipped = review.tally(known.judgements)
        return jsonify(id=uuid.uuid4().hex, left=left, right=right, count=count, skipped=skipped,
                       damaged=list(known.damaged))

    @app.post("/api/judgements")
    def judge():
        body = request.get_data(cache=False)  # 413 past BODY_MAX, before a byte is read
        try:
            if not request.is_json:
                raise review.BadJudgement("send a judgement as JSON (Content-Type: application/json)")
            judgement = review.check(chosen, client, review.parse(body))
            count, skipped = review.tally(judgements.add(judgement))
        except review.Replayed as exc:  # kept already (e.g. sent again after a failed publication)
            return jsonify(error=str(exc), kept=True), 409
        except review.BadJudgement as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(id=judgement.id, count=count, skipped=skipped, left=chosen.candidate(judgement.left).label,
                       right=chosen.candidate(judgement.right).label), 201

    @app.get("/api/ranking")
    def ranking_data():
        return jsonify(review.to_json(review.ranked(chosen, judgements.all())))

    @app.get("/ranking")
    def ranking_page():
        found = judgements.kept()
        known = found.judgements
        table = review.ranked(chosen, known)
        page = review_page.ranking(
            chosen.title, review.to_json(table), {c.run_id: c.settings for c in chosen.runs},
            review.to_json(review.correlations(chosen, table)), review.to_json(ranking.agreement_table(known)),
            review.tally(known)[0], review.stable_since(chosen, known), review.MEASURE_NAMES, mlflow_url)
        return with_damaged(page, found.damaged, chosen.home)

    @app.get("/image/<run_id>/<kind>")
    def image(run_id: str, kind: str):
        if run_id not in chosen.ids or kind not in KINDS:
            abort(404)
        data = review.image_bytes(client, run_id, "result" if kind == "thumb" else kind, folder)
        return Response(review.thumbnail(data) if kind == "thumb" else data, mimetype="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.errorhandler(HTTPException)
    def refused(error):  # 400, 404, 405, 413, ...
        return jsonify(error=str(error)), error.code

    @app.errorhandler(NSTError)
    def store_refused(error):  # the store refused (locked beyond NST_STORE_WAIT, disk full) or lacks an image
        app.logger.warning("%s %s: %s", request.method, request.path, error)
        return jsonify(error=str(error)), 503

    @app.errorhandler(Exception)
    def failed(error):
        app.logger.error("%s %s failed", request.method, request.path, exc_info=error)
        if not request.path.startswith("/api/"):
            return InternalServerError(original_exception=error)
        return jsonify(error=f"{request.path} failed: {one_line(error)} (the server's log has the traceback)"), 500

    return app


def with_damaged(page: str, damaged: Sequence[str], home: str) -> str:
    """``page`` with a line under its header naming the damaged judgement files skipped (as it is if none)."""
    if not damaged:
        return page
    files = "file" if len(damaged) == 1 else "files"
    line = (f'<p id="damaged" role="alert">{len(damaged)} damaged judgement {files} skipped: '
            f'{html.escape(", ".join(damaged))} (artifacts of run {html.escape(home)}; mend or remove them)</p>')
    return page.replace("</header>", "</header>\n" + line, 1)


def one_line(error: BaseException) -> str:
    """``error``'s type and the first line of its message."""
    message = str(error).strip().splitlines()
    return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
