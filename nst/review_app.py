"""The ``nst-review`` command: a local web page where people judge results two at a time, blind.

    nst-review                                # the latest sweep of experiment "nst", local store
    nst-review --sweep <parent run id> --sweep latest
    nst-review --filter "params.content = 'tubingen'" --port 5002
    nst-review --tracking-uri http://127.0.0.1:5000

Flask, because MLflow's own server is Flask and brings it: no new web stack. The server
listens on 127.0.0.1 unless ``--host`` says otherwise (``mlflow ui``'s options and defaults),
serves one thread per request, and keeps nothing that matters in memory: every judgement is
written to the store before the answer goes back (``nst.review``), so two browsers, or two
apps, at once lose and double nothing, and a restarted app goes on where the store stands.

Routes: ``/`` the comparison page, ``/ranking`` the ranking page, ``/api/pair`` (GET: the next
two runs, sides at random, and a fresh judgement id), ``/api/judgements`` (POST: one judgement;
400 for a malformed one, 409 for one already recorded; the store is not touched by either),
``/api/ranking`` (GET), ``/image/<run>/<result|content|style|thumb>``.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException

from nst import ranking, review, review_page, store
from nst.errors import NSTError

DEFAULT_PORT = 5001  # beside `make ui` on 5000
KINDS = ("result", "content", "style", "thumb")


def create_app(client, chosen: review.Review, uri: str, folder: Path, seed: int | None = None):
    """The Flask app over ``chosen``'s runs; images are cached in ``folder``."""
    from flask import Flask, Response, abort, jsonify, request

    app = Flask("nst.review")
    judgements = review.JudgementLog(client, chosen)
    rng, rng_lock = np.random.default_rng(seed), threading.Lock()
    mlflow_url = store.run_address(uri, chosen.experiment_id, chosen.home)
    identical = chosen.identical

    @app.get("/")
    def compare_page():
        return review_page.compare(chosen.title, len(chosen.runs), len(judgements.all()))

    @app.get("/api/pair")
    def pair():
        known = judgements.all()
        with rng_lock:
            left, right = ranking.next_pair(chosen.ids, known, rng, exclude=identical)
        return jsonify(id=uuid.uuid4().hex, left=left, right=right, count=len(known))

    @app.post("/api/judgements")
    def judge():
        try:
            judgement = review.check(chosen, client, request.get_json(silent=True))
            count = len(judgements.add(judgement))
        except review.Replayed as exc:  # kept already (e.g. sent again after a failed publication)
            return jsonify(error=str(exc), kept=True), 409
        except review.BadJudgement as exc:
            return jsonify(error=str(exc)), 400
        except NSTError as exc:  # the store refused (locked beyond NST_STORE_WAIT, disk full): one line
            return jsonify(error=str(exc)), 503
        return jsonify(id=judgement.id, count=count, left=chosen.candidate(judgement.left).label,
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
            len(known), review.stable_since(chosen, known), review.MEASURE_NAMES, mlflow_url)

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


def check_address(host: str, port: int) -> None:
    """Raise ``NSTError`` (one line) if ``host:port`` cannot be listened on: werkzeug would print three
    lines and exit 1 from inside its constructor."""
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug's server does
            probe.bind(address)
    except OSError as exc:
        raise NSTError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def main(argv: list[str] | None = None) -> int:
    """``nst-review``: judge results two at a time in the browser; the ranking goes to MLflow."""
    parser = argparse.ArgumentParser(prog="nst-review", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this machine only, as mlflow ui)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"the port (default {DEFAULT_PORT}; 0: any free port)")
    parser.add_argument("--tracking-uri", default=store.store_uri(),
                        help="MLflow tracking URI (default: the local store under $NST_OUTPUT_DIR or ./outputs)")
    parser.add_argument("--experiment", default=store.DEFAULT_EXPERIMENT, help="MLflow experiment name")
    parser.add_argument("--sweep", action="append", default=[],
                        help="a sweep's parent run id or 'latest' (repeat for several; default: the latest)")
    parser.add_argument("--filter", help="also the FINISHED runs matching this MLflow filter string, "
                                         "e.g. \"params.content = 'tubingen'\"")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: a port is 0..65535")
    from werkzeug.serving import make_server

    try:
        uri = store.store_uri(args.tracking_uri)
        client = store.open_store(uri)
        chosen = review.select(client, args.experiment, args.sweep, args.filter)
        with tempfile.TemporaryDirectory(prefix="nst-review-") as scratch:
            chosen = review.prepare(client, chosen, Path(scratch))
            check_address(args.host, args.port)
            server = make_server(args.host, args.port, create_app(client, chosen, uri, Path(scratch)),
                                 threaded=True)
            host, port = server.server_address[:2]
            print(f"nst-review: {len(chosen.runs)} runs of {chosen.title}; judgements kept on MLflow run "
                  f"{chosen.home}\nnst-review: open http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                pass
            server.server_close()
    except NSTError as exc:
        print(f"nst-review: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MlflowException as exc:  # an unknown run id, a filter MLflow cannot parse
        print(f"nst-review: error: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
