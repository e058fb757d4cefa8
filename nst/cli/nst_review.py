"""The ``nst-review`` command: serve nst-review's page (``nst.compare.review_app``) on this machine.

    nst-review                                # the latest sweep of experiment "nst", local store
    nst-review --sweep <parent run id> --sweep latest
    nst-review --filter "params.content = 'tubingen'" --port 5002
    nst-review --pareto                       # only the latest sweep's content-style Pareto front
    nst-review --tracking-uri http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

from nst.cli import failures
from nst.compare import review
from nst.compare.review_app import create_app
from nst.errors import NSTError
from nst.tracking import store

DEFAULT_PORT = 5001  # beside `make ui` on 5000


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
    parser.add_argument("--pareto", action="store_true",
                        help="review only the runs on the content-style Pareto front of the "
                             "chosen sweeps/filter: the FINISHED runs no other chosen run beats "
                             "on both auto.ssim_content (higher) and auto.gram_distance_style "
                             "(lower); their judgements are kept on a review run of their own")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port}: a port is 0..65535")
    from werkzeug.serving import make_server

    try:
        uri = store.store_uri(args.tracking_uri)
        client = store.open_store(uri, option="--tracking-uri")
        chosen = review.select(client, args.experiment, args.sweep, args.filter,
                               pareto=args.pareto)
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
    except Exception as exc:  # a user error, a store that refuses, an unknown run id: one line
        if failures.debugging():
            raise
        return failures.report("nst-review", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
