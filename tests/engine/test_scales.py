"""Coarse-to-fine (nst/engine/scales.py): each scale starts from the upsampled previous result and the run
ends at image.size."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nst.engine.run import execute
from nst.engine.schedule import coarse_to_fine
from nst.jobs.config import parse, scale_schedule
from tests.helpers.config import make, prepare
from tests.helpers.overrides import SCALES_64

pytestmark = pytest.mark.usefixtures("calibrated")  # each test runs the engine


def test_each_scale_starts_from_the_upsampled_previous_result(tmp_path):
    cfg = make(*SCALES_64, "image.scales=[32,48,64]", "image.scale_epochs=[2,1,1]")
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
    cfg = make(*SCALES_64, "epochs=1")
    assert scale_schedule(cfg) == [(64, 1)]
    execute(prepare(cfg), tmp_path)
    assert "scale" not in pd.read_csv(tmp_path / "losses.csv").columns


def test_image_scales_auto_is_the_derived_schedule_and_runs(tmp_path):
    cfg = make("model=random", "tracking=none", "progress=false", "optimizer.max_iter=2", "image.size=181",
               "image.scales=auto", "epochs=8")
    assert scale_schedule(cfg) == coarse_to_fine(181, 8) == [(128, 2), (181, 8)]
    spec = parse(cfg)
    assert spec.shared.scales == (128, 181) and spec.member.scale_epochs == (2, 8)
    execute(prepare(make("model=random", "tracking=none", "progress=false", "optimizer.max_iter=1",
                         "image.size=181", "image.scales=auto", "epochs=2")), tmp_path)
    assert list(dict.fromkeys(pd.read_csv(tmp_path / "losses.csv")["scale"])) == [128, 181]
