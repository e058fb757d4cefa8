"""The ``nst-report`` command: runs or a sweep as a table, a sweep's grid rebuilt, a run folder recorded.

    nst-report                         # every run of experiment "nst", Markdown
    nst-report --sweep latest          # the latest sweep: one row per job
    nst-report --sweep <run id> --format csv --rebuild reports/
    nst-report --relog outputs/runs/2026-11-26_14-59-14   # a run the store could not record when it ended
    nst-report --human --sweep latest  # the human ranking of nst-review's judgements; the report marks it
    nst-report --compare <run id> latest  # two sweeps side by side on one page

Opening the store ends FAILED the runs whose process died (``nst.tracking.store.open_store``),
so the table never shows a run RUNNING that nothing runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from nst.cli import exits, failures
from nst.compare import across, ranking, review
from nst.compare.sweep_report import runs_table, summarise_sweep, sweep_table
from nst.errors import TrackingError
from nst.tracking import store, tags
from nst.tracking.relog import relog


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
    parser.add_argument("--human", action="store_true",
                        help="the human ranking from nst-review's judgements (of --sweep, default the latest, or of "
                             "--filter); a sweep's report.html in MLflow is rebuilt with each image's rank")
    parser.add_argument("--compare", nargs="+", metavar="SWEEP",
                        help="sweeps side by side on one page (parent run ids or 'latest'; with --filter, those "
                             "runs as one more column): written to --out and logged to MLflow")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="with --compare: where report.html goes (default: comparisons/ beside the store)")
    parser.add_argument("--filter", help="with --human: the runs reviewed by this MLflow filter string; with "
                                         "--compare: runs to show as one more column")
    args = parser.parse_args(argv)
    try:
        if args.human:
            return human(store.open_store(store.store_uri(args.uri), option="--uri"), args)
        if args.compare:
            page, address = across.compare(store.open_store(store.store_uri(args.uri), option="--uri"), args.experiment,
                                           args.compare, args.filter, args.out)
            print(f"nst-report: comparison {page}\nnst-report: in MLflow {address}")
            return 0
        if args.relog:
            run_id, recorded = relog(args.relog)
            print(f"nst-report: {args.relog} is recorded as MLflow run {run_id}" if recorded else
                  f"nst-report: {args.relog} was already recorded as MLflow run {run_id}; nothing to do")
            return 0
        client = store.open_store(store.store_uri(args.uri), option="--uri")
        if args.sweep:
            parent = store.named_sweep(client, args.experiment, args.sweep)
            if args.rebuild:
                table = summarise_sweep(client, parent, args.rebuild, log_to_parent=False).table
            else:
                table = sweep_table(client, parent)
        else:
            table = runs_table(client, args.experiment)
    except Exception as exc:  # a user error, a store that refuses, an unknown run id: one line
        if failures.debugging():
            raise
        return failures.report("nst-report", exc)
    print(table.to_csv(index=False) if args.format == "csv" else table.to_markdown(index=False))
    return 0


def human(client, args) -> int:
    """``--human``: the ranking table (then, in Markdown, how stable it is, the reviewers' agreement and the
    automatic measures' correlation with it); a single sweep's report rebuilt with the ranks. The ranking is
    published again first (``review.publish``: the same metrics), in case an app stopped between a
    judgement and its publication."""
    chosen = review.select(client, args.experiment, [args.sweep] if args.sweep else [], args.filter, create=False)
    judgements = review.read(client, chosen.home)
    if not judgements:
        raise TrackingError(f"no judgement on run {chosen.home} yet: judge the runs with nst-review first")
    table = review.publish(client, chosen, judgements)
    if args.format == "csv":
        print(table.to_csv(index=False), end="")
    else:
        reviewers = len({j.reviewer for j in judgements})
        print(table.to_markdown(index=False, floatfmt=".3g"))
        print(f"\n{len(judgements)} judgements by {reviewers} reviewer(s); the top three have not changed since "
              f"judgement {review.stable_since(chosen, judgements)}.\n")
        if reviewers > 1:
            print(ranking.agreement_table(judgements).to_markdown(index=False, floatfmt=".3g") + "\n")
        print(review.correlations(chosen, table).to_markdown(index=False, floatfmt=".2g"))
    home = client.get_run(chosen.home).data.tags
    if home.get(tags.TAG_ROLE) == "sweep":
        own = Path(home.get(tags.TAG_SWEEP_DIR, ""))  # the folder whose report.html the sweep printed
        with tempfile.TemporaryDirectory() as folder:
            target = Path(args.rebuild) if args.rebuild else own if own.is_dir() and os.access(own, os.W_OK) else None
            summary = summarise_sweep(client, chosen.home, target or Path(folder))
        page = store.run_address(client.tracking_uri, chosen.experiment_id, chosen.home, "sweep/report.html")
        on_disk = f" and {summary.page}" if target else ""
        print(f"nst-report: the sweep's report now marks each image's human rank: {page}{on_disk}", file=sys.stderr)
    return 0


console = exits.fast(main)  # the ``nst-report`` command

if __name__ == "__main__":
    console()
