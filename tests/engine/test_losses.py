"""Gram (and mask-guided Gram), content, style and TV losses, blended styles, both normalisations, and
several images' losses in one pass, each with its own weights (nst/engine/losses.py)."""

import numpy as np
import pytest
import torch

from nst.engine.backbones import SPECS, FeatureExtractor
from nst.engine.losses import (
    StyleTransferLoss,
    content_layer_loss,
    gram,
    guided_gram,
    paper_style_layer_weights,
    style_layer_loss,
    total_variation,
)
from nst.engine.scales import silent_layers
from nst.engine.weights import load_backbone
from tests.helpers.backbones import switch_off
from tests.helpers.batches import weights_for
from tests.helpers.images import smooth_image
from tests.helpers.overrides import STYLE_LAYERS


def _hand_gram(f):
    """Loops over channels and positions: G[i, j] = sum_k F[i, k] F[j, k] / (H W)."""
    c, h, w = f.shape
    flat = f.reshape(c, h * w)
    out = np.zeros((c, c))
    for i in range(c):
        for j in range(c):
            out[i, j] = sum(flat[i, k] * flat[j, k] for k in range(h * w)) / (h * w)
    return out


def test_gram_equals_hand_computation():
    f = np.arange(2 * 2 * 3, dtype=np.float64).reshape(2, 2, 3) / 7.0
    got = gram(torch.from_numpy(f)[None]).numpy()[0]
    np.testing.assert_allclose(got, _hand_gram(f), rtol=1e-12)
    # a value worked out on paper: channel 0 = [0..5]/7, sum of squares 55/49, over 6 positions
    assert got[0, 0] == pytest.approx(55 / 49 / 6)


def test_style_layer_loss_both_normalisations_by_hand():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 2, 2))
    a = rng.standard_normal((3, 2, 2))
    g_hand, a_hand = _hand_gram(f), _hand_gram(a)
    sq = sum((g_hand[i, j] - a_hand[i, j]) ** 2 for i in range(3) for j in range(3))
    g, t = gram(torch.from_numpy(f)[None]), gram(torch.from_numpy(a)[None])
    # reference (Gatys' PyTorch code): MSE over the C*C entries
    assert style_layer_loss(g, t, "reference").item() == pytest.approx(sq / 9)
    # paper: 1 / (4 N^2 M^2) * sum (F F^T - A A^T)^2 with un-normalised Grams
    n, m = 3, 4
    raw = sum(((f.reshape(3, 4) @ f.reshape(3, 4).T) - (a.reshape(3, 4) @ a.reshape(3, 4).T))[i, j] ** 2
              for i in range(3) for j in range(3))
    assert style_layer_loss(g, t, "paper").item() == pytest.approx(raw / (4 * n**2 * m**2))


def test_content_layer_loss_both_normalisations_by_hand():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    p = torch.tensor([[[[0.0, 2.0], [5.0, 4.0]]]])
    # differences 1, 0, -2, 0 -> squares 1, 0, 4, 0
    assert content_layer_loss(f, p, "reference").item() == pytest.approx(5 / 4)
    assert content_layer_loss(f, p, "paper").item() == pytest.approx(0.5 * 5)


def test_total_variation_by_hand():
    image = torch.zeros(1, 1, 2, 2)
    image[0, 0, 0, 0] = 1.0
    # vertical differences: [-1, 0] -> mean 0.5; horizontal: [-1, 0] -> mean 0.5
    assert total_variation(image).item() == pytest.approx(1.0)


def test_paper_style_layer_weights():
    assert paper_style_layer_weights([64, 128, 256, 512, 512]) == pytest.approx(
        [1e3 / 64**2, 1e3 / 128**2, 1e3 / 256**2, 1e3 / 512**2, 1e3 / 512**2])


def test_unknown_normalization_is_rejected():
    with pytest.raises(ValueError):
        style_layer_loss(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), "nope")


@pytest.fixture(scope="module")
def setting():
    extractor = FeatureExtractor(SPECS["random"], None, ["conv1_1", "conv2_1", "conv3_1"])
    content, style, image = smooth_image(32, 32, 1), smooth_image(32, 32, 2), smooth_image(32, 32, 3)
    return extractor, content, style, image


def _loss(setting, **kwargs):
    extractor, content, style, image = setting
    params = dict(content_layers={"conv3_1": 1.0}, style_layers={"conv1_1": 1.0, "conv2_1": 1.0})
    params.update(kwargs)
    return StyleTransferLoss(extractor, content, style, **params)(image)


def test_total_is_weighted_sum_of_terms(setting):
    terms = _loss(setting, content_weight=2.0, style_weight=3.0, tv_weight=5.0)
    expected = 2.0 * terms.content + 3.0 * terms.style + 5.0 * terms.tv
    torch.testing.assert_close(terms.total, expected)
    assert terms.content.item() > 0 and terms.style.item() > 0 and terms.tv.item() > 0


@pytest.mark.parametrize("key, term", [("content_weight", "content"), ("style_weight", "style"),
                                       ("tv_weight", "tv")])
