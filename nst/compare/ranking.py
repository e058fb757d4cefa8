"""Human judgements as data: blind pairwise comparisons turned into a ranking with uncertainty.

A reviewer sees two results side by side and answers left, right, tie or skip. This module
is the pure part of ``nst-review`` (numpy, SciPy and pandas only; no MLflow, no Hydra):

- ``Judgement``: one answer as a frozen record, checked, to and from one JSON line;
- ``fit``: a Bradley–Terry model with ties (Davidson 1970) fitted on the judgements, each
  run's score (log strength, centred) with its standard error and 95 % interval;
- ``next_pair``: which two runs to show next (every run early, then the most uncertain order);
- ``agreement`` between reviewers and ``rank_correlation`` of a metric with the human ranking.

The model. Run i has log strength θ_i and the tie parameter is ν = exp(η). Between i and j

    P(i preferred) = e^θi / D,   P(tie) = ν e^((θi+θj)/2) / D,   D = e^θi + e^θj + ν e^((θi+θj)/2).

Without ties it is the plain Bradley–Terry model; a tie is evidence that two runs are close,
not one win each way. The fit is the maximum a posteriori estimate under a weak Gaussian prior
N(0, 1/``prior``) on each θ_i and on η (it makes a run that won every comparison finite and
fixes the free shift: the optimum has Σθ = 0), found by ``scipy.optimize.minimize``
(trust-exact) with the exact gradient and Hessian. The Hessian's inverse at the optimum (the
Laplace approximation) gives the covariance of the centred scores, hence standard errors,
intervals, and the uncertainty of each pair's order that ``next_pair`` uses.

Why SciPy and not ``choix``: choix 0.3.5 has no model of ties and only its EP fit returns a
covariance, so a tie would go in as two wins (intervals far too narrow) or be dropped (evidence
thrown away). The prior's precision ``PRIOR`` = 0.3 (sd 1.8 on a log strength) keeps the
intervals honest from 40 judgements on. The comparisons behind both choices are in
docs/pages/decisions.md.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from scipy import optimize, special, stats

LEFT, RIGHT, TIE, SKIP = "left", "right", "tie", "skip"
ANSWERS = (LEFT, RIGHT, TIE, SKIP)
# the prior's precision on each log strength (and on log ν): N(0, 1/0.3), sd 1.8 (see the docstring)
PRIOR = 0.3
Z95 = float(stats.norm.ppf(0.975))
_FIELDS = ("id", "left", "right", "answer", "reviewer", "time")


# --- judgement records -------------------------------------------------------------------


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a judgement's {name} must be a non-empty string, not {value!r}")
    return value


def _utc_iso(value) -> str:
    text = _text("time", value)
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise ValueError(f"a judgement's time must be an ISO 8601 date and time, not {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"a judgement's time must name its time zone (e.g. +00:00), not {text!r}")
    return text


@dataclass(frozen=True)
class Judgement:
    """One answer of one reviewer: ``left`` and ``right`` are the runs as they were shown.

    ``answer`` is ``left``, ``right``, ``tie`` or ``skip`` (a skip counts for nothing);
    ``time`` is ISO 8601 with its time zone; ``id`` is unique (a replay has the same id).
    """

    left: str
    right: str
    answer: str
    reviewer: str
    time: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self):
        _text("left run id", self.left)
        _text("right run id", self.right)
        _text("reviewer", self.reviewer)
        _text("id", self.id)
        _utc_iso(self.time)
        if self.answer not in ANSWERS:
            raise ValueError(f"a judgement's answer must be one of {', '.join(ANSWERS)}, not {self.answer!r}")
        if self.left == self.right:
            raise ValueError(f"a judgement compares two different runs, not {self.left!r} with itself")

    @classmethod
    def new(cls, left: str, right: str, answer: str, reviewer: str) -> Judgement:
        """A judgement made now (UTC), with a fresh id."""
        now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        return cls(left=left, right=right, answer=answer, reviewer=reviewer, time=now)

    @property
    def winner(self) -> str | None:
        return {LEFT: self.left, RIGHT: self.right}.get(self.answer)

    @property
    def loser(self) -> str | None:
        return {LEFT: self.right, RIGHT: self.left}.get(self.answer)

    @property
    def pair(self) -> tuple[str, str]:
        """The two runs whatever their positions (sorted)."""
        return tuple(sorted((self.left, self.right)))

    def to_json(self) -> str:
        """One line of JSON (no newline), keys in a fixed order."""
        return json.dumps({name: getattr(self, name) for name in _FIELDS}, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str | bytes) -> Judgement:
        try:
            data = json.loads(line)
        except (TypeError, ValueError) as error:
            raise ValueError(f"a judgement must be one JSON object: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"a judgement must be one JSON object, not {type(data).__name__}")
        missing, unknown = set(_FIELDS) - set(data), set(data) - set(_FIELDS)
        if missing or unknown:
            parts = ([f"missing {', '.join(sorted(missing))}"] if missing else []) + (
                [f"unknown {', '.join(sorted(unknown))}"] if unknown else [])
            raise ValueError(f"a judgement has the fields {', '.join(_FIELDS)}: {'; '.join(parts)}")
        return cls(**data)


def read_lines(lines: Iterable[str]) -> list[Judgement]:
    """The judgements of a JSON-lines file (blank lines skipped); a bad line raises naming its number."""
    result = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            result.append(Judgement.from_json(line))
        except ValueError as error:
            raise ValueError(f"line {number}: {error}") from None
    return result


# --- the Bradley–Terry–Davidson fit --------------------------------------------------------


def _triples(judgements) -> list[tuple[str, str, str]]:
    """(left, right, answer) of each judgement, a ``Judgement`` or a 3-tuple; skips left out."""
    triples = []
    for item in judgements:
        left, right, answer = (item.left, item.right, item.answer) if isinstance(item, Judgement) else item
        if answer not in ANSWERS:
            raise ValueError(f"an answer must be one of {', '.join(ANSWERS)}, not {answer!r}")
        if left == right:
            raise ValueError(f"a judgement compares two different runs, not {left!r} with itself")
        if answer != SKIP:
            triples.append((left, right, answer))
    return triples


def _counts(triples, index: Mapping[str, int]):
    """Per unordered pair (i < j): wins of i, wins of j, ties."""
    table: dict[tuple[int, int], list[int]] = {}
    for left, right, answer in triples:
        i, j = index[left], index[right]
        if answer == RIGHT:
            i, j = j, i  # i is the winner
        key = (i, j) if i < j else (j, i)
        row = table.setdefault(key, [0, 0, 0])
        if answer == TIE:
            row[2] += 1
        else:
            row[0 if key[0] == i else 1] += 1
    pairs = np.array(sorted(table), dtype=int).reshape(-1, 2)
    counts = np.array([table[tuple(key)] for key in pairs], dtype=float).reshape(-1, 3)
    return pairs, counts


def _design(pairs: np.ndarray, n: int) -> np.ndarray:
    """For each pair, the three linear scores (i wins, j wins, tie) as rows over (θ_1..θ_n, η)."""
    design = np.zeros((len(pairs), 3, n + 1))
    rows = np.arange(len(pairs))
    design[rows, 0, pairs[:, 0]] = 1.0
    design[rows, 1, pairs[:, 1]] = 1.0
    design[rows, 2, pairs[:, 0]] = 0.5
    design[rows, 2, pairs[:, 1]] = 0.5
    design[:, 2, n] = 1.0
    return design


def _outcome_probabilities(scores: np.ndarray) -> np.ndarray:
    return np.exp(scores - special.logsumexp(scores, axis=-1, keepdims=True))


@dataclass(frozen=True)
class Fit:
    """The fitted model: ``runs`` in the order given, their centred ``scores`` and ``covariance``."""

    runs: tuple[str, ...]
    scores: np.ndarray
    covariance: np.ndarray
    tie: float  # Davidson's ν: P(tie) between two equal runs is ν / (2 + ν)
    wins: np.ndarray
    losses: np.ndarray
    ties: np.ndarray

    @property
    def standard_errors(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    @property
    def comparisons(self) -> np.ndarray:
        return self.wins + self.losses + self.ties

    @property
    def order(self) -> list[str]:
        """Run ids, best first (equal scores: by the order given)."""
        return [self.runs[i] for i in np.argsort(-self.scores, kind="stable")]

    def table(self) -> pd.DataFrame:
        """One row per run, best first: rank, score, se, low, high (95 %), wins, losses, ties, comparisons."""
        se = self.standard_errors
        frame = pd.DataFrame({
            "run_id": self.runs, "score": self.scores, "se": se,
            "low": self.scores - Z95 * se, "high": self.scores + Z95 * se,
            "wins": self.wins.astype(int), "losses": self.losses.astype(int), "ties": self.ties.astype(int),
            "comparisons": self.comparisons.astype(int),
        })
        frame = frame.iloc[np.argsort(-self.scores, kind="stable")].reset_index(drop=True)
        frame.insert(1, "rank", np.arange(1, len(frame) + 1))
        return frame

    def probabilities(self, first: str, second: str) -> tuple[float, float, float]:
        """P(first preferred), P(second preferred), P(tie) under the fitted model."""
        i, j = self.runs.index(first), self.runs.index(second)
        a, b = self.scores[i], self.scores[j]
        p = _outcome_probabilities(np.array([a, b, math.log(self.tie) + (a + b) / 2]))
        return float(p[0]), float(p[1]), float(p[2])


def fit(judgements: Iterable, runs: Sequence[str] | None = None, prior: float = PRIOR) -> Fit:
    """Fit the Bradley–Terry model with ties on ``judgements`` (``Judgement``s or (left, right, answer)).

    ``runs`` lists the runs under review (a run never judged gets score 0 and the prior's
    uncertainty); by default the runs the judgements name, in order of appearance.
    """
    if prior <= 0:
        raise ValueError(f"the prior's precision must be positive, not {prior}")
    triples = _triples(judgements)
    named = list(dict.fromkeys(run for left, right, _ in triples for run in (left, right)))
    runs = tuple(dict.fromkeys(runs)) if runs is not None else tuple(named)
    index = {run: i for i, run in enumerate(runs)}
    unknown = [run for run in named if run not in index]
    if unknown:
        raise ValueError(f"judgements name runs not under review: {', '.join(unknown)}")
    n = len(runs)
    pairs, counts = _counts(triples, index)
    design = _design(pairs, n)
    totals = counts.sum(axis=1)

    def objective(x):
        scores = design @ x  # (pairs, 3)
        logp = scores - special.logsumexp(scores, axis=1, keepdims=True)
        p = np.exp(logp)
        value = -(counts * logp).sum() + 0.5 * prior * x @ x
        gradient = np.einsum("mkp,mk->p", design, totals[:, None] * p - counts) + prior * x
        return value, gradient

    def hessian(x):
        p = _outcome_probabilities(design @ x)
        weights = totals[:, None, None] * (np.einsum("mk,kl->mkl", p, np.eye(3)) - p[:, :, None] * p[:, None, :])
        return np.einsum("mkp,mkl,mlq->pq", design, weights, design) + prior * np.eye(n + 1)

    if n == 0:
        empty = np.zeros(0)
        return Fit((), empty, np.zeros((0, 0)), 1.0, empty, empty, empty)
    # the gradient grows with the number of judgements: tolerances relative to it. Close to the
    # optimum trust-exact may stop when the objective's rounding hides any further improvement.
    scale = 1.0 + totals.sum()
    result = optimize.minimize(objective, np.zeros(n + 1), jac=True, hess=hessian, method="trust-exact",
                               options={"gtol": 1e-9 * scale})
    if not result.success and np.linalg.norm(result.jac) > 1e-6 * scale:
        raise RuntimeError(f"the Bradley–Terry fit did not converge: {result.message}")
    theta = result.x[:n] - result.x[:n].mean()
    covariance = np.linalg.inv(hessian(result.x))[:n, :n]
    centring = np.eye(n) - 1.0 / n
    covariance = centring @ covariance @ centring

    wins, losses, ties = np.zeros(n), np.zeros(n), np.zeros(n)
    for (i, j), (wi, wj, t) in zip(pairs, counts, strict=True):
        wins[i] += wi
        wins[j] += wj
        losses[i] += wj
        losses[j] += wi
        ties[i] += t
        ties[j] += t
    return Fit(runs, theta, covariance, float(math.exp(result.x[n])), wins, losses, ties)


# --- which pair next -------------------------------------------------------------------------


def _shown(judgements) -> tuple[dict[str, int], tuple[str, str] | None]:
    """Comparisons per run (skips not counted) and the last pair shown (skips included)."""
    count: dict[str, int] = {}
    last = None
    for left, right, answer in ((j.left, j.right, j.answer) if isinstance(j, Judgement) else j
                                for j in judgements):
        last = tuple(sorted((left, right)))
        if answer != SKIP:
            count[left] = count.get(left, 0) + 1
            count[right] = count.get(right, 0) + 1
    return count, last


def pair_gains(result: Fit) -> pd.DataFrame:
    """Every pair of runs with how much one more judgement of it is expected to tell.

    gain = P(the fitted order of the two is wrong) × the share of the variance of their score
    difference that one more judgement removes: highest for close runs seldom compared,
    low for runs clearly apart and for close runs already compared many times.
    """
    n = len(result.runs)
    i, j = np.triu_indices(n, k=1)
    difference = result.scores[i] - result.scores[j]
    cov = result.covariance
    variance = np.clip(cov[i, i] + cov[j, j] - 2 * cov[i, j], 1e-12, None)
    wrong = stats.norm.sf(np.abs(difference) / np.sqrt(variance))
    half = difference / 2  # the probabilities depend on the difference only
    scores = np.stack([half, -half, np.full_like(half, math.log(result.tie))], axis=1)
    p = _outcome_probabilities(scores)
    # Fisher information of one judgement on d = θi − θj (the scores move by ±d/2): 1/4 for two
    # equal runs without ties, as for a logistic σ(d)
    information = (p[:, 0] + p[:, 1] - (p[:, 0] - p[:, 1]) ** 2) / 4
    share = variance * information / (1 + variance * information)
    return pd.DataFrame({"first": np.array(result.runs, dtype=object)[i],
                         "second": np.array(result.runs, dtype=object)[j],
                         "difference": difference, "sd": np.sqrt(variance),
                         "p_wrong": wrong, "gain": wrong * share})


def next_pair(runs: Sequence[str], judgements: Iterable, rng: np.random.Generator,
              warmup: int = 1, prior: float = PRIOR, exclude: Iterable[tuple[str, str]] = ()) -> tuple[str, str]:
    """The next two runs to show, as (left, right), each run's sides balanced (``_sides``).

    Until every run has ``warmup`` comparisons, the two runs with the fewest (random among
    equals, a pair not yet compared preferred); then the pair with the largest ``pair_gains``.
    The pair shown last (even if skipped) is not shown again at once while another exists, nor
    are the pairs in ``exclude`` (e.g. two identical pictures: only a tie can be answered).
    Deterministic for a seeded ``rng``.

    Choosing by expected gain orders the runs in fewer judgements than random pairs do
    (docs/pages/decisions.md). Two runs that are really equal keep their order uncertain for
    ever, so once the rest is settled they get about a third of the judgements (a stopping rule
    is the app's).
    """
    runs = list(dict.fromkeys(runs))
    if len(runs) < 2:
        raise ValueError(f"a comparison needs two runs, not {len(runs)}")
    judgements = [j for j in judgements if (j.left if isinstance(j, Judgement) else j[0]) in runs
                  and (j.right if isinstance(j, Judgement) else j[1]) in runs]
    count, last = _shown(judgements)
    seen_pairs = {tuple(sorted(t[:2])) for t in _triples(judgements)}

    candidates = [(a, b) for k, a in enumerate(runs) for b in runs[k + 1:]]
    excluded = {tuple(sorted(pair)) for pair in exclude}
    candidates = [pair for pair in candidates if tuple(sorted(pair)) not in excluded] or candidates
    if len(candidates) > 1 and last is not None:
        candidates = [pair for pair in candidates if tuple(sorted(pair)) != last]
    noise = rng.random(len(candidates))  # random order among equals

    if min(count.get(run, 0) for run in runs) < warmup:
        def key(k):
            a, b = candidates[k]
            few = sorted((count.get(a, 0), count.get(b, 0)))
            return (few[0], few[1], tuple(sorted((a, b))) in seen_pairs, noise[k])
    else:
        gains = pair_gains(fit(judgements, runs=runs, prior=prior))
        by_pair = {(a, b): g for a, b, g in zip(gains["first"], gains["second"], gains["gain"], strict=True)}

        def key(k):
            return (-round(by_pair[candidates[k]], 12), noise[k])

    first, second = candidates[min(range(len(candidates)), key=key)]
    return _sides(first, second, judgements, rng.random() < 0.5)


def _sides(a: str, b: str, judgements: Sequence, coin: bool) -> tuple[str, str]:
    """(left, right) for the pair ``a``, ``b``: a pair shown before comes back with its sides swapped; else
    the run that has been on the left more often (against the right) goes right; ``coin`` breaks a tie.
    A side can sway a judgement, so each run should be seen about as often on each."""
    last_sides, lean = None, {a: 0, b: 0}
    for left, right, _ in ((j.left, j.right, j.answer) if isinstance(j, Judgement) else j for j in judgements):
        if {left, right} == {a, b}:
            last_sides = (left, right)
        if left in lean:
            lean[left] += 1
        if right in lean:
            lean[right] -= 1
    if last_sides is not None:
        return last_sides[1], last_sides[0]
    if lean[a] != lean[b]:
        return (b, a) if lean[a] > lean[b] else (a, b)
    return (a, b) if coin else (b, a)


# --- agreement and correlation ---------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """Two reviewers: ``pairs`` of runs both judged, the ``share`` on which their verdicts match,
    Cohen's ``kappa`` of those verdicts, and Kendall's ``tau`` between their fitted rankings of the
    runs both judged (NaN where undefined)."""

    pairs: int
    share: float
    kappa: float
    tau: float


def _verdicts(judgements) -> dict[tuple[str, str], int]:
    """Per sorted pair: +1 if the first run was preferred on balance, −1 the second, 0 even."""
    balance: dict[tuple[str, str], int] = {}
    for left, right, answer in _triples(judgements):
        pair = tuple(sorted((left, right)))
        sign = 0 if answer == TIE else (1 if (left if answer == LEFT else right) == pair[0] else -1)
        balance[pair] = balance.get(pair, 0) + sign
    return {pair: int(np.sign(value)) for pair, value in balance.items()}


def agreement(first: Iterable, second: Iterable, prior: float = PRIOR) -> Agreement:
    """How far two reviewers' judgements (each a list of judgements) agree."""
    first, second = list(first), list(second)
    a, b = _verdicts(first), _verdicts(second)
    common = sorted(set(a) & set(b))
    if not common:
        return Agreement(0, math.nan, math.nan, math.nan)
    x = np.array([a[pair] for pair in common])
    y = np.array([b[pair] for pair in common])
    share = float(np.mean(x == y))
    chance = sum(np.mean(x == v) * np.mean(y == v) for v in (-1, 0, 1))
    kappa = (share - chance) / (1 - chance) if chance < 1 else math.nan  # one verdict throughout: undefined
    runs = sorted({run for pair in common for run in pair})
    tau = math.nan
    if len(runs) >= 3:
        fa = fit(_restricted(first, runs), runs=runs, prior=prior)
        fb = fit(_restricted(second, runs), runs=runs, prior=prior)
        tau = float(stats.kendalltau(fa.scores, fb.scores).statistic)
    return Agreement(len(common), share, float(kappa), tau)


def _restricted(judgements, runs):
    keep = set(runs)
    return [t for t in _triples(judgements) if t[0] in keep and t[1] in keep]


def agreement_table(judgements: Iterable[Judgement], prior: float = PRIOR) -> pd.DataFrame:
    """``agreement`` for every two reviewers: reviewer_a, reviewer_b, pairs, share, kappa, tau."""
    by_reviewer: dict[str, list[Judgement]] = {}
    for judgement in judgements:
        by_reviewer.setdefault(judgement.reviewer, []).append(judgement)
    names = sorted(by_reviewer)
    rows = []
    for k, a in enumerate(names):
        for b in names[k + 1:]:
            result = agreement(by_reviewer[a], by_reviewer[b], prior=prior)
            rows.append({"reviewer_a": a, "reviewer_b": b, "pairs": result.pairs, "share": result.share,
                         "kappa": result.kappa, "tau": result.tau})
    return pd.DataFrame(rows, columns=["reviewer_a", "reviewer_b", "pairs", "share", "kappa", "tau"])


def _finite(value) -> bool:
    try:
        return not isinstance(value, (bool, str)) and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Correlation:
    """Spearman's ρ between a metric and the human scores over ``n`` runs (NaN under 3 runs)."""

    rho: float
    pvalue: float
    n: int


def rank_correlation(human: Mapping[str, float], metric: Mapping[str, float]) -> Correlation:
    """Spearman's rank correlation of ``metric`` with the human scores, on the runs both have.

    Positive: the metric is higher for the runs people preferred; a lower-is-better metric
    (a loss, a distance) that agrees with people gives a negative ρ.
    """
    common = [run for run in human if run in metric and _finite(human[run]) and _finite(metric[run])]
    if len(common) < 3:
        return Correlation(math.nan, math.nan, len(common))
    result = stats.spearmanr([human[run] for run in common], [metric[run] for run in common])
    return Correlation(float(result.statistic), float(result.pvalue), len(common))
