"""Feature calibration (nst/engine/calibration.py): filters on a unit scale over the calibration images."""

import json

import pytest
import torch

from nst.engine.calibration import CALIBRATION_SIZE, SILENT_FLOOR, calibrate, filter_statistics
from nst.engine.weights import load_backbone
from nst.images.samples import ASSETS
from tests.helpers.cli import single_run
from tests.helpers.images import smooth_image

LAYERS = ["conv1_1", "conv3_1", "conv4_2"]


def samples(assets_dir):
    from nst.images.files import load_tensor

    return [load_tensor(assets_dir / f"{name}.jpg", CALIBRATION_SIZE) for name in ASSETS]


def calibrated_statistics(backbone, images):
    """Per-filter mean and mean square of what the losses see (the extractor's calibrated output)."""
    with torch.no_grad():
        outputs = [backbone.extractor(image) for image in images]
    return {k: torch.stack([sum(o[k].mean(dim=(0, 2, 3)) for o in outputs) / len(outputs),
                            sum(o[k].pow(2).mean(dim=(0, 2, 3)) for o in outputs) / len(outputs)])
            for k in outputs[0]}


@pytest.fixture
def backbone():
    return load_backbone("random", LAYERS, seed=3)


@pytest.mark.parametrize("method, moment", [("rms_activation", 1), ("mean_activation", 0)])
def test_calibrated_filters_are_on_a_unit_scale_over_the_sample_images(backbone, assets_dir, method, moment):
    images = samples(assets_dir)
    raw = filter_statistics(backbone, images)
    calibration = calibrate(backbone, method, [], [])
    assert calibration.source == "sample images" and sorted(calibration.images) == sorted(ASSETS)
    calibrated = calibrated_statistics(backbone, images)
    for layer in LAYERS:
        factor = raw[layer][0] if moment == 0 else raw[layer][1].sqrt()
        live = factor > SILENT_FLOOR * factor.mean()
        torch.testing.assert_close(calibrated[layer][moment][live], torch.ones(int(live.sum())),
                                   rtol=1e-4, atol=1e-4)
        assert calibration.layer_factors[layer] == pytest.approx(float(factor.clamp_min(
            SILENT_FLOOR * factor.mean()).mean()), rel=1e-3)
    # the raw scale is far from one, so the factors matter (the reason for calibrating at all)
    assert max(abs(m - 1) for m in calibration.layer_factors.values()) > 0.05


def test_none_keeps_the_raw_features(backbone):
    image = smooth_image(32, 32)
    raw = backbone.extractor(image)
    calibrate(backbone, "rms_activation", [], [])
    assert not torch.allclose(backbone.extractor(image)["conv3_1"], raw["conv3_1"])
    assert calibrate(backbone, "none", [], []).record()["calibration"] == "none"
    for layer in LAYERS:
        torch.testing.assert_close(backbone.extractor(image)[layer], raw[layer])


def test_statistics_are_cached_per_network_and_reused(backbone, monkeypatch, tmp_path):
    first = calibrate(backbone, "rms_activation", [], [])
    # the samples are gone now: the cached statistics still serve, with no fallback
    monkeypatch.setenv("NST_ASSETS_DIR", str(tmp_path / "empty"))
    second = calibrate(load_backbone("random", LAYERS, seed=3), "rms_activation", [], [])
    assert second.source == "sample images" and second.layer_factors == first.layer_factors
    # the mean needs no second pass over the images either
    assert calibrate(load_backbone("random", LAYERS, seed=3), "mean_activation", [], []).source == "sample images"
    # another seed is another network: the cached statistics are not its own
    other = calibrate(load_backbone("random", LAYERS, seed=4), "rms_activation", [smooth_image(40, 40, 1)],
                      ["own.png"])
    assert other.source == "this run's images" and other.layer_factors != first.layer_factors


def test_without_sample_images_the_run_calibrates_on_its_own(backbone, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NST_ASSETS_DIR", str(tmp_path / "empty"))
    content, style = smooth_image(40, 48, 1), smooth_image(40, 40, 2)
    calibration = calibrate(backbone, "rms_activation", [content, style], ["c.png", "s.png"])
    assert calibration.source == "this run's images" and calibration.images == ["c.png", "s.png"]
    assert "sample images are unavailable" in caplog.text
    squares = calibrated_statistics(backbone, [content, style])["conv1_1"][1]
    raw = filter_statistics(backbone, [content, style])["conv1_1"][1].sqrt()
    live = raw > SILENT_FLOOR * raw.mean()
    torch.testing.assert_close(squares[live], torch.ones(int(live.sum())), rtol=1e-4, atol=1e-4)


def test_the_run_records_its_calibration(tmp_path, nst):
    done = single_run(nst, tmp_path, "progress=false", "content=tubingen", "style=starry_night",
                      "model=random", "image.size=32", "epochs=1", "optimizer.max_iter=2",
                      "tracking=none")
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["calibration"] == "rms_activation" and record["calibration_source"] == "sample images"
    assert set(record["calibration_layer_factors"]) == {"conv4_2", "conv1_1", "conv2_1", "conv3_1", "conv4_1",
                                                        "conv5_1"}


def test_a_cache_file_of_another_layout_is_recomputed(backbone, assets_dir):
    from nst.engine.calibration import _cache_file

    fresh = calibrate(backbone, "rms_activation", [], []).layer_factors
    path = _cache_file(backbone)
    torch.save({layer: torch.zeros(4) for layer in LAYERS}, path)  # one value per filter: an older layout
    assert calibrate(load_backbone("random", LAYERS, seed=3), "rms_activation", [], []).layer_factors == fresh
