"""``sweep=pareto``: the Optuna search as a Hydra sweeper (nst.jobs.search), run end to end on the random
backbone at 32 px, and its space and settings checked before any work."""

from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path

import optuna
import pytest

from nst.compare import pareto, review
from nst.errors import ConfigError
from nst.jobs import search
from nst.tracking import store, tags
from tests.helpers.cli import one_line_error, start_nst
from tests.helpers.overrides import PAIR
from tests.helpers.store import all_runs, running_with_metrics, runs, store_client
from tests.helpers.waiting import wait_for

# a trial: 2 epochs of 3 L-BFGS iterations at 32 px (about a second)
TRIAL = [*PAIR, "model=random", "image.size=32", "epochs=2", "optimizer.max_iter=3", "progress=false"]
SEARCH = ["sweep=pareto", *TRIAL, "hydra.sweeper.startup_trials=3"]
OBJECTIVES = ("auto.ssim_content", "auto.gram_distance_style")


def trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / pareto.STUDY_FOLDER / pareto.TRIALS_CSV, newline="") as file:
        return list(csv.DictReader(file))


def sweep_dirs(out: Path) -> list[Path]:
    return sorted((out / "multiruns").iterdir())


def study(out: Path) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(search.default_storage(out))
    return optuna.load_study(study_name=summary.study_name, storage=search.default_storage(out))


