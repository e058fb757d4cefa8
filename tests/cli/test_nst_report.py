"""The `nst-report` command (nst/cli/nst_report.py): a sweep's table, its grid rebuilt from the store alone,
the human ranking, errors in one line."""

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from nst.cli import nst_report
from nst.figures import grid as pictures
from tests.helpers.cli import report, run_report
from tests.helpers.overrides import TRACKED_RUN
from tests.helpers.reviews import judge
from tests.helpers.store import all_runs, runs, store_client


@pytest.mark.slow  # 20-60 s: make test stays under 10 minutes on 2 cores
def test_report_prints_one_row_per_run(tracked_sweep):
    out, _ = tracked_sweep
    env = {**os.environ, "NST_OUTPUT_DIR": str(out)}
    done = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--sweep", "latest", "--format", "csv"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 3
    assert sorted(float(r["loss.style_weight"]) for r in rows) == [1.0, 100.0, 1e4]
    assert all(float(r["final_total"]) > 0 and float(r["final_content"]) >= 0 for r in rows)
    nst_report_script = Path(sys.executable).with_name("nst-report")  # the console script is installed and runs
    markdown = subprocess.run([str(nst_report_script)], capture_output=True, text=True,
                              env=env, timeout=120)
    assert markdown.returncode == 0 and markdown.stdout.startswith("| run_id")


def test_report_rebuilds_grid_from_mlflow_alone(tracked_sweep, tmp_path):
    out, _ = tracked_sweep
    first = sorted(runs(store_client(out), "sweep"), key=lambda r: r.info.start_time)[0].info.run_id
    done = run_report("--sweep", first, "--rebuild", str(tmp_path / "rebuilt"), env={"NST_OUTPUT_DIR": str(out)})
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "rebuilt" / "grid.png").size[0] > 4 * pictures.TILE
    assert (tmp_path / "rebuilt" / "losses_vs_loss_style_weight.png").is_file()


def test_nst_report_human_prints_the_ranking_and_marks_the_report(review_world, review_client, capsys):
    client, chosen = review_client
    assert nst_report.main(["--uri", review_world["uri"], "--human"]) == 2  # nothing judged yet
    assert "judge the runs with nst-review first" in capsys.readouterr().err
    best, *rest = chosen.ids
    for other in rest * 2:
        assert judge(client, chosen, "left", pair=(best, other)).status_code == 201
    assert nst_report.main(["--uri", review_world["uri"], "--human", "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].startswith("run_id,rank,label,score") and lines[1].startswith(f"{best},1,")
    assert len(lines) == 5 and "sweep/report.html" in err
    page = Path(review_world["client"].download_artifacts(review_world["parent"], "sweep/report.html",
                                                          str(review_world["folder"])))
    text = page.read_text(encoding="utf-8")
    assert f"{chosen.candidate(best).label} · human #1" in text and "human_rank" in text
    on_disk = review_world["folder"].parent / "sweep" / "report.html"  # the one the sweep printed
    assert on_disk.read_text(encoding="utf-8") == text and str(on_disk) in err
    assert nst_report.main(["--uri", review_world["uri"], "--human"]) == 0
    assert "top three have not changed since judgement" in capsys.readouterr().out


@pytest.mark.slow
def test_report_errors_are_one_line(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    assert nst(out, *TRACKED_RUN).returncode == 0
    (single,) = all_runs(out, None)
    unknown = report(out, "--sweep", "deadbeef")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr and "deadbeef" in unknown.stderr
    not_a_sweep = report(out, "--sweep", single.info.run_id)
    assert not_a_sweep.returncode == 2 and "is not a sweep's parent run" in not_a_sweep.stderr
    by_folder = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--uri", str(out), "--format", "csv"],
                               capture_output=True, text=True, timeout=300)  # a path, not an sqlite:/// URI
    assert by_folder.returncode == 0 and single.info.run_id in by_folder.stdout
    bad_wait = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--uri", str(out)], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "NST_STORE_WAIT": "abc"})
    assert bad_wait.returncode == 2 and "NST_STORE_WAIT='abc' is not allowed" in bad_wait.stderr
