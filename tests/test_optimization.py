import math

import pytest
import torch

from nst.engine.backbones import SPECS, FeatureExtractor
from nst.engine.color import color_statistics
from nst.engine.losses import LossTerms, StyleTransferLoss
from nst.engine.optimization import OptimizerSettings, initial_image, optimize
from nst.errors import NonFiniteLossError

from .conftest import smooth_image


@pytest.fixture(scope="module")
def problem():
    extractor = FeatureExtractor(SPECS["random"], None, ["conv1_1", "conv2_1", "conv3_1", "conv4_2"])
    content, style = smooth_image(32, 48, 1), smooth_image(40, 40, 2)
    loss = StyleTransferLoss(extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers={"conv1_1": 1.0, "conv2_1": 1.0, "conv3_1": 1.0},
                             style_weight=100.0)
    return extractor, loss, content, style


@pytest.mark.parametrize("settings", [OptimizerSettings("lbfgs", lr=1.0, max_iter=10, space="input"),
                                      OptimizerSettings("lbfgs", lr=1.0, max_iter=10, space="pixel"),
                                      OptimizerSettings("adam", lr=0.02, max_iter=10, space="pixel")],
                         ids=["lbfgs-input", "lbfgs-pixel", "adam"])
def test_optimizers_lower_the_total_loss(problem, settings):
    extractor, loss, content, _ = problem
    result = optimize(loss, content, settings, epochs=3, progress=False, preprocess=extractor.preprocess)
    first, last = result.history[0]["total"], result.final["total"]
    assert last < 0.5 * first
    assert result.evaluations >= 10
    # the returned image is the optimiser's last accepted one, and the last record holds its loss
    assert loss(result.image).total.item() == pytest.approx(last, rel=1e-4)


def test_every_evaluation_is_recorded_with_all_terms(problem):
    extractor, loss, content, _ = problem
    seen = []
    result = optimize(loss, content, OptimizerSettings("adam", lr=0.01, max_iter=4), epochs=2,
                      callbacks=[lambda record, image: seen.append((record["evaluation"], image.shape))],
                      progress=False)
    # 2 epochs x 4 Adam steps, then one evaluation of the image the last step left (the one kept)
    assert [r["evaluation"] for r in result.history] == list(range(1, 10))
    assert [r["epoch"] for r in result.history] == [1] * 4 + [2] * 5
    assert seen == [(i, content.shape) for i in range(1, 10)]
    record = result.history[-1]
    for key in ("total", "content", "style", "tv", "content/conv4_2", "style/conv1_1", "elapsed_s"):
        assert math.isfinite(record[key])
    assert result.history[-1]["elapsed_s"] >= result.history[0]["elapsed_s"]


def test_input_space_round_trips(problem):
    extractor, _, content, _ = problem
    torch.testing.assert_close(extractor.preprocess.inverse(extractor.preprocess(content)), content)
    caffe = FeatureExtractor(SPECS["vgg16_hed"], None, ["conv1_1"]).preprocess
    torch.testing.assert_close(caffe.inverse(caffe(content)), content, atol=1e-5, rtol=0)


def test_pixels_are_not_clamped_during_optimisation(problem):
    extractor, loss, content, _ = problem
    result = optimize(loss, content, OptimizerSettings("adam", lr=0.5, max_iter=5), epochs=1, progress=False)
    assert result.image.min() < 0 or result.image.max() > 1


def test_non_finite_loss_stops_with_last_finite_image(problem):
    extractor, loss, content, _ = problem
    with pytest.raises(NonFiniteLossError) as info:
        optimize(loss, content, OptimizerSettings("adam", lr=1e30, max_iter=5), epochs=2, progress=False)
    error = info.value
    assert "non-finite" in str(error) and "optimizer.lr" in str(error)
    assert error.evaluation >= 2
    assert torch.isfinite(error.last_finite_image).all()
    assert len(error.history) == error.evaluation - 1
    assert all(math.isfinite(r["total"]) for r in error.history)


def test_init_content_is_the_content_image(problem):
    _, _, content, style = problem
    init = initial_image("content", content, style, seed=0)
    assert torch.equal(init, content) and init.data_ptr() != content.data_ptr()


def test_init_noise_is_seeded_white_noise(problem):
    _, _, content, style = problem
    a = initial_image("noise", content, style, seed=1)
    assert a.shape == content.shape
    assert torch.equal(a, initial_image("noise", content, style, seed=1))
    assert not torch.equal(a, initial_image("noise", content, style, seed=2))
    assert 0 <= a.min() and a.max() <= 1 and abs(a.mean().item() - 0.5) < 0.05
    # white noise: neighbouring pixels are uncorrelated, unlike in a photo
    corr = torch.corrcoef(torch.stack([a[..., :-1].flatten(), a[..., 1:].flatten()]))[0, 1]
    assert abs(corr) < 0.1


def test_init_style_is_the_style_resized_to_the_content(problem):
    _, _, content, style = problem
    init = initial_image("style", content, style, seed=0)
    assert init.shape == content.shape
    assert init.mean().item() == pytest.approx(style.mean().item(), abs=0.02)
    assert not torch.allclose(init, content)


