"""A sweep's table, grid and report from the store alone (nst/compare/sweep_report.py), its jobs' pictures read
from their folders where this machine holds the store's very files."""

import json
import os
import time
from pathlib import Path

import pytest
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from PIL import Image

from nst.compare import review, sweep_report
from nst.figures import grid as pictures
from nst.tracking import store, tags
from nst.tracking.steps import PROGRESS
from tests.helpers import reviews
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


def folder_sweep(tmp_path: Path, jobs: int = 3) -> tuple:
    """A sweep recorded as nst records one, its jobs' folders on this machine: each job writes its picture
    (the last job, whose loss blew up, as last_finite.png) and run.json to its folder, logs it with its inputs
    and a progress image, and ends. Returns (client, parent run id, child runs by job)."""
    client = store.open_store(f"sqlite:///{tmp_path / 'mlflow.db'}", create=True,
                              artifact_root=(tmp_path / "mlartifacts").as_uri())
    experiment = client.create_experiment("nst", artifact_location=(tmp_path / "mlartifacts" / "nst").as_uri())
    parent = client.create_run(experiment, tags={tags.TAG_ROLE: "sweep"}).info.run_id
    for job in range(jobs):
        folder = tmp_path / "sweep" / str(job)
        folder.mkdir(parents=True)
        run = client.create_run(experiment, tags={
            tags.TAG_ROLE: "run", tags.PARENT_TAG: parent, tags.TAG_JOB: str(job), tags.TAG_OUTPUT_DIR: str(folder),
            tags.TAG_HOST: os.uname().nodename,
            tags.TAG_OVERRIDES: json.dumps([f"loss.style_weight={10 ** job}"])}).info.run_id
        client.log_param(run, "loss.style_weight", str(10 ** job))
        picture = reviews.picture(job, (24 + 8 * job, 18))
        blew_up = job == jobs - 1
        picture.save(folder / ("last_finite.png" if blew_up else "result.png"), format="PNG")
        (folder / "run.json").write_text(json.dumps({"status": "FAILED"} if blew_up else
                                                    {"status": "FINISHED", "result": "result.png"}))
        client.log_image(run, reviews.picture(100), artifact_file="inputs/content.png")
        client.log_image(run, reviews.picture(200), artifact_file="inputs/style.png")
        client.log_image(run, picture, key=PROGRESS, step=0, synchronous=True)
        if blew_up:
            client.log_artifact(run, str(folder / "last_finite.png"))
        else:
            client.log_image(run, picture, artifact_file="result/result.png")
        client.set_terminated(run, "FAILED" if blew_up else "FINISHED")
    return client, parent, {int(run.data.tags[tags.TAG_JOB]): run for run in store.child_runs(client, parent)}


def counted_downloads(monkeypatch) -> list[str]:
    """The artifacts downloaded from a local artifact store from now on, in order."""
    downloads = []
    real = LocalArtifactRepository.download_artifacts

    def counting(self, artifact_path, dst_path=None):
        downloads.append(artifact_path)
        return real(self, artifact_path, dst_path)

    monkeypatch.setattr(LocalArtifactRepository, "download_artifacts", counting)
    return downloads


def summary_files(client, parent: str, folder: Path) -> tuple[bytes, bytes]:
    """The report.html and grid.png that ``summarise_sweep`` writes to ``folder``."""
    sweep_report.summarise_sweep(client, parent, folder, log_to_parent=False)
    return (folder / "report.html").read_bytes(), (folder / "grid.png").read_bytes()


def test_a_report_read_from_the_jobs_folders_is_the_one_read_from_the_store(tmp_path, monkeypatch):
    client, parent, _ = folder_sweep(tmp_path)
    downloads = counted_downloads(monkeypatch)
    from_folders = summary_files(client, parent, tmp_path / "first")
    assert [path for path in downloads if not path.startswith(("inputs/", "images/"))] == []
    assert downloads.count("inputs/content.png") == 1  # the grid's and the page's shared inputs: read once
    (tmp_path / "sweep").rename(tmp_path / "deleted")  # the folders are gone: every picture from the store
    downloads.clear()
    assert summary_files(client, parent, tmp_path / "second") == from_folders
    assert {"result/result.png", "last_finite.png"} <= set(downloads)
    assert from_folders[0].count(b'<img class="shot"') == 3  # each job's picture, the blown-up one's too


def test_a_folder_that_is_not_the_stores_copy_gives_way_to_the_store(tmp_path, monkeypatch):
    client, parent, children = folder_sweep(tmp_path, jobs=2)
    run = children[0]
    stored = Path(client.download_artifacts(run.info.run_id, "result/result.png", str(tmp_path))).read_bytes()
    result = Path(run.data.tags[tags.TAG_OUTPUT_DIR]) / "result.png"
    downloads = counted_downloads(monkeypatch)

    def read(found=run) -> bytes | None:
        return sweep_report.RunFiles(client, run.info.run_id, tmp_path / "scratch", found).read("result/result.png")

    assert read() == stored and downloads == []  # the folder's copy
    reviews.picture(7, (40, 30)).save(result, format="PNG")  # another picture since
    assert read() == stored and downloads == ["result/result.png"]
    result.write_bytes(stored)
    later = time.time() + 3600
    os.utime(result, (later, later))  # written again after the run ended
    assert read() == stored and len(downloads) == 2
    os.utime(result, (run.info.end_time / 1000, run.info.end_time / 1000))
    assert read() == stored and len(downloads) == 2  # the store's very file again
    monkeypatch.setattr(sweep_report, "this_host", lambda: "another-machine")  # the same path, another machine
    assert read() == stored and len(downloads) == 3


def test_a_summary_finds_its_runs_in_one_search(tmp_path, monkeypatch):
    """Each picture was a query for its run (MLflow's client looks a run's artifact root up per download)."""
    client, parent, _ = folder_sweep(tmp_path, jobs=4)
    asked = []
    real = SqlAlchemyStore.get_run

    def counting(self, run_id):
        asked.append(run_id)
        return real(self, run_id)

    monkeypatch.setattr(SqlAlchemyStore, "get_run", counting)
    sweep_report.summarise_sweep(client, parent, tmp_path / "summary")
    assert set(asked) == {parent}


def test_a_real_sweeps_report_from_its_folders_is_the_one_from_the_store(tracked_sweep, tmp_path, monkeypatch):
    """Pictures the engine wrote and the recorder logged: byte for byte the same report either way."""
    out, _ = tracked_sweep
    client = store.open_store(f"sqlite:///{out / 'mlflow.db'}")
    parent = runs(client, "sweep")[0].info.run_id
    downloads = counted_downloads(monkeypatch)
    from_folders = summary_files(client, parent, tmp_path / "first")
    assert "result/result.png" not in downloads
    monkeypatch.setattr(sweep_report, "this_host", lambda: "another-machine")
    assert summary_files(client, parent, tmp_path / "second") == from_folders
    assert downloads.count("result/result.png") == 3
