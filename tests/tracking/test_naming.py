"""A run's name in the MLflow UI (nst/tracking/naming.py): a sweep child's swept values, with the sweep's params;
a sweep's parent by what it is; two sweeps of the same keys told apart by what differs."""

import shutil

import pytest

from nst.tracking import naming, tags
from tests.helpers.overrides import SWEEP_JOB
from tests.helpers.store import runs, store_client


def test_runs_are_named_by_their_swept_values_with_sweep_params(tracked_sweep):
    out, _ = tracked_sweep
    client = store_client(out)
    experiment = client.get_experiment_by_name("nst")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens the runs table
    children = sorted(runs(client, "run"), key=lambda c: float(c.data.params["loss.style_weight"]))
    assert [c.info.run_name for c in children] == ["β=1 · α/β=1", "β=100 · α/β=0.01", "β=1e4 · α/β=1e-4"]
    assert [c.data.params["sweep.loss.style_weight"] for c in children] == ["1", "100", "1e4"]
    # the UI's scatter and parallel-coordinates plots have linear axes: log10 of a log-spaced sweep
    assert [c.data.params["sweep.log10_loss.style_weight"] for c in children] == ["0", "2", "4"]
    (parent,) = runs(client, "sweep")
    assert parent.info.run_name == "β · random 32 px · 2 epochs · tubingen + starry_night"
    assert {c.data.tags[tags.TAG_SWEEP_NAME] for c in children} == {parent.info.run_name}  # to group by
    assert parent.data.params["sweep.loss.style_weight"] == "1, 100, 1e4"
    description = parent.data.tags[tags.TAG_DESCRIPTION]
    assert "tubingen + starry_night" in description and "backbone random, 32 px, 2 epochs" in description
    assert "β (loss.style_weight) in 1, 100, 1e4" in description
    # a link on the parent's page to its report, within the UI's model-training view
    assert (f"(#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}/artifacts/sweep/report.html"
            "?workflowType=machine_learning)") in description
    # summary metrics on the parent's page
    metrics = parent.data.metrics
    assert metrics["sweep/jobs_finished"] == 3 and metrics["sweep/jobs_failed"] == 0  # their own chart section
    finals = [c.data.metrics["style"] for c in children]
    assert metrics["sweep/final_style_min"] == pytest.approx(min(finals))
    assert metrics["sweep/final_style_max"] == pytest.approx(max(finals))


def test_a_sweep_is_named_by_its_file_or_what_it_varies_leaving_out_what_varies():
    config = {"content": "tubingen", "style": "/data/starry_night.jpg", "model": {"name": "vgg16_hed"},
              "image": {"size": 128}, "epochs": 10}
    assert naming.sweep_name("ratio", config, ["loss.style_weight"]) == (
        "ratio · vgg16_hed 128 px · 10 epochs · tubingen + starry_night")
    assert naming.sweep_name(None, config, ["epochs", "image.size"]) == "epochs, size · vgg16_hed · tubingen + starry_night"
    assert naming.sweep_name(None, config, ["style"]) == "style · vgg16_hed 128 px · 10 epochs"


def test_what_differs_names_the_changed_settings():
    assert naming.what_differs({"epochs": "10", "seed": "0"}, {"epochs": "5", "seed": "0"}) == "epochs=10"
    assert naming.what_differs({"epochs": "10", "init": "noise"}, {"epochs": "5"}) == "epochs=10 · init=noise"
    assert naming.what_differs({"seed": "0"}, {"seed": "0"}) == ""


def test_a_second_sweep_of_the_same_keys_gets_names_that_tell_it_apart(tracked_sweep, tmp_path, nst):
    out = tmp_path / "outputs"
    shutil.copytree(tracked_sweep[0], out)
    for again in ([], ["tracking.resume=false"]):  # a different setting, then the same again (run, not reused)
        done = nst(out, "-m", *SWEEP_JOB, "loss.style_weight=1,100,1e4", "epochs=1", *again)
        assert done.returncode == 0, done.stderr[-3000:]
    client = store_client(out)
    first, second, third = sorted(runs(client, "sweep"), key=lambda r: r.info.start_time)
    assert second.info.run_name == "β · random 32 px · 1 epochs · tubingen + starry_night"  # it differs already
    assert third.info.run_name == "β · random 32 px · 1 epochs · tubingen + starry_night · #3"
    names = {parent.info.run_id: sorted(c.info.run_name for c in runs(client, "run")
                                        if c.data.tags.get(tags.PARENT_TAG) == parent.info.run_id)
             for parent in (first, second, third)}
    assert names[first.info.run_id] == ["β=1 · α/β=1", "β=100 · α/β=0.01", "β=1e4 · α/β=1e-4"]
    assert names[second.info.run_id] == ["β=1 · α/β=1 · epochs=1", "β=100 · α/β=0.01 · epochs=1",
                                         "β=1e4 · α/β=1e-4 · epochs=1"]
    assert len(names[third.info.run_id]) == 3 and all(name.endswith(" · #3") for name in names[third.info.run_id])