def test_init_recolored_content_is_the_content_in_the_styles_colours():
    content = 0.35 + 0.3 * smooth_image(32, 48, 1)
    style = smooth_image(40, 40, 2)
    style = torch.stack([0.5 + 0.3 * style[:, 0], 0.3 + 0.2 * style[:, 0] + 0.1 * style[:, 1],
                         0.6 - 0.2 * style[:, 2]], 1)  # another palette, with correlated channels
    init = initial_image("recolored_content", content, style, seed=0)
    assert init.shape == content.shape and 0 < init.min() and init.max() < 1  # nothing clamped here
    # the style's colour mean and covariance ...
    for ours, theirs in zip(color_statistics(init), color_statistics(style), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)
    # ... on the content's layout: every pixel moved by one affine colour map
    pixels = content.permute(0, 2, 3, 1).reshape(-1, 3).double()
    design = torch.cat([pixels, torch.ones(len(pixels), 1, dtype=torch.float64)], 1)
    target = init.permute(0, 2, 3, 1).reshape(-1, 3).double()
    fit = torch.linalg.lstsq(design, target).solution
    assert float((design @ fit - target).abs().max()) < 1e-5


def test_init_recolored_content_stays_an_image():
    content, style = smooth_image(32, 48, 1), (0.9 + 0.3 * smooth_image(40, 40, 2)).clamp(0, 1)
    init = initial_image("recolored_content", content, style, seed=0)
    assert 0 <= init.min() and init.max() <= 1 and init.mean() > 0.8


def test_unknown_init_mode_is_rejected(problem):
    _, _, content, style = problem
    with pytest.raises(ValueError):
        initial_image("zeros", content, style)


def _quadratic(target: torch.Tensor, seen: list):
    """A loss whose strong-Wolfe search overshoots: records every evaluated image and its loss."""
    def loss_fn(image: torch.Tensor) -> LossTerms:
        total = (image - target).pow(2).flatten(1).sum(1) * 1e3 + (image - target).pow(4).flatten(1).sum(1) * 1e6
        seen.append((image.detach().clone(), float(total[0].detach())))
        zero = total.detach() * 0
        return LossTerms(total, total, zero, zero, {}, {})
    return loss_fn


def test_a_rejected_last_trial_is_never_the_result():
    """The last line-search trial overshoots and is rejected: the kept image is the accepted point."""
    target = smooth_image(8, 8, 3)
    seen = []
    # one L-BFGS iteration per epoch with room for 2 evaluations: the first trial (lr 1e3) overshoots
    settings = OptimizerSettings("lbfgs", lr=1e3, max_iter=1, max_eval=2, space="pixel")
    result = optimize(_quadratic(target, seen), torch.zeros_like(target), settings, epochs=1, progress=False)
    trials = [loss for _, loss in seen]
    assert max(trials[1:-1] or trials[1:]) > trials[0], "the scenario needs a rejected (worse) trial"
    # the saved image's loss is the final recorded loss, and it is no worse than the start
    kept = float(_quadratic(target, [])(result.image).total[0])
    assert result.final["total"] == pytest.approx(kept, rel=1e-6)
    assert kept <= trials[0]
    assert not any(torch.equal(result.image, image) for image, loss in seen if loss > trials[0])


@pytest.mark.parametrize("line_search", ["strong_wolfe", None])
def test_one_iteration_per_epoch_moves_and_never_gets_worse(line_search):
    """``max_iter=1`` with many epochs: each epoch one accepted iteration, the loss non-increasing.

    The first trial overshoots (lr 1e3); torch's default budget (1.25 x max_iter = 1 evaluation)
    left the search no trial, so the image never moved and the last trial was saved.
    """
    target = smooth_image(8, 8, 3)
    lr = 1e3 if line_search else 1.0
    settings = OptimizerSettings("lbfgs", lr=lr, max_iter=1, space="pixel", line_search=line_search)
    loss_fn = _quadratic(target, [])
    result = optimize(loss_fn, torch.zeros_like(target), settings, epochs=12, progress=False)
    # each epoch's first evaluation is at the image the previous epoch accepted
    accepted = [next(r["total"] for r in result.history if r["epoch"] == e) for e in range(1, 13)]
    accepted.append(result.final["total"])
    assert result.final["total"] < 0.9 * result.history[0]["total"]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(accepted, accepted[1:], strict=False)), accepted
    assert float(loss_fn(result.image).total[0]) == pytest.approx(result.final["total"], rel=1e-6)


def test_callbacks_see_the_best_image_so_far_within_an_epoch():
    """One L-BFGS epoch of 10 iterations: the image a callback gets moves with the evaluations (it was the
    epoch's starting image until the epoch ended) and is the lowest-loss image evaluated so far."""
    target = smooth_image(8, 8, 3)
    seen, shown = [], []
    settings = OptimizerSettings("lbfgs", lr=1e3, max_iter=10, space="pixel")
    optimize(_quadratic(target, seen), torch.zeros_like(target), settings, epochs=1, progress=False,
             callbacks=[lambda record, image: shown.append((record["total"], image.clone()))])
    assert len(shown) > 5
    start = torch.zeros_like(target)
    assert not torch.equal(shown[len(shown) // 2][1], start)  # mid-epoch, no longer the starting image
    best = float("inf")
    for (_total, image), (evaluated, loss) in zip(shown, seen, strict=True):
        if loss <= best:
            best, expected = loss, evaluated
        assert torch.equal(image, expected)  # the best evaluated so far, never a worse trial
        assert float(_quadratic(target, [])(image).total[0]) == pytest.approx(best, rel=1e-6)
