"""The optimisation loop (nst/engine/optimization.py): init modes, L-BFGS and Adam, a record per evaluation,
the progress bar; several images as one batch, each member following its own trajectory."""

import copy
import math
import re
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from nst.engine.backbones import SPECS, FeatureExtractor
from nst.engine.color import color_statistics
from nst.engine.losses import LossTerms, StyleTransferLoss
from nst.engine.optimization import (
    BUDGET,
    CONVERGED,
    OptimizerSettings,
    initial_image,
    optimize,
    optimize_batch,
)
from nst.engine.weights import load_backbone
from nst.errors import NonFiniteLossError
from tests.helpers.batches import weights_for
from tests.helpers.cli import single_run
from tests.helpers.images import smooth_image
from tests.helpers.overrides import FOLDER_RUN, STYLE_LAYERS
from tests.helpers.threads import other_threads


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
    settings = OptimizerSettings("lbfgs", lr=lr, max_iter=1, space="pixel", line_search=line_search,
                                 convergence_tolerance=None)  # every epoch, even once the loss stalls
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


# the loss's scale and when a run stops --------------------------------------------------------------


def _scaled_run(problem, scale: float, epochs: int = 3, dtype: torch.dtype = torch.float32, **settings):
    """The problem with alpha and beta both ``scale`` times theirs, optimised by L-BFGS."""
    extractor, _, content, style = problem
    extractor = copy.deepcopy(extractor).to(dtype)
    content, style = content.to(dtype), style.to(dtype)
    loss = StyleTransferLoss(extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers={"conv1_1": 1.0, "conv2_1": 1.0, "conv3_1": 1.0},
                             content_weight=scale, style_weight=100.0 * scale)
    return optimize(loss, content, OptimizerSettings("lbfgs", max_iter=10, **settings), epochs=epochs,
                    progress=False, preprocess=extractor.preprocess)


def test_the_same_problem_at_any_scale_takes_the_same_path(problem):
    """alpha and beta 1e-4 and 1e4 times theirs: L-BFGS makes the same steps, to float64's rounding (without
    normalising, the small loss's gradient fell under torch's absolute tolerance and every epoch ended at its
    first evaluation)."""
    small, large = (_scaled_run(problem, scale, dtype=torch.float64) for scale in (1e-4, 1e4))
    assert small.evaluations == large.evaluations > 25
    torch.testing.assert_close(small.image, large.image, atol=1e-8, rtol=0)
    ratios = [b["total"] / a["total"] for a, b in zip(small.history, large.history, strict=True)]
    assert ratios == pytest.approx([1e8] * len(ratios), rel=1e-6)  # the records keep each run's own scale (the
    # weights are float32)


def test_a_converged_run_stops_and_says_so(problem):
    settings = {"convergence_tolerance": 0.1, "convergence_window": 10}
    converged = _scaled_run(problem, 1.0, epochs=40, **settings)
    assert converged.stopped == CONVERGED and converged.history[-1]["epoch"] < 40
    lowest = np.minimum.accumulate([r["total"] for r in converged.history[:-1]])
    gain = lowest[-11] - lowest[-1]  # over the last window of evaluations, under 10 % of the loss
    assert gain <= 0.1 * lowest[-1] and gain <= 0.1 * (lowest[0] - lowest[-1])
    # the same run given fewer epochs than it needed ends by budget
    cut = _scaled_run(problem, 1.0, epochs=converged.history[-1]["epoch"] - 1, **settings)
    assert cut.stopped == BUDGET and cut.history[-1]["epoch"] == converged.history[-1]["epoch"] - 1


def test_without_a_convergence_tolerance_every_epoch_runs(problem):
    """jcjohnson/neural-style's behaviour: tolerances off, every iteration of every epoch."""
    result = _scaled_run(problem, 1.0, epochs=8, convergence_tolerance=None, tolerance_grad=0.0,
                         tolerance_change=0.0, line_search=None)
    assert result.stopped == BUDGET
    assert result.evaluations == 8 * 10 + 1  # a fixed step: one evaluation per iteration, then the kept image's


def test_progress_bar_counts_evaluations_with_content_and_style(tmp_path, nst):
    done = single_run(nst, tmp_path, "tracking=none", *FOLDER_RUN, "progress=true")
    assert done.returncode == 0, done.stderr[-3000:]
    evaluations = len(pd.read_csv(tmp_path / "run" / "losses.csv"))
    # the planned budget: 2 epochs x 9 L-BFGS evaluations (max_iter 4 + line-search room) + the final one
    assert re.search(r"\| \d+/19 \[", done.stderr), done.stderr[-2000:]
    # L-BFGS stops early here: the bar ends full at the evaluations actually made
    assert f"{evaluations}/{evaluations} [" in done.stderr
    assert "eval/s" in done.stderr and "content=" in done.stderr and "style=" in done.stderr
    assert "epoch" not in done.stderr and "loss=" not in done.stderr


# independent trajectories ----------------------------------------------------------------------

