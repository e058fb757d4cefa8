"""The MLflow recorder (nst/tracking/recorder.py): what each run records (params, a metric per evaluation,
images on the step grid, files, the measures, every style and mask), how it ends, and a writer that
keeps every write in order."""

import json
import math
from pathlib import Path

import pytest
from PIL import Image

from nst.errors import TrackingError
from nst.images.measures import measure
from nst.tracking import tags
from tests.helpers.cli import start_nst
from tests.helpers.config import compose_config, make, prepare
from tests.helpers.overrides import ENGINE_48, FOLDER_RUN, LONG_RUN, SWEEP_JOB, TRACKED_RUN
from tests.helpers.store import (
    all_runs,
    artifact_paths,
    hold_lock,
    metrics_logged,
    progress_steps,
    runs,
    store_client,
)
from tests.helpers.waiting import wait_for


def test_multirun_creates_parent_and_children_with_everything(tracked_sweep, tmp_path):
    out, _ = tracked_sweep
    client = store_client(out)
    parents, children = runs(client, "sweep"), runs(client, "run")
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags[tags.PARENT_TAG] for c in children} == {parent.info.run_id}
    assert sorted(float(c.data.params["loss.style_weight"]) for c in children) == [1.0, 100.0, 1e4]
    for child in children:
        run_id = child.info.run_id
        assert child.info.status == "FINISHED"
        params = child.data.params
        # the core settings, what the job overrides, and the backbone used: few, since the UI's image chart
        # shows them above every image; the whole config and run record are artifacts
        assert params["model.name"] == "random" and params["run.backbone"] == "random"
        assert params["run.device"] == "cpu" and params["frame_every"] == "3"  # overridden: a param
        assert params["optimizer.max_iter"] == "4" and "optimizer.history_size" not in params
        assert len(params) < 30, sorted(params)
        assert child.data.tags[tags.TAG_GIT_COMMIT] and child.data.tags[f"{tags.TAG_HYDRA_CHOICE}model"] == "random"
        evaluations = int(child.data.metrics["evaluations"])
        assert evaluations >= 8  # 2 epochs of 4 L-BFGS iterations, line-search evaluations on top
        assert evaluations == len(client.get_metric_history(run_id, "total"))
        assert child.data.metrics["converged"] == 0  # its budget ran out: under the 50 evaluations the test needs
        for key in ("total", "content", "style", "tv", "style/conv1_1", "content/conv4_2", "elapsed_s",
                    "total_per_weight", "log10/content", "log10/style", "log10/total_per_weight"):
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == list(range(1, evaluations + 1)), key
        beta = float(child.data.params["loss.style_weight"])
        by_step = {key: {m.step: m.value for m in client.get_metric_history(run_id, key)}
                   for key in ("total", "total_per_weight", "style", "log10/style")}
        for step in (1, evaluations):  # the total per unit of alpha + beta; log10 companions for log axes
            assert by_step["total_per_weight"][step] == pytest.approx(by_step["total"][step] / (1 + beta), rel=1e-6)
            assert by_step["log10/style"][step] == pytest.approx(math.log10(by_step["style"][step]), rel=1e-6)
        paths = artifact_paths(client, run_id)
        # the UI's slider: one image at each step of a grid every run of the sweep shares, 0 to the last
        # (2 epochs of at most 9 evaluations and the final one, 19, rounded up to frame_every's 3)
        assert progress_steps(paths) == list(range(0, 22, 3))
        for expected in ("result/result.png", "result/triptych.png", "result/loss_curve.png", "result.png",
                         "optimisation.mp4", "config.yaml", "losses.csv", "run.json",
                         ".hydra/config.yaml", ".hydra/overrides.yaml", "inputs/content.png"):
            assert expected in paths, expected
        record = json.loads(open(client.download_artifacts(run_id, "run.json", str(tmp_path / run_id))).read())
        assert record["normalization"] == "reference" and record["torch_version"] and "weights_sha256" in record
        assert record["stopped"] == "budget"
        triptych = Image.open(client.download_artifacts(run_id, "result/triptych.png"))
        assert triptych.width > 2 * triptych.height  # three images side by side


