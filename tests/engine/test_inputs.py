"""Every cheap check before heavy work (nst/engine/inputs.py): a bad image before any weights, sizes
against the deepest layer and the memory there is, bf16 hardware, the style's size and the masks."""

import logging
import time

import pytest
from PIL import Image

from nst.engine.losses import gram
from nst.engine.weights import load_backbone
from nst.errors import ConfigError, ImageError, NSTError
from tests.helpers import REPO
from tests.helpers.cli import left_nothing, single_run
from tests.helpers.config import make, prepare
from tests.helpers.overrides import BF16_32, ENGINE_48, SCALES_64, STYLE_LAYERS


def _bad_images(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "cut.jpg").write_bytes((REPO.parent / "shared" / "assets" / "tubingen.jpg").read_bytes()[:3000])
    return {"missing": ("missing.png", "no such file"), "directory": ("folder", "is a directory"),
            "empty": ("empty.png", "empty"), "not-an-image": ("text.png", "not an image"),
            "truncated": ("cut.jpg", "cannot be decoded")}


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "not-an-image", "truncated"])
def test_bad_image_fails_before_weights_with_no_running_run(tmp_path, case, nst):
    out = tmp_path / "outputs"
    name, phrase = _bad_images(tmp_path)[case]
    # vgg16_hed is not cached and the network is off: reaching the weights would be a different error
    done = nst(out, f"content={tmp_path / name}", "style=starry_night", "model=vgg16_hed", "progress=false")
    assert done.returncode == 2
    assert "nst: error: content image" in done.stderr and str(tmp_path / name) in done.stderr
    assert phrase in done.stderr
    assert "Traceback" not in done.stderr and "vgg16_hed" not in done.stderr
    left_nothing(out)


def test_size_beyond_memory_is_refused_with_estimate_and_limit(tmp_path, nst):
    start = time.perf_counter()
    done = nst(tmp_path / "outputs", "content=tubingen", "style=starry_night", "model=random",
               "image.size=60000", "progress=false")
    assert done.returncode == 2
    assert "image.size=60000" in done.stderr and "estimated" in done.stderr and "GiB available" in done.stderr
    assert time.perf_counter() - start < 60  # refused before decoding or allocating anything


def test_image_too_small_for_deepest_layer(tmp_path, nst):
    done = single_run(nst, tmp_path, "progress=false", "content=tubingen", "style=starry_night",
                      "model=random", "image.size=64", "image.style_scale=0.2")
    assert done.returncode == 2
    assert "style image" in done.stderr and "at least 16 px" in done.stderr


def test_an_image_below_16_px_is_refused(tmp_path, nst):
    done = nst(tmp_path / "outputs", "content=tubingen", "style=starry_night", "model=random", "image.size=12",
               "loss.style_layers=[conv1_1]", "loss.content_layers=[conv5_1]", "progress=false")
    assert done.returncode == 2 and "image.size=12" in done.stderr  # below the minimum of 16 px


def test_a_coarse_scale_too_small_for_the_deepest_layer_is_refused_before_work():
    with pytest.raises(ConfigError, match="at least 16 px"):
        prepare(make(*SCALES_64, "image.scales=[16,64]"))


@pytest.mark.parametrize("native, warned", [(False, True), (True, False), (None, False)])
def test_bf16_without_bf16_hardware_is_warned_about(monkeypatch, caplog, native, warned):
    monkeypatch.setattr("nst.engine.inputs.native_bf16", lambda device: native)
    with caplog.at_level(logging.WARNING, logger="nst.engine.inputs"):
        prepare(make(*BF16_32))
    assert any("no bfloat16 hardware" in r.getMessage() for r in caplog.records) is warned


def test_style_scale_sets_the_size_of_the_style_target():
    small = prepare(make(*ENGINE_48, "image.style_scale=0.75"))
    large = prepare(make(*ENGINE_48, "image.style_scale=2.0"))
    assert max(small.style.shape[-2:]) == 36 and max(large.style.shape[-2:]) == 96
    assert max(small.content.shape[-2:]) == max(large.content.shape[-2:]) == 48
    backbone = load_backbone("random", ["conv4_2", *STYLE_LAYERS])
    grams = [gram(backbone.extractor(i.style)["conv1_1"]) for i in (small, large)]
    assert (grams[0] - grams[1]).abs().max() > 1e-4  # a different size, a different target


def test_mask_files_are_loaded_at_the_content_size_and_checked(tmp_path):
    white, black = tmp_path / "white.png", tmp_path / "black.png"
    Image.new("L", (10, 7), 255).save(white)
    Image.new("L", (10, 7), 0).save(black)
    inputs = prepare(make(*ENGINE_48, "style=[starry_night,the_scream]", f"style_masks=[{white},null]"))
    assert inputs.masks[0].shape[-2:] == inputs.content.shape[-2:] and inputs.masks[1] is None
    assert float(inputs.masks[0].min()) == 1.0
    with pytest.raises(ImageError, match="black everywhere"):
        prepare(make(*ENGINE_48, "style=[starry_night,the_scream]", f"style_masks=[{black},null]"))
    with pytest.raises(ConfigError, match="style_masks"):
        prepare(make(*ENGINE_48, "style=[starry_night,the_scream]", f"style_masks=[{white}]"))
    with pytest.raises(NSTError, match=r"style_masks\[0\].*no such file"):
        prepare(make(*ENGINE_48, f"style_masks=[{tmp_path / 'missing.png'}]"))
