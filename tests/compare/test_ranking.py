"""Human judgements as data: the Bradley–Terry fit with ties, pair selection, records, agreement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from nst.compare import ranking
from nst.compare.ranking import Judgement

TIME = "2026-11-26T19:30:00.000+00:00"
ANSWER = ("left", "right", "tie")


def simulate(theta, nu, m, rng, runs=None):
    """``m`` judgements drawn from Davidson's model with log strengths ``theta`` and tie parameter ``nu``."""
    theta = np.asarray(theta, dtype=float)
    runs = runs or [f"r{k}" for k in range(len(theta))]
    i = rng.integers(len(theta), size=m)
    j = (i + rng.integers(1, len(theta), size=m)) % len(theta)
    scores = np.stack([theta[i], theta[j], np.log(nu) + (theta[i] + theta[j]) / 2], axis=1)
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    u = rng.random(m)
    outcome = (u > p[:, 0]).astype(int) + (u > p[:, 0] + p[:, 1])
    return [(runs[a], runs[b], ANSWER[o]) for a, b, o in zip(i, j, outcome, strict=True)]


# --- the fit -----------------------------------------------------------------------------------


def test_the_fit_recovers_the_true_order_and_counts_each_runs_answers():
    theta = [0.3, -1.5, 1.5, -0.3, 0.9, -0.9]
    judgements = simulate(theta, 0.8, 600, np.random.default_rng(0))
    judgements += [("r0", "r1", "skip")] * 50  # skips count for nothing
    assert sum(answer == "tie" for *_, answer in judgements) > 60

    fit = ranking.fit(judgements, runs=[f"r{k}" for k in range(6)])
    assert fit.order == ["r2", "r4", "r0", "r3", "r5", "r1"]
    assert abs(fit.scores.sum()) < 1e-9  # centred
    assert np.corrcoef(fit.scores, theta)[0, 1] > 0.98
    assert 0.5 < fit.tie < 1.2  # Davidson's nu, drawn at 0.8

    table = fit.table().set_index("run_id")
    assert list(table.index) == fit.order and list(table["rank"]) == [1, 2, 3, 4, 5, 6]
    decided = [j for j in judgements if j[2] != "skip"]
    for run in table.index:
        wins = sum((a == run and x == "left") or (b == run and x == "right") for a, b, x in decided)
        losses = sum((a == run and x == "right") or (b == run and x == "left") for a, b, x in decided)
        ties = sum(run in (a, b) and x == "tie" for a, b, x in decided)
        row = table.loc[run]
        assert (row.wins, row.losses, row.ties, row.comparisons) == (wins, losses, ties, wins + losses + ties)
        assert row.low < row.score < row.high
        assert row.high - row.low == pytest.approx(2 * 1.96 * row.se, rel=1e-3)


def test_the_95_percent_intervals_cover_the_true_strengths_at_about_that_rate():
    theta = np.array([-1.5, -0.9, -0.3, 0.3, 0.9, 1.5])
    truth = theta - theta.mean()
    runs = [f"r{k}" for k in range(6)]
    estimates, errors = [], []
    for seed in range(50):
        fit = ranking.fit(simulate(theta, 0.5, 300, np.random.default_rng(seed)), runs=runs)
        estimates.append(fit.scores)
        errors.append(fit.standard_errors)
    estimates, errors = np.array(estimates), np.array(errors)
    coverage = np.mean(np.abs(estimates - truth) <= 1.96 * errors)
    assert 0.85 <= coverage <= 0.99, coverage
    # the standard errors are the spread of the estimates, neither smaller nor larger
    ratio = errors.mean(axis=0) / estimates.std(axis=0)
    assert np.all((ratio > 0.7) & (ratio < 1.4)), ratio


def test_ties_are_evidence_of_closeness_and_extreme_runs_stay_finite():
    # a pair only ever tied is judged equal; a run that won everything gets a finite score
    fit = ranking.fit([("a", "b", "tie")] * 10 + [("c", "a", "left")] * 5 + [("b", "c", "right")] * 5)
    score = dict(zip(fit.runs, fit.scores, strict=True))
    assert score["a"] == pytest.approx(score["b"], abs=1e-6)
    assert np.isfinite(score["c"]) and score["c"] > score["a"] + 1
    # more ties between two runs: smaller uncertainty of their difference, not a win each way
    few = ranking.fit([("a", "b", "left"), ("a", "b", "right")] + [("a", "b", "tie")] * 2)
    many = ranking.fit([("a", "b", "left"), ("a", "b", "right")] + [("a", "b", "tie")] * 20)
    assert many.standard_errors[0] < few.standard_errors[0]
    assert many.tie > few.tie