# Batched convolutions round differently from single-image ones (measured: gradients agree to
# ~3e-6 relative); over a few steps the trajectories stay this close.
TOLERANCE = 2e-3
# Adam's normalised step turns a rounding difference into a whole step early on: 2.0e-3 after 8 steps
# on an AMD EPYC
ADAM_TOLERANCE = 4e-3


def independent(loss, content, backbone, beta, settings, epochs, tv=0.0):
    loss.style_weight, loss.tv_weight = beta, tv
    try:
        return optimize(loss, content, settings, epochs, progress=False,
                        preprocess=backbone.extractor.preprocess)
    finally:
        loss.style_weight, loss.tv_weight = 1.0, 0.0


def batched(loss, content, backbone, betas, settings, epochs, tv=None):
    weights = weights_for(betas, tv)
    return optimize_batch(lambda x, members: loss(x, weights.select(members)), [content] * len(betas),
                          settings, epochs, progress=False, preprocess=backbone.extractor.preprocess)


def test_batched_adam_equals_independent_runs(batch_setup):
    backbone, content, loss = batch_setup
    betas, lrs = [1.0, 100.0, 1e4], [0.01, 0.03, 0.02]
    settings = [OptimizerSettings(name="adam", lr=lr, max_iter=8, space="pixel") for lr in lrs]
    together = batched(loss, content, backbone, betas, settings, [1, 1, 1])
    for beta, s, result in zip(betas, settings, together, strict=True):
        alone = independent(loss, content, backbone, beta, s, 1)
        assert result.evaluations == alone.evaluations == 8 + 1  # 8 steps, then the kept image's losses
        # Adam moves every pixel by about lr a step, whatever its gradient's size: a rounding difference in a
        # gradient near zero can flip a step, so a pixel may differ by up to one step (7.9e-3 at lr 0.01 on a Xeon)
        assert (result.image - alone.image).abs().max() < s.lr
        assert result.final["total"] == pytest.approx(alone.final["total"], rel=1e-3)
    # the members really differ: a larger beta ends with a lower style loss
    assert together[2].final["style"] < together[0].final["style"]


LBFGS_MEMBERS = ([1.0, 100.0, 1e4],
                 [OptimizerSettings(name="lbfgs", lr=1.0, max_iter=6),
                  OptimizerSettings(name="lbfgs", lr=0.5, max_iter=6),
                  OptimizerSettings(name="lbfgs", lr=1.0, max_iter=6, line_search=None)],
                 [1, 2, 2])  # the first member leaves the batch early


def test_lbfgs_members_follow_exactly_their_independent_trajectories(batch_setup):
    """With each row evaluated on its own (no batched-conv rounding) the results are bit-identical:
    each member keeps its own L-BFGS history, line search, lr and epochs."""
    backbone, content, loss = batch_setup
    betas, settings, epochs = LBFGS_MEMBERS
    weights = weights_for(betas)

    def row_by_row(images, members):
        rows = [loss(images[i:i + 1], weights.select([m])) for i, m in enumerate(members)]
        return type(rows[0])(*(torch.cat([getattr(r, f) for r in rows]) for f in ("total", "content", "style", "tv")),
                             {k: torch.cat([r.content_layers[k] for r in rows]) for k in rows[0].content_layers},
                             {k: torch.cat([r.style_layers[k] for r in rows]) for k in rows[0].style_layers})

    together = optimize_batch(row_by_row, [content] * 3, settings, epochs, progress=False,
                              preprocess=backbone.extractor.preprocess)
    for beta, s, e, result in zip(betas, settings, epochs, together, strict=True):
        alone = independent(loss, content, backbone, beta, s, e)
        assert result.evaluations == alone.evaluations
        assert torch.equal(result.image, alone.image)
        assert [r["total"] for r in result.history] == [r["total"] for r in alone.history]


def test_batched_lbfgs_matches_independent_runs_within_tolerance(batch_setup):
    """Through one batched pass in fp32, rounding differences (~3e-6) grow along L-BFGS's
    curvature pairs; after 6-12 iterations at 32 px images agree within 0.05 and losses within
    3 % (measured with torch 2.14: 0.031 and 1.9 % for the accepted images; 0.021 for the last
    evaluated ones, which for the fixed-step member are one step short of the accepted one)."""
    backbone, content, loss = batch_setup
    betas, settings, epochs = LBFGS_MEMBERS
    together = batched(loss, content, backbone, betas, settings, epochs)
    for beta, s, e, result in zip(betas, settings, epochs, together, strict=True):
        alone = independent(loss, content, backbone, beta, s, e)
        assert result.evaluations == alone.evaluations
        assert (result.image - alone.image).abs().max() < 0.05
        assert result.final["total"] == pytest.approx(alone.final["total"], rel=3e-2)