def test_each_global_weight_scales_its_term_only(setting, key, term):
    base = _loss(setting, **{"content_weight": 1.0, "style_weight": 1.0, "tv_weight": 1.0})
    scaled = _loss(setting, **{"content_weight": 1.0, "style_weight": 1.0, "tv_weight": 1.0, key: 10.0})
    delta = scaled.total - base.total
    torch.testing.assert_close(delta, 9.0 * getattr(base, term), rtol=1e-4, atol=1e-6)


def test_layer_weights_scale_their_layer(setting):
    base = _loss(setting, style_layers={"conv1_1": 1.0, "conv2_1": 1.0})
    heavy = _loss(setting, style_layers={"conv1_1": 1.0, "conv2_1": 4.0})
    torch.testing.assert_close(heavy.style - base.style, 3.0 * base.style_layers["conv2_1"], rtol=1e-4, atol=0)
    doubled = _loss(setting, content_layers={"conv3_1": 2.0})
    torch.testing.assert_close(doubled.content, 2.0 * base.content)


def test_losses_are_zero_at_the_targets(setting):
    extractor, content, style, _ = setting
    loss = StyleTransferLoss(extractor, content, content, content_layers={"conv3_1": 1.0},
                             style_layers={"conv1_1": 1.0})
    assert loss(content).total.item() == pytest.approx(0.0, abs=1e-10)


def test_scalars_has_every_term_and_layer(setting):
    values = _loss(setting).scalars()
    assert set(values) == {"total", "content", "style", "tv", "content/conv3_1", "style/conv1_1",
                           "style/conv2_1"}


# --- several style images, masks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_loss_parts():
    torch.manual_seed(0)
    backbone = load_backbone("random", ["conv4_2", *STYLE_LAYERS])
    content = smooth_image(32, 32, 5)
    styles = [smooth_image(32, 32, 6), smooth_image(32, 32, 7) ** 3]
    return backbone, content, styles


def _blend_loss(parts, **kwargs):
    backbone, content, styles = parts
    return StyleTransferLoss(backbone.extractor, content, kwargs.pop("styles", styles),
                             content_layers={"conv4_2": 1.0}, style_layers=dict.fromkeys(STYLE_LAYERS, 1.0), **kwargs)


def test_blended_style_loss_is_the_weighted_sum_of_each_style_loss(tiny_loss_parts):
    _, _, styles = tiny_loss_parts
    image = smooth_image(32, 32, 8)
    alone = [_blend_loss(tiny_loss_parts, styles=[s])(image).style for s in styles]
    blended = _blend_loss(tiny_loss_parts, style_blend=[0.7, 0.3])(image)
    torch.testing.assert_close(blended.style, 0.7 * alone[0] + 0.3 * alone[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(blended.style_images["1"], alone[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(blended.style_images["2"], alone[1], rtol=1e-5, atol=0)
    assert "style_image/2" in blended.scalars()


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


# --- a batch of images, each with its own weights ----------------------------------------------


def test_batched_loss_rows_equal_single_image_losses_with_their_weights(batch_setup):
    backbone, content, loss = batch_setup
    images = torch.rand(3, 3, 32, 32)
    terms = loss(images, weights_for([1.0, 100.0, 1e4], tv=[0.0, 5.0, 0.0]))
    for row, (beta, tv) in enumerate([(1.0, 0.0), (100.0, 5.0), (1e4, 0.0)]):
        loss.style_weight, loss.tv_weight = beta, tv
        single = loss(images[row:row + 1])
        assert torch.allclose(terms.total[row], single.total[0], rtol=1e-4)
        assert torch.allclose(terms.style[row], single.style[0], rtol=1e-4)
    loss.style_weight, loss.tv_weight = 1.0, 0.0


def test_a_silent_style_layer_is_revived_in_the_objective_only():
    """conv3_1's units all off on the image: its exact term is the silent one and sends no gradient; revived,
    the objective pulls the image and the reported terms stay exact."""
    torch.manual_seed(0)
    backbone = load_backbone("random", ["conv3_1"])
    content, style = smooth_image(32, 32, 1), torch.rand(1, 3, 32, 32)
    switch_off(backbone, "conv3_1", content)
    loss = StyleTransferLoss(backbone.extractor, content, style, content_layers={},
                             style_layers={"conv3_1": 1.0})
    assert loss.silent_terms["conv3_1"] > 0  # the style turns some units on: there is something to pull towards

    def pull(revive):
        image = content.clone().requires_grad_(True)
        terms = loss(image, None, revive)
        (terms.total if terms.objective is None else terms.objective).sum().backward()
        return terms, image.grad

    exact, still = pull(None)
    revived, moved = pull({"conv3_1": torch.ones(1)})
    assert silent_layers(exact.scalars(0), loss.silent_terms) == {"conv3_1"}
    assert still.abs().max() == 0 and moved.abs().max() > 0
    assert revived.total.item() == exact.total.item() == pytest.approx(loss.silent_terms["conv3_1"])
    assert revived.objective.item() < revived.total.item()  # the stand-ins are partly on already
    # a row not flagged keeps its exact term in the objective
    assert loss(content, None, {"conv3_1": torch.zeros(1)}).objective.item() == exact.total.item()
