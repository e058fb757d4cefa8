import numpy as np
import pytest
import torch

from nst.engine.backbones import SPECS, FeatureExtractor
from nst.engine.losses import (
    StyleTransferLoss,
    content_layer_loss,
    gram,
    paper_style_layer_weights,
    style_layer_loss,
    total_variation,
)

from .conftest import smooth_image


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
