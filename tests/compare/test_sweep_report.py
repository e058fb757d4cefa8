"""A sweep's table, grid and report from the store alone (nst/compare/sweep_report.py)."""

import pytest
from PIL import Image

from nst.compare import review, sweep_report
from nst.figures import grid as pictures
from nst.tracking import tags
from tests.helpers.images import result_images
from tests.helpers.overrides import SWEEP_JOB
from tests.helpers.store import runs, store_client


def test_a_small_sweep_keeps_its_results_resolution_and_shape():
    assert sweep_report.tile_box(result_images(6, 256)) == (256, 192)  # was cut to 192 x 192, 4:3 inside a square
    assert sweep_report.tile_box(result_images(6, 1024)) == (sweep_report.LARGEST_TILE, sweep_report.LARGEST_TILE * 3 // 4)
    assert sweep_report.tile_box(result_images(6, 64))[0] == pictures.TILE  # never smaller: the labels must fit
    assert sweep_report.tile_box(result_images(sweep_report.SMALL_SWEEP + 1, 256))[0] == pictures.TILE
    assert sweep_report.tile_box([None, None]) == (pictures.TILE, pictures.TILE)
    assert sweep_report.tile_box([Image.new("RGB", (96, 256))]) == (256, 256)  # a portrait result: square


def test_a_sweep_with_no_recorded_run_still_summarises(tmp_path):
    """Every job failed before reaching MLflow (an unreachable server): an empty table, not a crash."""
    client = store_client(tmp_path)
    experiment = client.create_experiment("empty")
    parent = client.create_run(experiment, tags={tags.TAG_ROLE: "sweep"}).info.run_id
    summary = sweep_report.summarise_sweep(client, parent, tmp_path / "summary", log_to_parent=False)
    assert summary.table.empty and "status" in summary.table.columns
    assert (tmp_path / "summary" / "summary.csv").read_text().startswith("job,run_id,status")


@pytest.mark.slow  # 14-21 s: make test stays under 10 minutes
def test_swept_inputs_give_one_row_per_job(tmp_path, nst):
    """Sweeping the images (make examples): each row is that job's content | style | result."""
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, "-m", *SWEEP_JOB, "style=starry_night,wave")
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    parent = runs(client, "sweep")[0].info.run_id
    grid = Image.open(client.download_artifacts(parent, "sweep/grid.png", str(tmp_path)))
    top, height = pictures.TITLE, pictures.TILE * 3 // 4  # tiles as high as the 4:3 results
    assert grid.size == (3 * (pictures.TILE + 6) + 6, top + 2 * (height + 28 + 6) + 6)
    # the second row's style tile is the wave, not the first job's starry night
    row_two = grid.crop((pictures.TILE + 12, top + height + 40, 2 * pictures.TILE + 12, top + 2 * height + 40))
    row_one = grid.crop((pictures.TILE + 12, top + 6, 2 * pictures.TILE + 12, top + height + 6))
    assert list(row_one.getdata()) != list(row_two.getdata())


def test_an_artifact_is_downloaded_once_per_folder(review_world, tmp_path, monkeypatch):
    """The report's images and nst-review's come from one cache (it missed every nested artifact)."""
    client, run = review_world["client"], review_world["children"][0]
    downloads = []
    real = client.download_artifacts

    def counting(*args, **kwargs):
        downloads.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "download_artifacts", counting, raising=False)
    first = sweep_report.artifact_bytes(client, run, "result/result.png", tmp_path)
    assert sweep_report.artifact_bytes(client, run, "result/result.png", tmp_path) == first
    assert review.image_bytes(client, run, "content", tmp_path) == review.image_bytes(client, run, "content", tmp_path)
    assert downloads == ["result/result.png", "inputs/content.png"]
    assert sweep_report.artifact_bytes(client, run, "result/missing.png", tmp_path) is None
