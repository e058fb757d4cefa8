"""Coarse-to-fine: each scale starts from the upsampled previous result and the run ends at image.size."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nst.engine.inputs import load_inputs
from nst.engine.run import execute
from nst.engine.schedule import COARSE_SHARE, auto_scales, coarse_to_fine
from nst.errors import ConfigError
from nst.jobs.config import parse, scale_schedule, validate

from .test_config import make


def prepare(cfg):
    return load_inputs(parse(cfg))

TINY = ["model=random", "tracking=none", "progress=false", "optimizer.max_iter=3", "image.size=64"]


def test_each_scale_starts_from_the_upsampled_previous_result(tmp_path):
    cfg = make(*TINY, "image.scales=[32,48,64]", "image.scale_epochs=[2,1,1]")
    seen = []
    outcome = execute(prepare(cfg), tmp_path, callbacks=[lambda record, image: seen.append((record, image))])
    history = pd.read_csv(tmp_path / "losses.csv")
    assert list(history["evaluation"]) == list(range(1, len(history) + 1))  # one continuous numbering
    assert history["elapsed_s"].is_monotonic_increasing
    assert list(dict.fromkeys(history["scale"])) == [32, 48, 64]
    for previous, scale in ((32, 48), (48, 64)):
        last = [image for record, image in seen if record["scale"] == previous][-1]
        first = next(image for record, image in seen if record["scale"] == scale)
        assert first.shape[-1] == scale and last.shape[-1] == previous
        expected = F.interpolate(last, size=first.shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(first, expected, atol=1e-4, rtol=0)
    # 2 epochs at the coarsest scale, then one at each of the others
    epochs = history.groupby("scale")["epoch"].max().to_dict()
    assert epochs == {32: 2, 48: 1, 64: 1}
    assert Image.open(tmp_path / "result.png").size == (64, 48)
    assert outcome.optimization.image.shape[-2:] == (48, 64)


def test_without_scales_there_is_one_scale_and_no_scale_column(tmp_path):
    cfg = make(*TINY, "epochs=1")
    assert scale_schedule(cfg) == [(64, 1)]
    execute(prepare(cfg), tmp_path)
    assert "scale" not in pd.read_csv(tmp_path / "losses.csv").columns


@pytest.mark.parametrize("override, key", [
    ("image.scales=[64,32]", "image.scales"),
    ("image.scales=[32,48]", "image.scales"),  # must end at image.size
    ("image.scales=[8,64]", "image.scales"),
    ("image.scale_epochs=[1,2,3]", "image.scale_epochs"),
])
def test_bad_schedules_name_the_key(override, key):
    extra = [] if override.startswith("image.scales") else ["image.scales=[32,64]"]
    with pytest.raises(ConfigError) as info:
        validate(make(*TINY, override, *extra))
    assert info.value.key == key


def test_a_coarse_scale_too_small_for_the_deepest_layer_is_refused_before_work():
    with pytest.raises(ConfigError, match="at least 16 px"):
        prepare(make(*TINY, "image.scales=[16,64]"))


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


def test_image_scales_auto_is_the_derived_schedule_and_runs(tmp_path):
    cfg = make("model=random", "tracking=none", "progress=false", "optimizer.max_iter=2", "image.size=181",
               "image.scales=auto", "epochs=8")
    assert scale_schedule(cfg) == coarse_to_fine(181, 8) == [(128, 2), (181, 8)]
    spec = parse(cfg)
    assert spec.shared.scales == (128, 181) and spec.member.scale_epochs == (2, 8)
    execute(prepare(make("model=random", "tracking=none", "progress=false", "optimizer.max_iter=1",
                         "image.size=181", "image.scales=auto", "epochs=2")), tmp_path)
    assert list(dict.fromkeys(pd.read_csv(tmp_path / "losses.csv")["scale"])) == [128, 181]


def test_auto_scales_take_no_epochs_list():
    with pytest.raises(ConfigError) as info:
        validate(make(*TINY, "image.scales=auto", "image.scale_epochs=[1,2]"))
    assert info.value.key == "image.scale_epochs" and "auto" in str(info.value)
