"""image.scales=auto (nst/engine/schedule.py): long sides from 128 px up by sqrt(2), the coarse scales
costing an eighth of the final one's budget."""

import pytest

from nst.engine.schedule import COARSE_SHARE, auto_scales, coarse_to_fine


def test_auto_scales_go_up_from_128_px_by_root_two():
    assert auto_scales(512) == (128, 181, 256, 362, 512)
    assert auto_scales(256) == (128, 181, 256)
    assert auto_scales(128) == (128,) and auto_scales(64) == (64,)


@pytest.mark.parametrize("size, budget", [(256, 20), (512, 20), (512, 1000), (1024, 40)])
def test_coarse_scales_cost_an_eighth_of_the_final_budget(size, budget):
    planned = coarse_to_fine(size, budget)
    assert planned[-1] == (size, budget)  # the final scale keeps the whole budget
    assert [side for side, _ in planned] == list(auto_scales(size))
    coarse_cost = sum(n * (side / size) ** 2 for side, n in planned[:-1])  # in final-size evaluations
    assert all(1 <= n <= budget for _, n in planned)
    assert coarse_cost == pytest.approx(budget * COARSE_SHARE, rel=0.35)  # rounding to whole epochs
