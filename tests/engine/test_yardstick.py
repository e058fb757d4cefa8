"""The style yardstick (nst/engine/yardstick.py): the same number for the same image whatever the run's own
layers, pooling and calibration; 0 for the style itself; lower after a run that took the style."""

import json

import pytest

from nst.engine import reuse, yardstick
from nst.engine.run import execute
from nst.images import measures
from tests.helpers.config import make, prepare
from tests.helpers.overrides import ENGINE_48

pytestmark = pytest.mark.usefixtures("calibrated")


def test_a_run_records_every_automatic_measure_and_took_style(tmp_path):
    outcome = execute(prepare(make(*ENGINE_48, "loss.style_weight=1e4", "optimizer.max_iter=10")), tmp_path)
    recorded = json.loads((tmp_path / "run.json").read_text())["measures"]
    assert set(recorded) == {m.name for m in measures.EVERY}
    inputs = prepare(make(*ENGINE_48))
    at_start = yardstick.measure(inputs, outcome.backbone, inputs.content)[yardstick.METRIC]
    assert recorded[yardstick.METRIC] < at_start  # the run moved the Grams towards the style's


def test_the_yardstick_does_not_depend_on_the_runs_own_settings(tmp_path):
    default = prepare(make(*ENGINE_48))
    outcome = execute(default, tmp_path / "default")
    assert yardstick.backbone_for(default, outcome.backbone) is outcome.backbone  # its layers, pooled and scaled so
    image = outcome.optimization.image
    expected = yardstick.measure(default, outcome.backbone, image)[yardstick.METRIC]
    for overrides in (["loss.style_layers=[conv1_1]", "loss.content_layers=[conv2_2]"], ["model.pooling=avg"],
                      ["model.calibration=none"]):
        reuse.forget()
        other = prepare(make(*ENGINE_48, *overrides))
        run_backbone = execute(other, tmp_path / "-".join(overrides)).backbone
        assert yardstick.backbone_for(other, run_backbone) is not run_backbone
        assert yardstick.measure(other, run_backbone, image)[yardstick.METRIC] == pytest.approx(expected, rel=1e-5)
        assert reuse.backbones.value.extractor is run_backbone.extractor  # still kept for the sweep's next job


def test_the_style_is_at_distance_zero_from_itself(tmp_path):
    inputs = prepare(make(*ENGINE_48))
    backbone = yardstick.backbone_for(inputs, execute(inputs, tmp_path).backbone)
    style = yardstick.grams(backbone, inputs.style)
    assert yardstick.gram_distance(backbone, inputs.style, style) == 0
    assert yardstick.gram_distance(backbone, inputs.content, style) > 0.1
