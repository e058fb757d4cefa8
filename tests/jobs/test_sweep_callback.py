"""One MLflow parent run per multirun (nst/jobs/sweep_callback.py): created before the first job, or no job
runs; at the end its grid, table and plot, and where to find them."""

import csv
import shutil

import pytest
from PIL import Image

from nst.figures import grid as pictures
from nst.images.samples import resolve_image
from nst.tracking import tags
from tests.helpers.cli import one_line_error, refused
from tests.helpers.overrides import TRACKED_RUN
from tests.helpers.store import artifact_paths, runs, store_client


def test_a_sweep_says_where_its_grid_and_parent_are(tracked_sweep):
    out, done = tracked_sweep
    (parent,) = runs(store_client(out), "sweep")
    lines = done.stdout.strip().splitlines()[-2:]
    assert lines[0] == f"nst: sweep grid {parent.data.tags[tags.TAG_SWEEP_DIR]}/grid.png"
    assert lines[1] == (f"nst: MLflow sweep http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/"
                        f"{parent.info.run_id}?workflowType=machine_learning  (make ui serves it)")


def test_parent_holds_grid_table_and_plot(tracked_sweep, tmp_path):
    out, done = tracked_sweep
    client = store_client(out)
    parent = runs(client, "sweep")[0].info.run_id
    paths = artifact_paths(client, parent)
    assert {"sweep/grid.png", "sweep/summary.csv", "sweep/summary.json",
            "sweep/losses_vs_loss_style_weight.png"} <= set(paths)
    grid = Image.open(client.download_artifacts(parent, "sweep/grid.png", str(tmp_path)))
    # a title line, then content, style and 3 tiles: 4 per row -> 2 rows, tiles as high as the 4:3 results
    height = pictures.TILE * 3 // 4
    assert grid.size == (4 * (pictures.TILE + 6) + 6, pictures.TITLE + 2 * (height + 28 + 6) + 6)
    table = list(csv.DictReader(open(client.download_artifacts(parent, "sweep/summary.csv", str(tmp_path)))))
    assert [row["label"] for row in table] == ["β=1 · α/β=1", "β=100 · α/β=0.01", "β=1e4 · α/β=1e-4"]
    assert all(row["status"] == "FINISHED" and float(row["final_style"]) > 0 for row in table)
    assert "nst: sweep grid" in done.stdout


def test_a_sweep_whose_parent_cannot_be_created_runs_no_job_and_exits_2(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    (out / "mlflow.db").write_bytes(b"not a database" * 100)
    done = nst(out, "-m", *TRACKED_RUN, "seed=1,2,3")
    assert done.returncode == 2
    assert "is not an MLflow store" in one_line_error(done.stderr)
    assert not list(out.glob("multiruns/*/*/result.png"))


# --- sweeps refused before a parent exists; what the parent says -------------------------------------


@pytest.mark.parametrize(("sweep", "line"), [
    ("loss.style_weight=range(5,1)", "loss.style_weight='an empty sweep' is not allowed: values that give at least "
                                     "one job (range(start, stop) counts up from start and stops before stop)"),
    ("seed=range(0,100000)", "the sweep='100000 jobs (100000 seed)' is not allowed: at most 1000 jobs in one sweep "
                             "(NST_MAX_JOBS=<n> raises the limit)"),
])
def test_an_empty_or_huge_sweep_is_refused_before_its_parent_exists(tmp_path, nst, sweep, line):
    """Hydra ran no job of an empty sweep and recorded it FINISHED with an empty report; a huge one sat for
    minutes before its first job."""
    out = tmp_path / "outputs"
    done = nst(out, "-m", *TRACKED_RUN, sweep)
    refused(done, f"nst: error: {line}")
    assert not (out / "mlflow.db").exists() or runs(store_client(out), None) == []


def test_the_job_limit_is_the_users_to_raise(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, "-m", *TRACKED_RUN, "seed=1,2", "loss.style_weight=1,10", env={"NST_MAX_JOBS": "3"})
    refused(done, "nst: error: the sweep='4 jobs (2 seed x 2 loss.style_weight)' is not allowed: at most 3 jobs in "
                  "one sweep (NST_MAX_JOBS=<n> raises the limit)")


def test_the_parents_description_names_quoted_values_as_typed_and_shows_markup_as_text(tmp_path, nst):
    """A quoted sweep value is its text (not Hydra's QuotedString repr), and a file name holding markup is
    escaped in the description, which MLflow renders as Markdown."""
    out, folder = tmp_path / "outputs", tmp_path / "in"
    folder.mkdir()
    odd = folder / "<img src=x onerror=alert(1)> *b* [l](x).png"
    shutil.copy(resolve_image("tubingen"), odd)
    done = nst(out, "-m", *TRACKED_RUN, "optimizer.max_iter=1", "epochs=1", f'content="{odd}",tubingen')
    assert done.returncode == 0, done.stderr[-3000:]
    (parent,) = runs(store_client(out), "sweep")
    description = parent.data.tags[tags.TAG_DESCRIPTION]
    assert "QuotedString" not in description and "<img" not in description, description
    assert r"&lt;img src=x onerror=alert(1)&gt; \*b\* \[l\](x).png, tubingen" in description, description
    assert tags.unliteral(description.split("\n\n")[0]).endswith(f"in {odd}, tubingen.")
