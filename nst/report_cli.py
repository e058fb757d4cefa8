"""The ``nst-report`` command: runs or a sweep as a table, a sweep's grid rebuilt, a run folder recorded.

    nst-report                         # every run of experiment "nst", Markdown
    nst-report --sweep latest          # the latest sweep: one row per job
    nst-report --sweep <run id> --format csv --rebuild reports/
    nst-report --relog outputs/runs/2026-11-26_14-59-14   # a run the store could not record when it ended

Opening the store ends FAILED the runs whose process died (``nst.store.open_store``),
so the table never shows a run RUNNING that nothing runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from nst import jobs, store
from nst.errors import NSTError
from nst.reports import runs_table, summarise_sweep, sweep_table


def main(argv: list[str] | None = None) -> int:
    """``nst-report``: print runs or a sweep as a table; rebuild a sweep's grid and plot; record a run folder."""
    parser = argparse.ArgumentParser(prog="nst-report", description=main.__doc__)
    parser.add_argument("--uri", default=store.store_uri(),
                        help="MLflow tracking URI (default: the local store under $NST_OUTPUT_DIR or ./outputs)")
    parser.add_argument("--experiment", default="nst", help="MLflow experiment name")
    parser.add_argument("--sweep", help="a sweep's parent run id, or 'latest'")
    parser.add_argument("--format", choices=("markdown", "csv"), default="markdown")
    parser.add_argument("--rebuild", type=Path, metavar="DIR",
                        help="with --sweep: rebuild grid.png, summary.csv, the loss plot and report.html into DIR")
    parser.add_argument("--relog", type=Path, metavar="FOLDER",
                        help="record in its store a run whose folder holds its files but that the store "
                             "could not record when it ended (the store its config.yaml names)")
    args = parser.parse_args(argv)
    try:
        if args.relog:
            run_id, recorded = jobs.relog(args.relog)
            print(f"nst-report: {args.relog} is recorded as MLflow run {run_id}" if recorded else
                  f"nst-report: {args.relog} was already recorded as MLflow run {run_id}; nothing to do")
            return 0
        client = store.open_store(store.store_uri(args.uri))
        if args.sweep:
            parent = store.latest_sweep(client, args.experiment) if args.sweep == "latest" else args.sweep
            store.check_sweep_parent(client, parent)
            if args.rebuild:
                table = summarise_sweep(client, parent, args.rebuild, log_to_parent=False).table
            else:
                table = sweep_table(client, parent)
        else:
            table = runs_table(client, args.experiment)
    except NSTError as exc:
        print(f"nst-report: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MlflowException as exc:  # e.g. a run id that is not in the store
        print(f"nst-report: error: {exc.message}", file=sys.stderr)
        return 2
    print(table.to_csv(index=False) if args.format == "csv" else table.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
