"""Colour preservation (nst/engine/color.py): luminance-only transfer and colour histogram matching,
each with the measurable effect it promises (Gatys et al. 2017)."""

import pytest
import torch

from nst.engine.color import (
    HISTOGRAM_MODES,
    color_statistics,
    luminance,
    match_histogram,
    match_luminance,
    rgb_to_yiq,
)
from nst.engine.run import execute
from tests.helpers.config import make, prepare
from tests.helpers.images import smooth_image
from tests.helpers.overrides import ENGINE_48


@pytest.mark.usefixtures("calibrated")
def test_luminance_only_transfer_keeps_the_content_chroma(tmp_path):
    inputs = prepare(make(*ENGINE_48, "color_preservation=luminance"))
    seen = []
    outcome = execute(inputs, tmp_path, callbacks=[lambda record, image: seen.append(image)])
    # the network saw grey images (luminance in all three channels) ...
    torch.testing.assert_close(seen[0][:, 0], seen[0][:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(seen[0][:, 1], seen[0][:, 2], atol=1e-5, rtol=0)
    # ... and the result carries the content's chroma (I, Q of YIQ) exactly, with a new luminance
    result = outcome.optimization.image
    torch.testing.assert_close(rgb_to_yiq(result)[:, 1:], rgb_to_yiq(inputs.content)[:, 1:], atol=1e-5, rtol=0)
    assert (luminance(result) - luminance(inputs.content)).abs().max() > 1e-3
    # without it the chroma moves
    plain = execute(prepare(make(*ENGINE_48)), tmp_path / "plain").optimization.image
    assert (rgb_to_yiq(plain)[:, 1:] - rgb_to_yiq(inputs.content)[:, 1:]).abs().max() > 1e-2


def test_style_luminance_is_matched_to_the_content_mean_and_deviation():
    content, style = smooth_image(32, 40, 1), smooth_image(24, 24, 2) * 0.3 + 0.6
    matched = match_luminance(style, content)
    assert torch.equal(matched[:, 0], matched[:, 2])
    y = luminance(content)
    assert float(matched[:, :1].mean()) == pytest.approx(float(y.mean()), abs=1e-5)
    assert float(matched[:, :1].std()) == pytest.approx(float(y.std()), rel=1e-4)


@pytest.mark.parametrize("mode", HISTOGRAM_MODES)
def test_histogram_matching_gives_the_style_the_content_colour_mean_and_covariance(mode):
    content, style = smooth_image(32, 40, 3), smooth_image(40, 32, 4) ** 2
    matched = match_histogram(style, content, mode)
    mean_m, cov_m = color_statistics(matched)
    mean_c, cov_c = color_statistics(content)
    torch.testing.assert_close(mean_m, mean_c, atol=1e-5, rtol=0)
    torch.testing.assert_close(cov_m, cov_c, atol=2e-5, rtol=1e-3)
    _, cov_s = color_statistics(style)
    assert (cov_s - cov_c).abs().max() > 1e-2  # there was something to match
    # the style's structure survives: its luminance pattern correlates with the recoloured one
    a, b = luminance(style).flatten(), luminance(matched).flatten()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9


@pytest.mark.usefixtures("calibrated")
def test_histogram_mode_runs_on_the_recoloured_style(tmp_path):
    cfg = make(*ENGINE_48, "color_preservation=histogram", "color_histogram=symmetric")
    inputs = prepare(cfg)
    seen = []
    execute(inputs, tmp_path, callbacks=[lambda record, image: seen.append(record)])
    assert seen and all(torch.isfinite(torch.tensor(r["total"])) for r in seen)