def test_batched_lbfgs_equals_independent_runs_in_float64():
    """The fp32 gap above is rounding, not shared state: in float64 (rounding ~1e-16) batched
    members end on their independent images to 1e-10 after the same number of evaluations."""
    torch.manual_seed(0)
    backbone = load_backbone("random", ["conv4_2", *STYLE_LAYERS])
    backbone.extractor.double()
    content, style = torch.rand(1, 3, 32, 32, dtype=torch.float64), torch.rand(1, 3, 32, 32, dtype=torch.float64)
    loss = StyleTransferLoss(backbone.extractor, content, style, content_layers={"conv4_2": 1.0},
                             style_layers=dict.fromkeys(STYLE_LAYERS, 1.0))
    betas, settings, epochs = LBFGS_MEMBERS
    together = batched(loss, content, backbone, betas, settings, epochs)
    for beta, s, e, result in zip(betas, settings, epochs, together, strict=True):
        alone = independent(loss, content, backbone, beta, s, e)
        assert result.image.dtype == torch.float64
        assert result.evaluations == alone.evaluations
        assert (result.image - alone.image).abs().max() < 1e-10
        assert result.final["total"] == pytest.approx(alone.final["total"], rel=1e-6)
    assert together[0].final["total"] != pytest.approx(together[2].final["total"], rel=0.1)  # they differ


def test_a_member_with_a_non_finite_loss_fails_alone(batch_setup):
    backbone, content, loss = batch_setup
    settings = [OptimizerSettings(name="adam", lr=0.01, max_iter=5, space="pixel"),
                OptimizerSettings(name="adam", lr=1e30, max_iter=5, space="pixel")]
    good, bad = batched(loss, content, backbone, [100.0, 100.0], settings, [1, 1])
    assert isinstance(bad, NonFiniteLossError) and bad.evaluation == 2
    alone = independent(loss, content, backbone, 100.0, settings[0], 1)
    assert good.evaluations == 5 + 1 and (good.image - alone.image).abs().max() < TOLERANCE  # + the kept image


def test_an_interrupt_unwinds_every_member_thread(batch_setup):
    backbone, content, loss = batch_setup
    calls = []

    def interrupted(images, members):
        calls.append(len(members))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return loss(images)

    before = other_threads()
    with pytest.raises(KeyboardInterrupt):
        optimize_batch(interrupted, [content] * 3, [OptimizerSettings(name="lbfgs", max_iter=10)] * 3,
                       [2] * 3, progress=False)
    assert calls == [3, 3, 3]
    assert other_threads() == before


def test_fixed_step_and_adam_members_are_evaluated_together_on_this_thread_alone(batch_setup):
    """No member threads: every evaluation of a lock-step batch has all its members, on the caller's thread."""
    backbone, content, loss = batch_setup
    weights = weights_for([1.0, 100.0, 1e4])
    seen = []

    def counted(images, members):
        here = threading.current_thread()
        seen.append((tuple(members), here is threading.main_thread(), sorted(other_threads() - {here.name})))
        return loss(images, weights.select(members))

    settings = [OptimizerSettings(name="lbfgs", max_iter=4, line_search=None),
                OptimizerSettings(name="adam", lr=0.02, max_iter=4, space="pixel"),
                OptimizerSettings(name="lbfgs", max_iter=4, line_search=None, lr=0.5)]
    results = optimize_batch(counted, [content] * 3, settings, [2, 2, 2], progress=False,
                             preprocess=backbone.extractor.preprocess)
    assert [r.evaluations for r in results] == [2 * 4 + 1] * 3
    assert seen == [((0, 1, 2), True, [])] * (2 * 4 + 1)
    alone = independent(loss, content, backbone, 100.0, settings[1], 2)
    assert (results[1].image - alone.image).abs().max() < ADAM_TOLERANCE


def test_an_interrupt_inside_one_members_step_unwinds_the_others(batch_setup, monkeypatch):
    """A Ctrl-C that lands in a member's optimiser code (not in the batched evaluation) still stops the batch."""
    from nst.engine import optimization

    backbone, content, loss = batch_setup
    accept, run, ended = optimization._Trajectory.accept, optimization._Trajectory.run, []

    def interrupted_accept(member):
        if member.index == 1:
            raise KeyboardInterrupt
        accept(member)

    def recorded_run(member):
        try:
            run(member)
        finally:
            ended.append(member.index)

    monkeypatch.setattr(optimization._Trajectory, "accept", interrupted_accept)
    monkeypatch.setattr(optimization._Trajectory, "run", recorded_run)
    with pytest.raises(KeyboardInterrupt):
        batched(loss, content, backbone, [1.0, 100.0, 1e4],
                [OptimizerSettings(name="adam", lr=0.02, max_iter=3, space="pixel")] * 3, [2] * 3)
    assert sorted(ended) == [0, 1, 2]


def test_a_batch_keeps_the_callers_grad_mode(batch_setup):
    """Members suspended inside ``optimizer.step`` (no_grad) share the thread's grad mode with the caller."""
    backbone, content, loss = batch_setup
    settings = [OptimizerSettings(name="lbfgs", max_iter=3)] * 2
    expected = batched(loss, content, backbone, [1.0, 100.0], settings, [2, 2])
    with torch.no_grad():
        inside = batched(loss, content, backbone, [1.0, 100.0], settings, [2, 2])
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    for a, b in zip(expected, inside, strict=True):
        assert a.evaluations == b.evaluations and torch.equal(a.image, b.image)