def test_a_run_never_judged_keeps_the_priors_uncertainty_and_unknown_runs_are_refused():
    judgements = [("a", "b", "left")] * 8 + [("b", "a", "left")] * 2
    fit = ranking.fit(judgements, runs=["a", "b", "c"])
    assert fit.comparisons.tolist() == [10, 10, 0]
    # c's score is the prior's alone: var(c − mean) = (2/3)² / prior + var(a + b) / 9, var(a + b) = 2 / prior
    assert fit.standard_errors[2] == pytest.approx(np.sqrt(2 / 3 / ranking.PRIOR), rel=1e-6)
    assert fit.standard_errors[2] > 1.5 * fit.standard_errors[0] and fit.scores[2] == pytest.approx(0, abs=1e-6)
    assert fit.order[0] == "a"
    with pytest.raises(ValueError, match="not under review: z"):
        ranking.fit(judgements + [("a", "z", "tie")], runs=["a", "b"])
    with pytest.raises(ValueError, match="answer"):
        ranking.fit([("a", "b", "up")])
    assert ranking.fit([]).runs == ()


# --- pair selection ------------------------------------------------------------------------------


def test_every_run_is_shown_before_any_is_shown_twice():
    runs = [f"run{k}" for k in range(7)]
    for seed in range(5):
        rng = np.random.default_rng(seed)
        judgements, shown = [], []
        for _ in range(4):
            left, right = ranking.next_pair(runs, judgements, rng)
            shown += [left, right]
            judgements.append((left, right, "left"))
        assert len(set(shown[:6])) == 6 and set(shown) == set(runs), shown
        # then each run is shown a second time before any a third time
        for _ in range(3):
            left, right = ranking.next_pair(runs, judgements, rng, warmup=2)
            shown += [left, right]
            judgements.append((left, right, "tie"))
        assert max(shown.count(run) for run in runs) == 2, shown


def test_after_the_warmup_the_most_uncertain_order_comes_next():
    judgements = ([("B", "C", "left"), ("B", "C", "right")] + [("A", "B", "left")] * 10
                  + [("A", "C", "left")] * 10 + [("B", "D", "left")] * 10 + [("C", "D", "left")] * 10)
    left, right = ranking.next_pair("ABCD", judgements, np.random.default_rng(0))
    assert {left, right} == {"B", "C"}

    # two runs already compared forty times and found equal: a seldom-seen run is more informative
    judgements = [("A", "B", "left"), ("A", "B", "right")] * 20 + [("C", "A", "left"), ("B", "C", "right")]
    gains = ranking.pair_gains(ranking.fit(judgements)).set_index(["first", "second"])
    assert gains.loc[("A", "B"), "p_wrong"] == pytest.approx(0.5)  # A–B's order is the least known...
    assert gains.loc[("A", "C"), "p_wrong"] < 0.45
    for seed in range(5):  # ...but one more A–B judgement would tell little
        assert "C" in ranking.next_pair("ABC", judgements[-1:] + judgements[:-1], np.random.default_rng(seed))


def test_pairs_are_deterministic_for_a_seed_with_balanced_sides_and_never_repeat_the_last_at_once():
    runs = ["a", "b", "c", "d"]
    judgements = [("a", "b", "left"), ("c", "d", "right")]
    assert ranking.next_pair(runs, judgements, np.random.default_rng(7)) == ranking.next_pair(
        runs, judgements, np.random.default_rng(7))
    first_shown = {ranking.next_pair(["a", "b"], [], np.random.default_rng(seed))[0] for seed in range(20)}
    assert first_shown == {"a", "b"}
    # a skipped pair is not shown again at once (though its runs still have the fewest comparisons)
    judgements = [("a", "c", "left"), ("a", "d", "left"), ("b", "d", "left"), ("c", "b", "skip")]
    for seed in range(10):
        assert set(ranking.next_pair(runs, judgements, np.random.default_rng(seed))) != {"b", "c"}
    with pytest.raises(ValueError, match="two runs"):
        ranking.next_pair(["a"], [], np.random.default_rng(0))


