"""The benchmark's plain reference (nst/bench/reference.py) computes nst's loss, and its FLOP count is right."""

import pytest
import torch

from nst.bench.reference import CONTENT_LAYERS, STYLE_LAYERS, ReferenceLoss, evaluation_flops
from nst.engine.backbones import SPECS, FeatureExtractor, layer_table, random_state
from nst.engine.losses import StyleTransferLoss, paper_style_layer_weights
from tests.helpers.images import smooth_image


@pytest.mark.parametrize("calibrated", [False, True])
def test_reference_loss_equals_nst_loss_on_the_same_weights(calibrated):
    state = random_state("vgg19", 3)
    extractor = FeatureExtractor(SPECS["random"], state, CONTENT_LAYERS + STYLE_LAYERS)
    if calibrated:  # per-filter divisors, as nst.engine.calibration sets them
        generator = torch.Generator().manual_seed(0)
        extractor.set_scales({name: 0.1 + 10 * torch.rand(layer_table("vgg19")[name].channels, generator=generator)
                              for name in CONTENT_LAYERS + STYLE_LAYERS})
    content, style, image = smooth_image(32, 32, 1), smooth_image(32, 32, 2), smooth_image(32, 32, 3)
    table = layer_table("vgg19")
    ours = StyleTransferLoss(extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers=dict(zip(STYLE_LAYERS, paper_style_layer_weights(
                                 [table[n].channels for n in STYLE_LAYERS]), strict=True)),
                             style_weight=100.0)
    reference = ReferenceLoss(state, "vgg19", extractor.preprocess, content, style, style_weight=100.0,
                              scales=extractor.scales)
    torch.testing.assert_close(reference(image), ours(image).total.sum(), rtol=1e-5, atol=0)
    # the reference runs the whole network; nst stops at conv5_1
    assert len(reference.features) == 37 and len(extractor.features) == table["conv5_1"].index + 1


def test_evaluation_flops_by_hand():
    # conv1_1 on 10x10: 2 * 3 * 64 * 9 * 100 forward, doubled for the backward to the input
    assert evaluation_flops("vgg19", layer_table("vgg19")["conv1_1"].index, 10, 10) == 2 * 2 * 3 * 64 * 9 * 100
    # conv1_1 + conv1_2 + pool1 + conv2_1 (on 5x5)
    expected = 2 * (2 * 3 * 64 * 9 * 100 + 2 * 64 * 64 * 9 * 100 + 2 * 64 * 128 * 9 * 25)
    assert evaluation_flops("vgg19", layer_table("vgg19")["conv2_1"].index, 10, 10) == expected
