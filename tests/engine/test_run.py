"""One run or a batch through the engine (nst/engine/run.py): the weights of blended styles steer the result; a
style layer whose units are all off at the start is revived, and one left stuck is reported."""

import json

import pandas as pd
import pytest
import torch

from nst.engine import run
from nst.engine.run import execute
from nst.engine.weights import load_backbone
from tests.helpers.backbones import switch_off
from tests.helpers.config import make, prepare
from tests.helpers.overrides import ENGINE_48, SCALES_64


@pytest.mark.slow  # 20-60 s: make test stays under 10 minutes on 2 cores
@pytest.mark.usefixtures("calibrated")
def test_blend_weights_move_each_style_loss_as_expected(tmp_path):
    finals = {}
    for blend in ("[0.9,0.1]", "[0.1,0.9]"):
        cfg = make(*ENGINE_48, "style=[starry_night,the_scream]", f"style_blend={blend}", "loss.style_weight=1e4",
                   "optimizer.max_iter=10")
        finals[blend] = execute(prepare(cfg), tmp_path / blend).optimization.final
    towards_first, towards_second = finals["[0.9,0.1]"], finals["[0.1,0.9]"]
    assert towards_first["style_image/1"] < towards_second["style_image/1"]
    assert towards_second["style_image/2"] < towards_first["style_image/2"]


def _dead_on(content: torch.Tensor, layer: str):
    """``load_backbone`` as nst.engine.run calls it, with every unit of ``layer`` off on ``content``."""
    def load(*args, **kwargs):
        backbone = load_backbone(*args, **kwargs)
        switch_off(backbone, layer, content)
        return backbone
    return load


# conv5_1 the only style layer, dead on the content (the start)
DEAD_CONV5_1 = [*SCALES_64, "epochs=3", "optimizer.max_iter=10", "model.calibration=none",
                "loss.style_layers=[conv5_1]", "loss.style_weight=100"]


def test_a_style_layer_dead_at_the_start_is_revived(tmp_path, monkeypatch):
    """Every unit of conv5_1 off on the starting image, so no gradient reaches it through the ReLU: revived,
    its term falls within the first evaluations and keeps falling."""
    inputs = prepare(make(*DEAD_CONV5_1))
    monkeypatch.setattr(run, "load_backbone", _dead_on(inputs.content, "conv5_1"))
    execute(inputs, tmp_path)
    term = pd.read_csv(tmp_path / "losses.csv")["style/conv5_1"]
    assert term.iloc[:10].min() < 0.9 * term.iloc[0]
    assert term.iloc[-1] < 0.5 * term.iloc[0] and len(term) > 20
    assert "stuck_layers" not in json.loads((tmp_path / "run.json").read_text())


def _records(layer_values: list[float], totals: list[float]) -> list[dict]:
    return [{"evaluation": i + 1, "total": total, "style/conv1_1": 1.0 / (i + 1), "style/conv5_1": value}
            for i, (value, total) in enumerate(zip(layer_values, totals, strict=True))]


def test_a_style_layer_that_stops_moving_while_the_loss_falls_is_reported_once(caplog):
    watch = run.StuckLayers(["conv1_1", "conv5_1"], window=5)
    falling = [10.0 * 0.9**i for i in range(12)]
    for record in _records([3.0] * 12, falling):
        watch(record, None)
    assert watch.found == {"conv5_1": 6}  # as soon as a whole window has passed
    assert sum("style/conv5_1 has stayed at 3" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("layer_values, totals", [([3.0] * 12, [10.0] * 12),  # nothing moves: no layer stands out
                                                  ([3.0 - 0.01 * i for i in range(12)], [10.0 * 0.9**i
                                                                                         for i in range(12)])],
                         ids=["loss flat", "layer moving"])
def test_a_layer_is_not_stuck_while_it_moves_or_the_loss_is_flat(layer_values, totals):
    watch = run.StuckLayers(["conv1_1", "conv5_1"], window=5)
    for record in _records(layer_values, totals):
        watch(record, None)
    assert watch.found == {}
