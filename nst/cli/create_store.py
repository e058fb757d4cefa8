"""``python -m nst.cli.create_store <mlflow.db>``: create or check a local store under its lock, before a
process that would create it without the lock opens it (``make ui`` runs this before ``mlflow ui``), and print
the port its UI serves on (``nst.tracking.ui``: ``NST_UI_PORT``, remembered beside the store)."""

from __future__ import annotations

import sys
from pathlib import Path

from nst.errors import TrackingError
from nst.tracking import database, ui


def main(argv: list[str] | None = None) -> int:
    """Create or check the store named on the command line; 0, or the error's exit status."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m nst.cli.create_store <path/to/mlflow.db>", file=sys.stderr)
        return 2
    db = Path(args[0]).expanduser().resolve()
    try:
        database.ensure_store(db, (db.parent / "mlartifacts").as_uri())
    except TrackingError as exc:
        print(f"nst: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(ui.port(f"sqlite:///{db}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
