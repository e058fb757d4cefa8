"""Feature calibration (nst/calibration.py): filters averaging one over the calibration images."""

import json

import pytest
import torch

from nst.assets import ASSETS
from nst.backbones import load_backbone
from nst.calibration import CALIBRATION_SIZE, calibrate, channel_means
from nst.images import load_tensor

from .conftest import smooth_image

LAYERS = ["conv1_1", "conv3_1", "conv4_2"]


def calibrated_means(backbone, images):
    """Per-filter means of what the losses see (the extractor's calibrated output)."""
    with torch.no_grad():
        outputs = [backbone.extractor(image) for image in images]
    return {k: sum(o[k].mean(dim=(0, 2, 3)) for o in outputs) / len(outputs) for k in outputs[0]}


@pytest.fixture
def backbone():
    return load_backbone("random", LAYERS, seed=3)


def test_calibrated_filters_average_one_over_the_sample_images(backbone, assets_dir):
    raw = channel_means(backbone, [load_tensor(assets_dir / f"{name}.jpg", CALIBRATION_SIZE) for name in ASSETS])
    calibration = calibrate(backbone, "mean_activation", [], [])
    assert calibration.source == "sample images" and sorted(calibration.images) == sorted(ASSETS)
    images = [load_tensor(assets_dir / f"{name}.jpg", CALIBRATION_SIZE) for name in ASSETS]
    calibrated = calibrated_means(backbone, images)
    for layer in LAYERS:
        live = raw[layer] > 1e-2 * raw[layer].mean()
        torch.testing.assert_close(calibrated[layer][live], torch.ones(int(live.sum())), rtol=1e-4, atol=1e-4)
        assert calibration.layer_means[layer] == pytest.approx(float(raw[layer].mean()), rel=1e-3)
    # the raw scale is far from one, so the factors matter (the reason for calibrating at all)
    assert max(abs(m - 1) for m in calibration.layer_means.values()) > 0.05


def test_none_keeps_the_raw_features(backbone):
    image = smooth_image(32, 32)
    raw = backbone.extractor(image)
    calibrate(backbone, "mean_activation", [], [])
    assert not torch.allclose(backbone.extractor(image)["conv3_1"], raw["conv3_1"])
    assert calibrate(backbone, "none", [], []).record()["calibration"] == "none"
    for layer in LAYERS:
        torch.testing.assert_close(backbone.extractor(image)[layer], raw[layer])


def test_factors_are_cached_per_backbone_and_reused(backbone, monkeypatch, tmp_path):
    first = calibrate(backbone, "mean_activation", [], [])
    # the samples are gone now: the cached factors still serve, with no fallback
    monkeypatch.setenv("NST_ASSETS_DIR", str(tmp_path / "empty"))
    again = load_backbone("random", LAYERS, seed=3)
    second = calibrate(again, "mean_activation", [], [])
    assert second.source == "sample images" and second.layer_means == first.layer_means
    # another seed is another network: its factors are not the cached ones
    other = calibrate(load_backbone("random", LAYERS, seed=4), "mean_activation",
                      [smooth_image(40, 40, 1)], ["own.png"])
    assert other.source == "this run's images" and other.layer_means != first.layer_means


def test_without_sample_images_the_run_calibrates_on_its_own(backbone, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NST_ASSETS_DIR", str(tmp_path / "empty"))
    content, style = smooth_image(40, 48, 1), smooth_image(40, 40, 2)
    calibration = calibrate(backbone, "mean_activation", [content, style], ["c.png", "s.png"])
    assert calibration.source == "this run's images" and calibration.images == ["c.png", "s.png"]
    assert "sample images are unavailable" in caplog.text
    raw = channel_means(backbone, [content, style])["conv1_1"]
    live = raw > 1e-2 * raw.mean()
    torch.testing.assert_close(calibrated_means(backbone, [content, style])["conv1_1"][live], torch.ones(int(live.sum())), rtol=1e-4, atol=1e-4)


def test_the_run_records_its_calibration(tmp_path):
    from .test_cli import nst

    done = nst(tmp_path, "content=tubingen", "style=starry_night", "model=random", "image.size=32",
               "epochs=1", "optimizer.max_iter=2", "tracking=none")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["calibration"] == "mean_activation" and record["calibration_source"] == "sample images"
    assert set(record["calibration_layer_means"]) == {"conv4_2", "conv1_1", "conv2_1", "conv3_1", "conv4_1",
                                                      "conv5_1"}
