"""The files a run leaves in its folder, and how they are written.

Every run's folder holds ``config.yaml`` (the resolved config), ``losses.csv`` (one row per
evaluation), ``run.json`` (what the numbers mean, and how the run ended) and its result image
(``result.png``, or ``output``), or ``last_finite.png`` / ``partial.png`` when it did not finish.
Each is written whole (``nst.files``: a full disk or a kill leaves it absent, never empty), and
a file that cannot be written is one line naming it (``OutputError``), never a traceback.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from nst.errors import OutputError
from nst.files import write_text, written

RESULT_PNG = "result.png"
LAST_FINITE_PNG = "last_finite.png"
PARTIAL_PNG = "partial.png"
LOSSES_CSV = "losses.csv"
CONFIG_YAML = "config.yaml"
RECORD_JSON = "run.json"


def result_png(folder: Path, record: dict) -> Path:
    """Where a run's result image is, from its folder and its run.json record (``output`` names it)."""
    return Path(folder) / record.get("result", RESULT_PNG)


@contextmanager
def writing(folder: Path):
    """A run's files that cannot be written (disk full, read-only, permissions) as one line naming them."""
    try:
        yield
    except OSError as exc:
        target = exc.filename or folder
        raise OutputError(f"cannot write {target}: {exc.strerror or exc} (free some space, or choose a "
                          f"writable output folder: paths.output_dir=<folder> or NST_OUTPUT_DIR)") from exc


def write_config(folder: Path, config_yaml: str) -> None:
    """config.yaml, before the run starts: a folder always says what it was run with."""
    with writing(folder):
        write_text(folder / CONFIG_YAML, config_yaml)


def write_losses(path: Path, history: Sequence[dict]) -> None:
    """losses.csv: one row per evaluation, a column per key (in first-seen order).

    Written with the csv module: pandas costs a run most of a second to import.
    """
    columns = list(dict.fromkeys(key for row in history for key in row))
    with written(path) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, columns, restval="")
        writer.writeheader()
        writer.writerows(history)


def write_record(folder: Path, record: dict) -> None:
    """run.json: the run record as indented JSON."""
    write_text(folder / RECORD_JSON, json.dumps(record, indent=2, default=str) + "\n")


def add_to_record(folder: Path, **fields) -> None:
    """``fields`` added to the run.json in ``folder``, if it has one (nothing is written otherwise)."""
    path = Path(folder) / RECORD_JSON
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    with writing(folder):
        write_record(folder, {**record, **fields})
