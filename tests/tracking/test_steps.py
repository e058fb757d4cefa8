"""The step grid of progress images: every member of a sweep has an image at every step of the slider."""

import json

from PIL import Image

from nst.engine.optimization import OptimizerSettings
from nst.tracking import database, tags
from nst.tracking.steps import PROGRESS, StepGrid, align_steps
from nst.tracking.tags import TAG_IMAGE_STEPS
from tests.helpers.store import artifact_paths, runs, store_client


def test_the_grid_ends_at_the_schedules_planned_evaluations_rounded_up():
    # 20 epochs of L-BFGS max_iter 20: 25 evaluations each at most, and the final one
    assert OptimizerSettings("lbfgs", max_iter=20).planned_evaluations(20) == 501
    assert OptimizerSettings("adam", max_iter=5).planned_evaluations(3) == 16
    assert StepGrid.planned(10, 501) == StepGrid(10, 510)
    assert StepGrid.planned(10, 500) == StepGrid(10, 500)


def test_images_sit_on_the_grid_and_the_result_fills_it_to_the_end():
    grid = StepGrid(10, 100)
    assert grid.steps(1) == [0]  # the starting image
    assert [e for e in range(2, 101) if grid.steps(e)] == list(range(10, 100, 10))  # never the terminal step
    assert StepGrid(1, 5).steps(1) == [0, 1]
    # a run that converged after 89 evaluations: its last image at 80, its result at 90 and 100
    assert grid.after(80) == [90, 100]
    assert grid.after(None) == list(range(0, 101, 10))
    assert StepGrid.of({TAG_IMAGE_STEPS: grid.tag()}) == grid and StepGrid.of({}) is None


def _steps(client, run_id):
    return sorted(int(item.path.split("+step+")[1].split("+")[0]) for item in client.list_artifacts(run_id, "images")
                  if item.path.endswith(".png"))


def test_a_sweep_whose_schedules_differ_shows_every_result_to_the_longest(tmp_path):
    database.ensure_store(tmp_path / "mlflow.db", (tmp_path / "artifacts").as_uri())
    client = store_client(tmp_path)
    experiment = client.create_experiment("steps")
    runs = {}
    for name, terminal, colour in (("short", 20, "red"), ("long", 50, "blue"), ("failed", 20, "green")):
        run = client.create_run(experiment, run_name=name, tags={TAG_IMAGE_STEPS: StepGrid(10, terminal).tag()})
        for step in range(0, terminal + 1, 10):
            client.log_image(run.info.run_id, Image.new("RGB", (8, 8), "grey"), key=PROGRESS, step=step)
        client.log_image(run.info.run_id, Image.new("RGB", (8, 8), colour), artifact_file="result/result.png")
        client.set_terminated(run.info.run_id, "FAILED" if name == "failed" else "FINISHED")
        runs[name] = run.info.run_id
    align_steps(client, [client.get_run(run_id) for run_id in runs.values()])
    assert _steps(client, runs["short"]) == [0, 10, 20, 30, 40, 50]
    assert _steps(client, runs["long"]) == [0, 10, 20, 30, 40, 50]
    assert _steps(client, runs["failed"]) == [0, 10, 20]  # no result to show
    last = [item.path for item in client.list_artifacts(runs["short"], "images") if "+step+50+" in item.path
            and item.path.endswith(".png")]
    assert Image.open(client.download_artifacts(runs["short"], last[0], str(tmp_path))).getpixel((0, 0)) == (255, 0, 0)
    assert json.loads(client.get_run(runs["short"]).data.tags[TAG_IMAGE_STEPS])["terminal"] == 50


def test_the_last_step_shows_each_runs_result_and_the_first_its_start(tracked_sweep, tmp_path):
    out, _ = tracked_sweep
    client = store_client(out)
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