def test_each_run_is_shown_on_each_side_about_as_often_and_a_pair_comes_back_swapped():
    """300 simulated judgements of 6 runs (one much stronger, so the selector keeps showing it): every run is
    on the left for 40-60 % of its showings, and a pair shown again has its sides swapped."""
    theta = dict(zip("abcdef", [3.0, 0.5, 0.3, 0.0, -0.3, -0.5], strict=True))
    rng, nature = np.random.default_rng(5), np.random.default_rng(105)
    judgements, last_sides = [], {}
    for _ in range(300):
        left, right = ranking.next_pair(list(theta), judgements, rng)
        pair = frozenset((left, right))
        assert last_sides.get(pair) != (left, right), "a pair came back with the same sides"
        last_sides[pair] = (left, right)
        ((first, _, answer),) = simulate([theta[left], theta[right]], 0.5, 1, nature, runs=[left, right])
        if first != left:  # the simulated judgement as this page's sides show it
            answer = {"left": "right", "right": "left"}.get(answer, answer)
        judgements.append((left, right, answer))
    for run in theta:
        shown = [left == run for left, right, _ in judgements if run in (left, right)]
        assert 0.4 <= sum(shown) / len(shown) <= 0.6, (run, sum(shown), len(shown))


def test_a_simulated_reviewer_guided_by_the_selector_ranks_six_runs_in_a_few_dozen_judgements():
    # six runs a step of 1 apart in log strength (of two neighbours, the better preferred e : 1
    # when not tied): 40 judgements order them with Kendall's tau >= 0.7 for every one of 20 seeds
    theta = dict(zip("abcdef", [2.5, 1.5, 0.5, -0.5, -1.5, -2.5], strict=True))
    rng, nature = np.random.default_rng(3), np.random.default_rng(103)
    judgements = []
    for _ in range(40):
        left, right = ranking.next_pair(list(theta), judgements, rng)
        judgements += simulate([theta[left], theta[right]], 0.5, 1, nature, runs=[left, right])
    fit = ranking.fit(judgements, runs=list(theta))
    assert stats.kendalltau(fit.scores, list(theta.values())).statistic >= 0.7
    assert min(fit.comparisons) >= 4  # no run left aside


# --- judgement records ---------------------------------------------------------------------------


def test_a_judgement_round_trips_through_one_json_line():
    made = Judgement.new("run-1", "run-2", "tie", "Ada")
    line = made.to_json()
    assert "\n" not in line and json.loads(line)["left"] == "run-1"
    assert Judgement.from_json(line) == made
    assert Judgement.from_json(line.encode()) == made
    assert Judgement.new("run-1", "run-2", "tie", "Ada").id != made.id
    assert made.time.endswith("+00:00")
    record = Judgement("x", "y", "right", "Bo", "2026-11-26T19:30:00Z", id="abc")
    assert (record.winner, record.loser, record.pair) == ("y", "x", ("x", "y"))
    assert Judgement("y", "x", "skip", "Bo", TIME).winner is None
    lines = [made.to_json(), "", record.to_json()]
    assert ranking.read_lines(lines) == [made, record]
    other = Judgement("run-2", "x", "left", "Bo", TIME)
    fit = ranking.fit([made, other, Judgement("x", "run-1", "skip", "Bo", TIME)])
    assert fit.runs == ("run-1", "run-2", "x") and fit.comparisons.tolist() == [1, 2, 1]