def test_a_study_finds_a_front_that_no_trial_dominates(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, *SEARCH, "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    (parent,) = runs(client, "sweep")
    children = runs(client, "run")
    assert len(children) == 6 and {run.info.status for run in children} == {"FINISHED"}
    assert {run.data.tags[tags.PARENT_TAG] for run in children} == {parent.info.run_id}
    rows = trials(sweep_dirs(out)[0])
    assert [row["state"] for row in rows] == ["COMPLETE"] * 6
    # what Optuna was told is what each run logged
    by_id = {run.info.run_id: run for run in children}
    for row in rows:
        logged = by_id[row["run_id"]].data.metrics
        assert [float(row[name]) for name in OBJECTIVES] == [logged[name] for name in OBJECTIVES]
    points = [[float(row[name]) for name in OBJECTIVES] for row in rows]
    front = pareto.non_dominated(points, ["maximize", "minimize"])
    assert any(front)
    for on_front, (ssim, distance) in zip(front, points, strict=True):
        dominated = any(s >= ssim and d <= distance and (s, d) != (ssim, distance) for s, d in points)
        assert on_front == (not dominated)
    # Optuna's own front is the same trials
    assert {t.number for t in study(out).best_trials} == {i for i, keep in enumerate(front) if keep}
    # the children are named by their values, and the parent holds the study
    assert all("β=" in run.info.run_name for run in children)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/pareto.csv", "study/pareto.html"} <= artifacts
    importances = json.loads((sweep_dirs(out)[0] / pareto.STUDY_FOLDER / pareto.STUDY_JSON).read_text())["importances"]
    assert set(importances) == set(OBJECTIVES)


def test_running_the_command_again_adds_trials_and_redoes_none(tmp_path, nst):
    out = tmp_path / "outputs"
    first = nst(out, *SEARCH, "hydra.sweeper.n_trials=3")
    assert first.returncode == 0, first.stderr[-3000:]
    again = nst(out, *SEARCH, "hydra.sweeper.n_trials=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 trial(s) so far, 3 more" in again.stdout
    earlier, latest = (trials(folder) for folder in sweep_dirs(out))
    assert len(latest) == 6 and latest[:3] == earlier  # the first three kept as they were
    client = store_client(out)
    children = runs(client, "run")
    assert len(children) == 6  # three runs per command: nothing was run twice
    assert len({row["run_id"] for row in latest}) == 6
    # nst-review --pareto on the latest command reviews the front of the whole study
    points = [[float(row[name]) for name in OBJECTIVES] for row in latest]
    front = {row["run_id"] for row, keep in zip(latest, pareto.non_dominated(points, ["maximize", "minimize"]),
                                                 strict=True) if keep}
    parents = [run.info.run_id for run in sorted(runs(client, "sweep"), key=lambda run: -run.info.start_time)]
    assert store.study_parents(client, parents[0]) == parents  # the study's two commands
    assert set(review.select(client, "nst", ["latest"], pareto=True).ids) == front


def test_a_failed_trial_is_told_to_optuna_and_the_search_goes_on(tmp_path, nst):
    out = tmp_path / "outputs"
    # conv9_1 is no layer: the trials that choose it are refused, the others run
    done = nst(out, *SEARCH, "hydra.sweeper.n_trials=5", "hydra.sweeper.sampler=random",
               "loss.content_layers=choice([conv9_1],[conv4_2])")
    assert done.returncode == 1, done.stderr[-3000:]
    rows = trials(sweep_dirs(out)[0])
    states = [row["state"] for row in rows]
    assert len(rows) == 5 and "FAIL" in states and "COMPLETE" in states
    for row in rows:
        assert (row["state"] == "FAIL") == (row["params.loss.content_layers"] == "[conv9_1]")
        assert math.isnan(float(row[OBJECTIVES[0]])) == (row["state"] == "FAIL")
    statuses = sorted(run.info.status for run in runs(store_client(out), "run"))
    assert statuses == sorted("FAILED" if s == "FAIL" else "FINISHED" for s in states)
    assert "failed; the search goes on" in done.stderr


def test_an_untracked_search_still_gets_its_objectives(tmp_path, nst):
    out = tmp_path / "outputs"
    done = nst(out, *SEARCH, "hydra.sweeper.n_trials=2", "tracking=none")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = trials(sweep_dirs(out)[0])
    assert [row["state"] for row in rows] == ["COMPLETE", "COMPLETE"] and not any(row["run_id"] for row in rows)


@pytest.mark.parametrize("override, phrase", [
    ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials=0"),
    ("hydra.sweeper.sampler=grid", "one of tpe, nsga2, random"),
    ("loss.style_weight=tag(log, interval(0, 10))", "low > 0 on a log scale"),
    ("hydra.sweeper.objectives={auto.ssim_content:up,auto.gram_distance_style:minimize}",
     "each maximize or minimize"),
])
def test_bad_search_settings_are_refused_in_one_line_before_any_work(tmp_path, nst, override, phrase):
    out = tmp_path / "outputs"
    done = nst(out, *SEARCH, override)
    assert done.returncode == 2, done.stderr[-3000:]
    assert phrase in one_line_error(done.stderr)
    assert not (out / "multiruns").exists() or not any((out / "multiruns").rglob("result.png"))


def test_the_space_reads_hydras_sweep_syntax():
    space = search.parse_space({"loss.style_weight": "tag(log, interval(1e-2, 1e4))",
                                "loss.style_layers": "choice([conv1_1,conv2_1],[conv3_1])",
                                "epochs": "tag(int, interval(1, 5))", "seed": "range(0, 3)"})
    assert space["loss.style_weight"].distribution == optuna.distributions.FloatDistribution(1e-2, 1e4, log=True)
    assert space["loss.style_layers"].distribution.choices == ("[conv1_1,conv2_1]", "[conv3_1]")
    assert space["epochs"].distribution == optuna.distributions.IntDistribution(1, 5)
    assert space["seed"].distribution.choices == ("0", "1", "2")
    assert space["loss.style_weight"].override(0.5) == "loss.style_weight=0.5"
    assert space["loss.style_layers"].override("[conv3_1]") == "loss.style_layers=[conv3_1]"
    with pytest.raises(ConfigError, match="hydra.sweeper.params.epochs"):
        search.parse_space({"epochs": "interval(5, 1)"})


def test_the_same_command_names_the_same_study():
    space = search.parse_space({"loss.style_weight": "tag(log, interval(1e-2, 1e4))"})
    objectives = dict.fromkeys(OBJECTIVES, "maximize")
    name = search.study_name(["content=a", "style=b"], space, objectives, "tpe", 0)
    assert name == search.study_name(["style=b", "content=a"], space, objectives, "tpe", 0)
    assert name != search.study_name(["content=a", "style=c"], space, objectives, "tpe", 0)
    assert name != search.study_name(["content=a", "style=b"], space, objectives, "random", 0)
    file = {"loss.style_weight": "tag(log, interval(1e-2, 1e4))", "init": "choice(content,noise)", "seed": "range(3)"}
    assert search.split_arguments(["content=a", "loss.style_weight=1,10", "init=content"], file) == (
        ["content=a", "init=content"], {"loss.style_weight": "1,10", "seed": "range(3)"})


def test_trials_an_interrupted_command_left_running_are_asked_again_first(tmp_path):
    storage = search.default_storage(tmp_path)
    study = optuna.create_study(storage=storage, directions=["maximize", "minimize"])
    space = search.parse_space({"loss.style_weight": "tag(log, interval(1e-2, 1e4))", "init": "choice(content,noise)"})
    distributions = {key: dimension.distribution for key, dimension in space.items()}
    left = study.ask(distributions)  # launched when the command was interrupted
    done = study.ask(distributions)
    study.tell(done, [0.5, 0.5])
    search.retry_unfinished(study)
    assert study.trials[left.number].state == optuna.trial.TrialState.FAIL
    again = study.ask(distributions)
    assert again.params == left.params
    assert study.trials[done.number].state == optuna.trial.TrialState.COMPLETE


@pytest.mark.parametrize("launcher", [
    "batched",
    pytest.param("joblib", marks=pytest.mark.slow),  # worker processes: 20-30 s
])
def test_trials_go_through_the_configured_launcher(tmp_path, nst, nst_process, launcher):
    out = tmp_path / "outputs"
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    command = nst_process if launcher == "joblib" else nst  # joblib's workers outlive an in-process command
    # a fixed start and layers: the round's two trials are one batch of the batched launcher
    done = command(out, *SEARCH, f"hydra/launcher={launcher}", *extra, "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
               "init=content", "loss.content_layers=[conv4_2]", "loss.style_layers=[conv1_1,conv2_1]")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = trials(sweep_dirs(out)[0])
    by_id = {run.info.run_id: run for run in runs(store_client(out), "run")}
    assert [row["state"] for row in rows] == ["COMPLETE"] * 4 and set(by_id) == {row["run_id"] for row in rows}
    for row in rows:
        assert [float(row[name]) for name in OBJECTIVES] == [by_id[row["run_id"]].data.metrics[n] for n in OBJECTIVES]
    if launcher == "batched":
        assert {run.data.params.get("run.batch_size") for run in by_id.values()} == {"2"}


@pytest.mark.slow  # 30-60 s
def test_ctrl_c_mid_search_and_the_same_command_asks_for_the_interrupted_trial_again(tmp_path, nst_process):
    out = tmp_path / "outputs"
    out.mkdir()
    # trials that optimise for 20 s or so, so that the signal lands in one
    command = [*SEARCH, "image.size=64", "epochs=40", "optimizer.convergence_tolerance=null",
               "hydra.sweeper.n_trials=2"]
    process = start_nst(out, *command)
    victim = wait_for(lambda: running_with_metrics(out, min_step=5))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert all(run.info.status != "RUNNING" for run in all_runs(out) + all_runs(out, "sweep"))
    interrupted = trials(sweep_dirs(out)[0])
    assert [row["state"] for row in interrupted] == ["FAIL", "WAITING"]  # failed, and queued to be asked again

    again = nst_process(out, *command[:-1], "hydra.sweeper.n_trials=1", timeout=600)  # the same study
    assert again.returncode == 0, again.stderr[-2000:]
    rows = trials(sweep_dirs(out)[-1])
    params = [key for key in rows[0] if key.startswith("params.")]
    assert rows[1]["state"] == "COMPLETE" and [rows[1][k] for k in params] == [rows[0][k] for k in params]
    assert store_client(out).get_run(victim.info.run_id).info.status == "KILLED"
