"""A run's name in the MLflow UI (nst/tracking/naming.py): a sweep child's swept values, with the sweep's params."""

import pytest

from nst.tracking import tags
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