@pytest.mark.parametrize(("change", "message"), [
    ({"answer": "up"}, "answer must be one of left, right, tie, skip"),
    ({"right": "run-1"}, "two different runs"),
    ({"reviewer": " "}, "reviewer must be a non-empty string"),
    ({"left": 3}, "left run id must be a non-empty string"),
    ({"time": "yesterday"}, "ISO 8601"),
    ({"time": "2026-11-26T19:30:00"}, "time zone"),
    ({"id": ""}, "id must be"),
])
def test_bad_judgements_are_refused(change, message):
    fields = {"left": "run-1", "right": "run-2", "answer": "left", "reviewer": "Ada", "time": TIME, "id": "1"}
    with pytest.raises(ValueError, match=message):
        Judgement(**{**fields, **change})
    with pytest.raises(ValueError, match=message):
        Judgement.from_json(json.dumps({**fields, **change}))


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "one JSON object"),
    ('["left"]', "one JSON object, not list"),
    (json.dumps({"left": "a", "right": "b", "answer": "left", "reviewer": "Ada", "time": TIME}), "missing id"),
    (json.dumps({"left": "a", "right": "b", "answer": "left", "reviewer": "Ada", "time": TIME, "id": "1", "x": 1}),
     "unknown x"),
])
def test_malformed_lines_are_refused_and_named_by_number(line, message):
    with pytest.raises(ValueError, match=message):
        Judgement.from_json(line)
    good = Judgement("a", "b", "tie", "Ada", TIME, id="0").to_json()
    with pytest.raises(ValueError, match=f"line 2: .*{message}"):
        ranking.read_lines([good, line])


# --- agreement and correlation ---------------------------------------------------------------------


def test_identical_reviewers_agree_fully_and_opposite_ones_not_at_all():
    base = simulate([1.0, 0.4, 0.0, -0.5, -1.0], 0.5, 60, np.random.default_rng(1))
    ada = [Judgement(a, b, x, "Ada", TIME, id=f"ada{k}") for k, (a, b, x) in enumerate(base)]
    # Bo saw the same pairs with the sides swapped and answered the same way
    flip = {"left": "right", "right": "left", "tie": "tie"}
    bo = [Judgement(b, a, flip[x], "Bo", TIME, id=f"bo{k}") for k, (a, b, x) in enumerate(base)]
    same = ranking.agreement(ada, bo)
    assert same.pairs == 10 and same.share == 1.0 and same.kappa == pytest.approx(1.0) and same.tau == pytest.approx(1.0)

    # Cy prefers what the others rejected
    cy = [Judgement(a, b, flip[x], "Cy", TIME, id=f"cy{k}") for k, (a, b, x) in enumerate(base)]
    opposite = ranking.agreement(ada, cy)
    verdicts = ranking._verdicts(base)
    assert opposite.share == pytest.approx(np.mean([v == 0 for v in verdicts.values()]))
    assert opposite.tau == pytest.approx(-1.0)

    table = ranking.agreement_table(ada + bo + cy).set_index(["reviewer_a", "reviewer_b"])
    assert table.loc[("Ada", "Bo"), "share"] == 1.0 and table.loc[("Bo", "Cy"), "tau"] == pytest.approx(-1.0)
    assert np.isnan(ranking.agreement(ada[:1], bo[1:2]).share) or ada[0].pair == bo[1].pair


def test_rank_correlation_of_a_metric_with_the_human_scores():
    human = {"a": 1.2, "b": 0.3, "c": -0.1, "d": -1.4}
    assert ranking.rank_correlation(human, {"a": 0.9, "b": 0.8, "c": 0.1, "d": 0.0}).rho == pytest.approx(1.0)
    loss = ranking.rank_correlation(human, {"a": 1.0, "b": 2.0, "c": 30.0, "d": 400.0, "e": 1.0})
    assert loss.rho == pytest.approx(-1.0) and loss.n == 4
    partial = ranking.rank_correlation(human, {"a": 3.0, "b": 1.0, "c": 2.0, "d": float("nan")})
    assert partial.n == 3 and partial.rho == pytest.approx(0.5)
    assert np.isnan(ranking.rank_correlation(human, {"a": 1.0, "b": 2.0}).rho)


def test_excluded_pairs_are_never_drawn_unless_nothing_else_is_left():
    runs = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    judgements = []
    for k in range(40):
        left, right = ranking.next_pair(runs, judgements, rng, exclude=[("b", "a")])
        assert {left, right} != {"a", "b"}
        judgements.append((left, right, ("left", "right", "tie")[k % 3]))
    assert set(ranking.next_pair(["a", "b"], [], rng, exclude=[("a", "b")])) == {"a", "b"}
