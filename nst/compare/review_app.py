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
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import numpy as np

from nst.compare import ranking, review, review_page
from nst.errors import NSTError
from nst.tracking import store

KINDS = ("result", "content", "style", "thumb")


def create_app(client, chosen: review.Review, uri: str, folder: Path, seed: int | None = None):
    """The Flask app over ``chosen``'s runs; images are cached in ``folder``."""
    from flask import Flask, Response, abort, jsonify, request

    app = Flask("nst.compare.review")
    judgements = review.JudgementLog(client, chosen)
    rng, rng_lock = np.random.default_rng(seed), threading.Lock()
    mlflow_url = store.run_address(uri, chosen.experiment_id, chosen.home)

    @app.get("/")
    def compare_page():
        return review_page.compare(chosen.title, len(chosen.runs), *review.tally(judgements.all()))

    @app.get("/api/pair")
    def pair():
        known = judgements.all()
        with rng_lock:
            left, right = ranking.next_pair(chosen.entries, chosen.as_entries(known), rng)
        count, skipped = review.tally(known)
        return jsonify(id=uuid.uuid4().hex, left=left, right=right, count=count, skipped=skipped)

    @app.post("/api/judgements")
    def judge():
        try:
            judgement = review.check(chosen, client, request.get_json(silent=True))
            count, skipped = review.tally(judgements.add(judgement))
        except review.Replayed as exc:  # kept already (e.g. sent again after a failed publication)
            return jsonify(error=str(exc), kept=True), 409
        except review.BadJudgement as exc:
            return jsonify(error=str(exc)), 400
        except NSTError as exc:  # the store refused (locked beyond NST_STORE_WAIT, disk full): one line
            return jsonify(error=str(exc)), 503
        return jsonify(id=judgement.id, count=count, skipped=skipped, left=chosen.candidate(judgement.left).label,
                       right=chosen.candidate(judgement.right).label), 201

    @app.get("/api/ranking")
    def ranking_data():
        return jsonify(review.to_json(review.ranked(chosen, judgements.all())))

    @app.get("/ranking")
    def ranking_page():
        known = judgements.all()
        table = review.ranked(chosen, known)
        return review_page.ranking(
            chosen.title, review.to_json(table), {c.run_id: c.settings for c in chosen.runs},
            review.to_json(review.correlations(chosen, table)), review.to_json(ranking.agreement_table(known)),
            review.tally(known)[0], review.stable_since(chosen, known), review.MEASURE_NAMES, mlflow_url)

    @app.get("/image/<run_id>/<kind>")
    def image(run_id: str, kind: str):
        if run_id not in chosen.ids or kind not in KINDS:
            abort(404)
        data = review.image_bytes(client, run_id, "result" if kind == "thumb" else kind, folder)
        return Response(review.thumbnail(data) if kind == "thumb" else data, mimetype="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    @app.errorhandler(404)
    @app.errorhandler(405)
    def not_here(error):
        return jsonify(error=str(error)), error.code

    return app
