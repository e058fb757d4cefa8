"""The port of the MLflow UI that serves a local store, so that every address nst prints or renders (a run's,
a sweep's, the review's, a report's) opens the same UI.

Light on purpose (no MLflow, no torch): ``make ui`` reads it before starting the UI.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PORT_ENV, DEFAULT_PORT = "NST_UI_PORT", "5000"
PORT_FILE = "ui-port"  # beside a local store's mlflow.db: the port its UI was last given


def port(uri: str) -> str:
    """The UI port for the local store at ``uri``: ``NST_UI_PORT`` when set (and then remembered beside the
    store, so commands run without it link to the same UI), else the port remembered there, else 5000."""
    remembered = Path(uri.removeprefix("sqlite:///")).parent / PORT_FILE if uri.startswith("sqlite:///") else None
    given = os.environ.get(PORT_ENV, "").strip()
    if given:
        if remembered is not None and remembered.parent.is_dir():
            with contextlib.suppress(OSError):  # a read-only store still links to the right port now
                if not remembered.is_file() or remembered.read_text().strip() != given:
                    remembered.write_text(given + "\n")
        return given
    if remembered is not None and remembered.is_file():
        with contextlib.suppress(OSError):
            return remembered.read_text().strip() or DEFAULT_PORT
    return DEFAULT_PORT
