"""Coarse-to-fine: each scale starts from the upsampled previous result and the run ends at image.size."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nst.config import scale_schedule, validate
from nst.errors import ConfigError
from nst.jobs import prepare
from nst.run import execute

from .test_config import make

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
    assert outcome.result.image.shape[-2:] == (48, 64)


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
