"""Perceptual controls (Gatys et al. 2017): each has the measurable effect it promises."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from nst.engine.color import (
    HISTOGRAM_MODES,
    color_statistics,
    luminance,
    match_histogram,
    match_luminance,
    rgb_to_yiq,
)
from nst.engine.inputs import load_inputs
from nst.engine.losses import StyleTransferLoss, gram, guided_gram
from nst.engine.run import execute
from nst.engine.weights import load_backbone
from nst.errors import ConfigError, ImageError, NSTError
from nst.jobs.config import parse

from .conftest import smooth_image
from .test_config import CONFIG_DIR, make  # importing nst.cli there registers ${nst_root:}


def prepare(cfg):
    return load_inputs(parse(cfg))

TINY = ["model=random", "tracking=none", "progress=false", "optimizer.max_iter=4", "image.size=48", "epochs=1"]
STYLE = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]


# --- colour preservation -------------------------------------------------------------------------

def test_luminance_only_transfer_keeps_the_content_chroma(tmp_path):
    inputs = prepare(make(*TINY, "color_preservation=luminance"))
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
    plain = execute(prepare(make(*TINY)), tmp_path / "plain").optimization.image
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


def test_histogram_mode_runs_on_the_recoloured_style(tmp_path):
    cfg = make(*TINY, "color_preservation=histogram", "color_histogram=symmetric")
    inputs = prepare(cfg)
    seen = []
    execute(inputs, tmp_path, callbacks=[lambda record, image: seen.append(record)])
    assert seen and all(torch.isfinite(torch.tensor(r["total"])) for r in seen)


# --- several style images ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_loss_parts():
    torch.manual_seed(0)
    backbone = load_backbone("random", ["conv4_2", *STYLE])
    content = smooth_image(32, 32, 5)
    styles = [smooth_image(32, 32, 6), smooth_image(32, 32, 7) ** 3]
    return backbone, content, styles


def _loss(parts, **kwargs):
    backbone, content, styles = parts
    return StyleTransferLoss(backbone.extractor, content, kwargs.pop("styles", styles),
                             content_layers={"conv4_2": 1.0}, style_layers=dict.fromkeys(STYLE, 1.0), **kwargs)


def test_blended_style_loss_is_the_weighted_sum_of_each_style_loss(tiny_loss_parts):
    _, _, styles = tiny_loss_parts
    image = smooth_image(32, 32, 8)
    alone = [_loss(tiny_loss_parts, styles=[s])(image).style for s in styles]
    blended = _loss(tiny_loss_parts, style_blend=[0.7, 0.3])(image)
    torch.testing.assert_close(blended.style, 0.7 * alone[0] + 0.3 * alone[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(blended.style_images["1"], alone[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(blended.style_images["2"], alone[1], rtol=1e-5, atol=0)
    assert "style_image/2" in blended.scalars()


@pytest.mark.slow  # 20-60 s: make test stays under 10 minutes on 2 cores
def test_blend_weights_move_each_style_loss_as_expected(tmp_path):
    finals = {}
    for blend in ("[0.9,0.1]", "[0.1,0.9]"):
        cfg = make(*TINY, "style=[starry_night,the_scream]", f"style_blend={blend}", "loss.style_weight=1e4",
                   "optimizer.max_iter=10")
        finals[blend] = execute(prepare(cfg), tmp_path / blend).optimization.final
    towards_first, towards_second = finals["[0.9,0.1]"], finals["[0.1,0.9]"]
    assert towards_first["style_image/1"] < towards_second["style_image/1"]
    assert towards_second["style_image/2"] < towards_first["style_image/2"]


def test_style_blend_is_checked_before_any_work():
    with pytest.raises(ConfigError, match="style_blend"):
        prepare(make(*TINY, "style=[starry_night,the_scream]", "style_blend=[1]"))
    with pytest.raises(ConfigError, match="style_blend"):
        prepare(make(*TINY, "style=[starry_night,the_scream]", "style_blend=[1,-1]"))
    with pytest.raises(ConfigError, match="color_preservation"):
        prepare(make(*TINY, "color_preservation=sepia"))
    with pytest.raises(ConfigError, match="color_histogram"):
        prepare(make(*TINY, "color_histogram=lab"))


# --- style scale ---------------------------------------------------------------------------------

def test_style_scale_sets_the_size_of_the_style_target():
    small = prepare(make(*TINY, "image.style_scale=0.75"))
    large = prepare(make(*TINY, "image.style_scale=2.0"))
    assert max(small.style.shape[-2:]) == 36 and max(large.style.shape[-2:]) == 96
    assert max(small.content.shape[-2:]) == max(large.content.shape[-2:]) == 48
    backbone = load_backbone("random", ["conv4_2", *STYLE])
    grams = [gram(backbone.extractor(i.style)["conv1_1"]) for i in (small, large)]
    assert (grams[0] - grams[1]).abs().max() > 1e-4  # a different size, a different target


# --- spatial control -----------------------------------------------------------------------------

def test_an_all_ones_mask_gives_the_plain_gram():
    features = torch.randn(2, 8, 6, 5)
    torch.testing.assert_close(guided_gram(features, torch.ones(1, 1, 12, 10)), gram(features))


def test_a_mask_confines_each_style_loss_to_its_region(tiny_loss_parts):
    backbone, content, styles = tiny_loss_parts
    left = torch.zeros(1, 1, 32, 32)
    left[..., :16] = 1.0
    right = 1.0 - left
    loss = StyleTransferLoss(backbone.extractor, content, styles, content_layers={"conv4_2": 1.0},
                             style_layers={"conv1_1": 1.0}, style_masks=[left, right])
    image = smooth_image(32, 32, 9)
    changed_right, changed_left = image.clone(), image.clone()
    changed_right[..., 18:] = torch.rand(1, 3, 32, 14)  # beyond conv1_1's 3x3 reach of the left half
    changed_left[..., :14] = torch.rand(1, 3, 32, 14)
    before, after_right, after_left = loss(image), loss(changed_right), loss(changed_left)
    torch.testing.assert_close(after_right.style_images["1"], before.style_images["1"], rtol=1e-6, atol=0)
    assert not torch.allclose(after_right.style_images["2"], before.style_images["2"], rtol=1e-3)
    torch.testing.assert_close(after_left.style_images["2"], before.style_images["2"], rtol=1e-6, atol=0)
    assert not torch.allclose(after_left.style_images["1"], before.style_images["1"], rtol=1e-3)


def test_mask_files_are_loaded_at_the_content_size_and_checked(tmp_path):
    white, black = tmp_path / "white.png", tmp_path / "black.png"
    Image.new("L", (10, 7), 255).save(white)
    Image.new("L", (10, 7), 0).save(black)
    inputs = prepare(make(*TINY, "style=[starry_night,the_scream]", f"style_masks=[{white},null]"))
    assert inputs.masks[0].shape[-2:] == inputs.content.shape[-2:] and inputs.masks[1] is None
    assert float(inputs.masks[0].min()) == 1.0
    with pytest.raises(ImageError, match="black everywhere"):
        prepare(make(*TINY, "style=[starry_night,the_scream]", f"style_masks=[{black},null]"))
    with pytest.raises(ConfigError, match="style_masks"):
        prepare(make(*TINY, "style=[starry_night,the_scream]", f"style_masks=[{white}]"))
    with pytest.raises(NSTError, match=r"style_masks\[0\].*no such file"):
        prepare(make(*TINY, f"style_masks=[{tmp_path / 'missing.png'}]"))


# --- examples: one experiment config per control, and the gallery sweep ------------------------

CONTROLS = ["color_luminance", "color_histogram", "style_blend", "style_scale", "coarse_to_fine", "masks"]


@pytest.mark.parametrize("name", CONTROLS)
def test_each_control_experiment_composes_and_prepares(name):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):  # content and style from the experiment
        # 181 px: coarse_to_fine's automatic scales are 128 and 181 px
        inputs = prepare(compose("config", overrides=[f"experiment={name}", *TINY, "image.size=181"]))
    cfg = inputs.spec.shared
    assert (cfg.color_preservation != "none") == name.startswith("color_")
    assert (len(inputs.styles) == 2) == (name in ("style_blend", "masks"))
    assert (inputs.masks is not None) == (name == "masks")
    assert cfg.content == "tubingen"
    assert cfg.scales == ((128, 181) if name == "coarse_to_fine" else (181,))


@pytest.mark.timeout(900)
@pytest.mark.slow  # 20-60 s: make test stays under 10 minutes on 2 cores
def test_controls_sweep_makes_a_gallery(tmp_path, nst):
    import csv

    out = tmp_path / "outputs"
    done = nst(out, "sweep=controls", "model=random", "image.size=160", "epochs=1", "optimizer.max_iter=2",
               "image.scale_epochs=null", "progress=false", timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    grids = list((out / "multiruns").rglob("grid.png"))  # (MLflow holds a copy too)
    assert len(grids) == 1
    summary = list(csv.DictReader(open(grids[0].parent / "summary.csv")))
    assert len(summary) == len(CONTROLS) and all(row["status"] == "FINISHED" for row in summary)
    assert Image.open(grids[0]).size[1] > 2 * 128  # content, style and six tiles: two rows or more


def test_tracked_run_records_every_style_and_mask(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    white = tmp_path / "white.png"
    Image.new("L", (10, 7), 255).save(white)
    out = tmp_path / "outputs"
    monkeypatch.setenv("NST_OUTPUT_DIR", str(out))
    cfg = make(*TINY, "tracking=local", "style=[starry_night,the_scream]", f"style_masks=[{white},null]",
               "style_blend=[3,1]", f"paths.output_dir={out}")
    inputs = prepare(cfg)
    assert inputs.input_files() == [inputs.content_path, *inputs.style_paths, white.resolve()]
    from nst.jobs.driver import run

    run(cfg, tmp_path / "job")
    record = __import__("json").loads((tmp_path / "job" / "run.json").read_text())
    assert record["style_blend"] == [0.75, 0.25] and len(record["style_images"]) == 2
    assert record["style_masks"][0].endswith("white.png") and record["style_masks"][1] is None
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nst")
    (found,) = client.search_runs([experiment.experiment_id])
    inputs_logged = {a.path for a in client.list_artifacts(found.info.run_id, "inputs")}
    assert {"inputs/style.png", "inputs/style_2.png", "inputs/mask_1.png"} <= inputs_logged
    assert "style_image/2" in found.data.metrics
