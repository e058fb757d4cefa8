"""MLflow tracking and Hydra multirun sweeps through the real CLI (subprocess), random backbone."""

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from mlflow import MlflowClient
from PIL import Image

from nst.compare import sweep_report
from nst.figures import grid as pictures
from nst.tracking import store, tags

TINY = ["content=tubingen", "style=starry_night", "model=random", "image.size=32", "epochs=2",
        "optimizer.max_iter=4", "progress=false", "frame_every=3"]


def client_for(out):
    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def runs(client, role, status=None):
    experiment = client.get_experiment_by_name("nst")
    found = client.search_runs([experiment.experiment_id], f"tags.`{tags.TAG_ROLE}` = '{role}'", max_results=1000)
    return [r for r in found if status is None or r.info.status == status]


def artifact_paths(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def progress_steps(paths) -> list[int]:
    """The steps of a run's progress images; MLflow names them images/progress+step+<step>+<time>+<id>.png."""
    return sorted(int(p.split("+step+")[1].split("+")[0]) for p in paths
                  if p.startswith("images/progress") and p.endswith(".png"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, nst):
    out = tmp_path_factory.mktemp("sweep") / "outputs"
    out.mkdir()
    done = nst(out, "-m", *TINY, "loss.style_weight=1,100,1e4")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_multirun_creates_parent_and_children_with_everything(sweep, tmp_path):
    out, _ = sweep
    client = client_for(out)
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
        for key in ("total", "content", "style", "tv", "style/conv1_1", "content/conv4_2", "elapsed_s"):
            history = client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == list(range(1, evaluations + 1)), key
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
        triptych = Image.open(client.download_artifacts(run_id, "result/triptych.png"))
        assert triptych.width > 2 * triptych.height  # three images side by side


def test_the_last_step_shows_each_runs_result_and_the_first_its_start(sweep, tmp_path):
    out, _ = sweep
    client = client_for(out)
    for child in runs(client, "run"):
        run_id = child.info.run_id
        images = {int(p.split("+step+")[1].split("+")[0]): p for p in artifact_paths(client, run_id, "images")
                  if p.endswith(".png")}
        evaluations = int(child.data.metrics["evaluations"])
        assert evaluations < 21  # the run ended before its planned budget: its result fills the steps after it

        def pixels(path, name, run_id=run_id):
            return Image.open(client.download_artifacts(run_id, path, str(tmp_path / run_id / name))).tobytes()

        result = pixels("result/result.png", "result")
        after = [step for step in images if step > evaluations // 3 * 3]
        assert after and all(pixels(images[step], str(step)) == result for step in after)
        assert pixels(images[0], "0") == pixels("inputs/content.png", "content")  # init=content: the start
        assert json.loads(child.data.tags[tags.TAG_IMAGE_STEPS]) == {"every": 3, "terminal": 21}


def test_a_sweep_says_where_its_grid_and_parent_are(sweep):
    out, done = sweep
    (parent,) = runs(client_for(out), "sweep")
    lines = done.stdout.strip().splitlines()[-2:]
    assert lines[0] == f"nst: sweep grid {parent.data.tags[tags.TAG_SWEEP_DIR]}/grid.png"
    assert lines[1] == (f"nst: MLflow sweep http://127.0.0.1:5000/#/experiments/{parent.info.experiment_id}/runs/"
                        f"{parent.info.run_id}?workflowType=machine_learning  (make ui serves it)")


def test_runs_are_named_by_their_swept_values_with_sweep_params(sweep):
    out, _ = sweep
    client = client_for(out)
    experiment = client.get_experiment_by_name("nst")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens the runs table
    children = sorted(runs(client, "run"), key=lambda c: float(c.data.params["loss.style_weight"]))
    assert [c.info.run_name for c in children] == ["β=1 · α/β=1", "β=100 · α/β=0.01", "β=1e4 · α/β=1e-4"]
    assert [c.data.params["sweep.loss.style_weight"] for c in children] == ["1", "100", "1e4"]
    # the UI's scatter and parallel-coordinates plots have linear axes: log10 of a log-spaced sweep
    assert [c.data.params["sweep.log10_loss.style_weight"] for c in children] == ["0", "2", "4"]
    (parent,) = runs(client, "sweep")
    assert parent.data.params["sweep.loss.style_weight"] == "1, 100, 1e4"
    description = parent.data.tags[tags.TAG_DESCRIPTION]
    assert "tubingen + starry_night" in description and "backbone random, 32 px, 2 epochs" in description
    assert "β (loss.style_weight) in 1, 100, 1e4" in description
    # a link on the parent's page to its report, within the UI's model-training view
    assert (f"(#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}/artifacts/sweep/report.html"
            "?workflowType=machine_learning)") in description
    # summary metrics on the parent's page
    metrics = parent.data.metrics
    assert metrics["jobs_finished"] == 3 and metrics["jobs_failed"] == 0
    finals = [c.data.metrics["style"] for c in children]
    assert metrics["final_style_min"] == pytest.approx(min(finals)) and metrics["final_style_max"] == pytest.approx(max(finals))


@pytest.mark.slow
def test_an_older_experiment_gets_the_model_training_tag_on_first_use(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    from nst.tracking import database

    database.ensure_store(out / "mlflow.db", (out / "mlartifacts").as_uri())
    client_for(out).create_experiment("nst")  # as an nst before this tag made it
    key, kind = tags.EXPERIMENT_KIND
    assert key not in client_for(out).get_experiment_by_name("nst").tags
    assert nst(out, *TINY).returncode == 0
    assert client_for(out).get_experiment_by_name("nst").tags[key] == kind


def test_parent_holds_grid_table_and_plot(sweep, tmp_path):
    out, done = sweep
    client = client_for(out)
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


def test_rerun_skips_finished_jobs(sweep, nst):
    out, _ = sweep
    done = nst(out, "-m", *TINY, "loss.style_weight=1,100,1e4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("skipped, identical config already FINISHED") == 3
    assert (done.stdout + done.stderr).count("already FINISHED") == 3  # once each, not logged again on the console
    client = client_for(out)
    assert len(runs(client, "run", "FINISHED")) == 3
    # the new parent still reports all three jobs, reused from the first sweep
    newest = store.latest_sweep(client, "nst")
    table = sweep_report.sweep_table(client, newest)
    assert len(table) == 3 and table["reused"].all()


@pytest.mark.slow  # 20-60 s: make test stays under 10 minutes on 2 cores
def test_report_prints_one_row_per_run(sweep):
    out, _ = sweep
    env = {**os.environ, "NST_OUTPUT_DIR": str(out)}
    done = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--sweep", "latest", "--format", "csv"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 3
    assert sorted(float(r["loss.style_weight"]) for r in rows) == [1.0, 100.0, 1e4]
    assert all(float(r["final_total"]) > 0 and float(r["final_content"]) >= 0 for r in rows)
    markdown = subprocess.run([sys.executable, "-m", "nst.cli.nst_report"], capture_output=True, text=True,
                              env=env, timeout=120)
    assert markdown.returncode == 0 and markdown.stdout.startswith("| run_id")


def test_report_rebuilds_grid_from_mlflow_alone(sweep, tmp_path):
    out, _ = sweep
    first = sorted(runs(client_for(out), "sweep"), key=lambda r: r.info.start_time)[0].info.run_id
    env = {**os.environ, "NST_OUTPUT_DIR": str(out)}
    done = subprocess.run([sys.executable, "-m", "nst.cli.nst_report", "--sweep", first, "--rebuild",
                           str(tmp_path / "rebuilt")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "rebuilt" / "grid.png").size[0] > 4 * pictures.TILE
    assert (tmp_path / "rebuilt" / "losses_vs_loss_style_weight.png").is_file()


@pytest.mark.slow  # 14-21 s: make test stays under 10 minutes
def test_failed_job_is_failed_and_runs_again(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    args = ["-m", *TINY, "optimizer=adam", "optimizer.lr=0.01,1e30"]
    first = nst(out, *args)
    assert first.returncode == 1, first.stderr[-3000:]  # the sweep ran both jobs, one failed
    assert "1 of 2 jobs did not finish" in first.stderr
    client = client_for(out)
    failed = runs(client, "run", "FAILED")
    assert len(failed) == 1 and "non-finite" in failed[0].data.tags[tags.TAG_FAILURE]
    assert "last_finite.png" in artifact_paths(client, failed[0].info.run_id)
    assert runs(client, "sweep")[0].info.status == "FINISHED"

    second = nst(out, *args)
    assert second.returncode == 1
    assert second.stdout.count("skipped, identical config already FINISHED") == 1
    assert len(runs(client, "run", "FAILED")) == 2 and len(runs(client, "run", "FINISHED")) == 1


@pytest.mark.slow  # 14-21 s: make test stays under 10 minutes
def test_joblib_workers_lose_no_run(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY,
               "loss.style_weight=1,2,3,4")
    assert done.returncode == 0, done.stderr[-3000:]
    client = client_for(out)
    children = runs(client, "run")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    parent = runs(client, "sweep")[0].info.run_id
    assert {c.data.tags[tags.PARENT_TAG] for c in children} == {parent}
    assert sorted(float(c.data.params["loss.style_weight"]) for c in children) == [1, 2, 3, 4]
    assert "database is locked" not in done.stderr


def test_single_run_is_tracked_without_parent(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    for _ in range(2):  # a single run is never skipped: only sweeps resume
        done = nst(out, *TINY)
        assert done.returncode == 0, done.stderr[-3000:]
    first, second = runs(client_for(out), "run")
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
    assert lines[0].startswith(f"nst: result {result} ({evaluations} evaluations, ")
    assert (done.stdout + done.stderr).count(result) == 1  # said once (the engine's own line is a debug one)
    assert lines[1] == (f"nst: MLflow run http://127.0.0.1:5000/#/experiments/{latest.info.experiment_id}/runs/"
                        f"{latest.info.run_id}?workflowType=machine_learning  (make ui serves it)")


def test_bad_input_leaves_a_failed_run_not_a_running_one(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, *TINY, "content=" + str(tmp_path / "nope.png"))
    assert done.returncode == 2 and "nope.png" in done.stderr
    (run,) = runs(client_for(out), "run")
    assert run.info.status == "FAILED" and "nope.png" in run.data.tags[tags.TAG_FAILURE]


def test_sweep_files_compose_and_stay_overridable():
    from hydra import compose, initialize_config_dir

    from nst.cli.nst_app import CONFIG_DIR

    expected = {"ratio": ("loss.style_weight", "1e-2,1e-1,1,10,100,1e4"),
                "learning_rate": ("optimizer.lr", "0.05,0.1,0.2,0.3,0.5,1.0"),
                "epochs": ("epochs", "5,10,20,40"),
                "style_layers": ("loss.style_layers", None), "content_layer": ("loss.content_layers", None),
                "examples": ("+pair", None)}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for name, (key, values) in expected.items():
            cfg = compose("config", overrides=[f"sweep={name}", "content=a", "style=b"],
                          return_hydra_config=True)
            params = cfg.hydra.sweeper.params
            assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
            assert key in params, name
            if values:
                assert params[key] == values
        layers = compose("config", overrides=["sweep=style_layers", "content=a", "style=b"],
                         return_hydra_config=True).hydra.sweeper.params["loss.style_layers"]
        assert layers.count("],[") == 4 and layers.startswith("[conv1_1]")


@pytest.mark.slow  # 14-21 s: make test stays under 10 minutes
def test_sweep_file_values_overridable_from_shell(tmp_path, nst):
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, "sweep=ratio", *TINY, "loss.style_weight=1,2")
    assert done.returncode == 0, done.stderr[-3000:]
    children = runs(client_for(out), "run")
    assert sorted(float(c.data.params["loss.style_weight"]) for c in children) == [1.0, 2.0]
    assert json.loads(children[0].data.tags[tags.TAG_OVERRIDES])


@pytest.mark.slow  # 14-21 s: make test stays under 10 minutes
def test_swept_inputs_give_one_row_per_job(tmp_path, nst):
    """Sweeping the images (make examples): each row is that job's content | style | result."""
    out = tmp_path / "outputs"
    out.mkdir()
    done = nst(out, "-m", *TINY, "style=starry_night,wave")
    assert done.returncode == 0, done.stderr[-3000:]
    client = client_for(out)
    parent = runs(client, "sweep")[0].info.run_id
    grid = Image.open(client.download_artifacts(parent, "sweep/grid.png", str(tmp_path)))
    top, height = pictures.TITLE, pictures.TILE * 3 // 4  # tiles as high as the 4:3 results
    assert grid.size == (3 * (pictures.TILE + 6) + 6, top + 2 * (height + 28 + 6) + 6)
    # the second row's style tile is the wave, not the first job's starry night
    row_two = grid.crop((pictures.TILE + 12, top + height + 40, 2 * pictures.TILE + 12, top + 2 * height + 40))
    row_one = grid.crop((pictures.TILE + 12, top + 6, 2 * pictures.TILE + 12, top + height + 6))
    assert list(row_one.getdata()) != list(row_two.getdata())


def test_a_sweep_with_no_recorded_run_still_summarises(tmp_path):
    """Every job failed before reaching MLflow (an unreachable server): an empty table, not a crash."""
    client = client_for(tmp_path)
    experiment = client.create_experiment("empty")
    parent = client.create_run(experiment, tags={tags.TAG_ROLE: "sweep"}).info.run_id
    summary = sweep_report.summarise_sweep(client, parent, tmp_path / "summary", log_to_parent=False)
    assert summary.table.empty and "status" in summary.table.columns
    assert (tmp_path / "summary" / "summary.csv").read_text().startswith("job,run_id,status")