def test_single_run_is_tracked_without_parent(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    for _ in range(2):  # a single run is never skipped: only sweeps resume
        done = nst(out, *SWEEP_JOB)
        assert done.returncode == 0, done.stderr[-3000:]
    first, second = runs(store_client(out), "run")
    assert first.info.status == second.info.status == "FINISHED"
    run = first
    assert tags.PARENT_TAG not in run.data.tags
    assert run.info.run_name.startswith("tubingen + starry_night · model=random image.size=32")  # images first
    # the store's paths are absolute, under the output root, whatever the working directory
    assert run.info.artifact_uri.startswith((out / "mlartifacts").as_uri())
    # the last lines say where the result is and where the MLflow UI (make ui) shows the run
    latest = first  # newest first: the run of the last command, `done`
    lines = done.stdout.strip().splitlines()[-2:]
    result = f"{latest.data.tags[tags.TAG_OUTPUT_DIR]}/result.png"
    evaluations = int(latest.data.metrics["evaluations"])
    assert lines[0].startswith(f"nst: result {result} ({evaluations} evaluations, budget spent before it converged, ")
    assert (done.stdout + done.stderr).count(result) == 1  # said once (the engine's own line is a debug one)
    assert lines[1] == (f"nst: MLflow run http://127.0.0.1:5000/#/experiments/{latest.info.experiment_id}/runs/"
                        f"{latest.info.run_id}?workflowType=machine_learning  (make ui serves it)")


def test_a_finished_run_has_the_measures_of_its_logged_pictures(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, *TRACKED_RUN)
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    (run,) = client.search_runs([client.get_experiment_by_name("nst").experiment_id],
                                f"tags.`{tags.TAG_ROLE}` = 'run'")
    assert run.info.status == "FINISHED"
    logged = run.data.metrics
    assert -1 <= logged["auto.ssim_content"] <= 1 and logged["auto.color_distance_style"] >= 0
    for name in ("auto.color_distance_style", "evaluations", "converged"):  # final values: one, at step 0
        assert [point.step for point in client.get_metric_history(run.info.run_id, name)] == [0], name
    pictures = {name: Image.open(client.download_artifacts(run.info.run_id, path, str(tmp_path)))
                for name, path in (("result", "result/result.png"), ("content", "inputs/content.png"),
                                   ("style", "inputs/style.png"))}
    again = measure(pictures["result"], pictures["content"], pictures["style"])
    assert again == pytest.approx({k: logged[k] for k in again}, abs=1e-6)


def test_tracked_run_records_every_style_and_mask(tmp_path, monkeypatch, calibrated):

    white = tmp_path / "white.png"
    Image.new("L", (10, 7), 255).save(white)
    out = tmp_path / "outputs"
    monkeypatch.setenv("NST_OUTPUT_DIR", str(out))
    cfg = make(*ENGINE_48, "tracking=local", "style=[starry_night,the_scream]", f"style_masks=[{white},null]",
               "style_blend=[3,1]", f"paths.output_dir={out}")
    inputs = prepare(cfg)
    assert inputs.input_files() == [inputs.content_path, *inputs.style_paths, white.resolve()]
    from nst.jobs.driver import run

    run(cfg, tmp_path / "job")
    record = __import__("json").loads((tmp_path / "job" / "run.json").read_text())
    assert record["style_blend"] == [0.75, 0.25] and len(record["style_images"]) == 2
    assert record["style_masks"][0].endswith("white.png") and record["style_masks"][1] is None
    client = store_client(out)
    experiment = client.get_experiment_by_name("nst")
    (found,) = client.search_runs([experiment.experiment_id])
    inputs_logged = {a.path for a in client.list_artifacts(found.info.run_id, "inputs")}
    assert {"inputs/style.png", "inputs/style_2.png", "inputs/mask_1.png"} <= inputs_logged
    assert "style_image/2" in found.data.metrics


@pytest.mark.slow  # a new MLflow store: 15-40 s on 2 cores
def test_tracked_run_logs_the_folders_video_progress_images_and_named_result(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, "hydra.run.dir=" + str(tmp_path / "run"), *FOLDER_RUN, "progress=false", "save_every=5",
               "output=named.png", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    (run,) = client.search_runs([client.get_experiment_by_name("nst").experiment_id])
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"optimisation.mp4", "named.png", "progress", "result"} <= top  # progress/ kept as a folder
    assert "progress/0005.png" in {a.path for a in client.list_artifacts(run.info.run_id, "progress")}
    assert "result/result.png" in {a.path for a in client.list_artifacts(run.info.run_id, "result")}


def test_a_store_failure_while_a_run_is_set_up_ends_it_failed(tmp_path, monkeypatch):
    """Everything after the run is created is inside one protected block (params, inputs, the recorder)."""
    from nst.jobs import driver
    from nst.tracking import recorder

    out = tmp_path / "outputs"
    cfg = compose_config(*TRACKED_RUN, f"paths.output_dir={out}")

    def refuse(self, inputs):
        raise TrackingError("the artifact folder is full")

    monkeypatch.setattr(recorder.RunRecorder, "log_inputs", refuse)
    with pytest.raises(TrackingError, match="the artifact folder is full"):
        driver.run(cfg, tmp_path / "run")
    (run,) = all_runs(out, None)
    assert run.info.status == "FAILED" and "the artifact folder is full" in run.data.tags[tags.TAG_FAILURE]


@pytest.mark.slow
def test_a_lock_held_30_s_during_a_run_is_waited_out_and_the_run_recorded(tmp_path):
    out = tmp_path / "outputs"
    run = start_nst(out, *LONG_RUN)
    wait_for(lambda: metrics_logged(out))
    holder = hold_lock(out / "mlflow.db", 30)
    _, stderr = run.communicate(timeout=600)
    holder.wait()
    assert run.returncode == 0, stderr[-3000:]
    (recorded,) = all_runs(out, None)
    assert recorded.info.status == "FINISHED"
    folder = Path(recorded.data.tags[tags.TAG_OUTPUT_DIR])
    rows = (folder / "losses.csv").read_text().splitlines()[1:]
    assert len(store_client(out).get_metric_history(recorded.info.run_id, "total")) == len(rows)
    # the records waited, the optimisation did not: no pause between evaluations near the lock's 30 s
    elapsed = [float(row.split(",")[-1]) for row in rows]
    assert max(b - a for a, b in zip(elapsed, elapsed[1:], strict=False)) < 10


def test_the_writer_keeps_every_write_after_a_refused_one_in_order():
    from nst.tracking.recorder import Writer

    done, writer = [], Writer()
    writer.submit(lambda: done.append(1))
    writer.submit(lambda: (_ for _ in ()).throw(TrackingError("locked")))
    writer.submit(lambda: done.append(3))
    refused = writer.close()
    assert done == [1] and len(refused) == 2
    for action in refused[1:]:
        action()
    assert done == [1, 3]
    broken = Writer()
    broken.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        broken.close()
