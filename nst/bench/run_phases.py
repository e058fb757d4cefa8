"""Where one run's seconds go: the ``nst`` command run as a user runs it, tracked and untracked, each run's
phases (run.json's ``phases``, ``nst.phases``) beside the wall time the bench measures around its process.

* ``phases_race``: the runs, a row at a time, tracked and untracked alternately so that both modes see
  the same machine;
* ``medians``: one mode's row of medians.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path

from nst.bench.races import pair_overrides, run_nst
from nst.phases import ORDER

# each mode's overrides: tracked writes to the default local store, untracked to its folder alone
MODES = {"tracked": [], "untracked": ["tracking=none"]}
# ~40 evaluations whatever the loss does: two L-BFGS epochs of 16 iterations, no early stop
BUDGET = ["epochs=2", "optimizer.max_iter=16", "optimizer.convergence_tolerance=null"]


def phases_race(backbone: str, size: int, runs: int, device: str) -> Iterator[dict]:
    """``runs`` runs of ``nst content=tubingen style=starry_night model=<backbone> image.size=<size>``
    (``BUDGET``) per mode, alternating, a row at a time: run (1, 2, ...), mode, phases (run.json's),
    wall (seconds around the process), elapsed (run.json's elapsed_s: the optimisation loop's seconds),
    outside (wall - elapsed: the seconds around the optimisation) and exit (wall - the phases' sum: the
    process's creation and exit, outside nst's clock).

    All write under one temporary folder whose store an untimed tracked run creates first: a user's
    store exists but for the first run, and creating one is not what a run costs.
    """
    overrides = [*pair_overrides(backbone, size, device), *BUDGET]
    with tempfile.TemporaryDirectory() as root:
        out = Path(root)
        run_nst(overrides, out)  # the warm-up: the store, and the files the runs read in the page cache
        for run in range(1, runs + 1):
            for mode, extra in MODES.items():
                yield {"run": run, "mode": mode, **_timed_run([*overrides, *extra], out)}


def _timed_run(overrides: list[str], out: Path) -> dict:
    """One run's row (``phases_race``), from its wall seconds and the run.json it added."""
    before = set(out.glob("runs/*/run.json"))
    wall = run_nst(overrides, out)
    added = set(out.glob("runs/*/run.json")) - before
    if len(added) != 1:  # a run that wrote no record (or two) has nothing to time
        raise RuntimeError(f"nst {' '.join(overrides)} wrote {len(added)} run.json under {out}, not 1")
    record = json.loads(added.pop().read_text())
    phases, elapsed = record["phases"], float(record["elapsed_s"])
    return {"phases": phases, "wall": wall, "elapsed": elapsed, "outside": wall - elapsed,
            "exit": wall - sum(phases.values())}


def medians(rows: list[dict], mode: str) -> dict:
    """``mode``'s row of medians over its ``rows``: each phase's (None for a phase no run recorded), and
    wall's, elapsed's, outside's and exit's (the median of each run's own difference)."""
    own = [row for row in rows if row["mode"] == mode]
    phases = {name: _median([row["phases"][name] for row in own if name in row["phases"]]) for name in ORDER}
    return {"run": "median", "mode": mode, "phases": phases,
            **{key: _median([row[key] for row in own]) for key in ("wall", "elapsed", "outside", "exit")}}


def _median(values: list[float]) -> float | None:
    """The median, or None of nothing (a column no run has)."""
    return statistics.median(values) if values else None
