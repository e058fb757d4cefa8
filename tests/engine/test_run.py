"""One run or a batch through the engine (nst/engine/run.py): the weights of blended styles steer the result."""

import pytest

from nst.engine.run import execute
from tests.helpers.config import make, prepare
from tests.helpers.overrides import ENGINE_48


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
