"""Why nst.compare.ranking fits the Davidson model with SciPy rather than using choix (not a test).

choix has no model of ties and gives a covariance only from its EP fit, so a tie goes in as
one win each way. On synthetic judgements drawn from known strengths with ties, this prints
how often each method's 95 % intervals cover the true centred strengths, the RMSE of the
scores, Kendall's tau of the order and the time per fit.

    pip install choix==0.3.5   # or: pip install --target /tmp/choix choix; PYTHONPATH=/tmp/choix:.
    python tests/compare/ranking_choix_comparison.py [nu]   # default 0.5
"""

from __future__ import annotations

import sys
import time

import choix
import numpy as np
from scipy import stats

from nst.compare import ranking

RUNS, NU, JUDGEMENTS, DATASETS = 6, 0.5, 300, 200


def simulate(theta, nu, m, rng):
    """(i, j, outcome) with outcome 0: i preferred, 1: j preferred, 2: tie (Davidson's model)."""
    n = len(theta)
    out = []
    for _ in range(m):
        i, j = rng.choice(n, 2, replace=False)
        s = np.array([theta[i], theta[j], np.log(nu) + (theta[i] + theta[j]) / 2])
        p = np.exp(s - s.max())
        out.append((i, j, rng.choice(3, p=p / p.sum())))
    return out


def main(nu=NU):
    theta = np.linspace(-1.5, 1.5, RUNS)
    truth = theta - theta.mean()
    runs = [f"r{k}" for k in range(RUNS)]
    results = {"scipy (Davidson)": [], "choix EP (tie = a win each way)": [], "choix EP (ties dropped)": []}
    ties = []
    for seed in range(DATASETS):
        data = simulate(theta, nu, JUDGEMENTS, np.random.default_rng(seed))
        ties.append(np.mean([o == 2 for *_, o in data]))

        start = time.perf_counter()
        fit = ranking.fit([(runs[i], runs[j], ("left", "right", "tie")[o]) for i, j, o in data], runs=runs)
        seconds = time.perf_counter() - start
        results["scipy (Davidson)"].append((fit.scores, fit.standard_errors, seconds))

        pairs = []
        for i, j, o in data:
            pairs += [(i, j)] if o == 0 else [(j, i)] if o == 1 else [(i, j), (j, i)]
        start = time.perf_counter()
        mean, cov = choix.ep_pairwise(RUNS, pairs, alpha=ranking.PRIOR)
        seconds = time.perf_counter() - start
        centring = np.eye(RUNS) - 1.0 / RUNS
        cov = centring @ cov @ centring
        results["choix EP (tie = a win each way)"].append((mean - mean.mean(), np.sqrt(np.diag(cov)), seconds))

        decided = [(i, j) if o == 0 else (j, i) for i, j, o in data if o != 2]
        start = time.perf_counter()
        mean, cov = choix.ep_pairwise(RUNS, decided, alpha=ranking.PRIOR)
        seconds = time.perf_counter() - start
        cov = centring @ cov @ centring
        results["choix EP (ties dropped)"].append((mean - mean.mean(), np.sqrt(np.diag(cov)), seconds))

    print(f"{DATASETS} data sets: {RUNS} runs, strengths {theta[0]}..{theta[-1]}, nu={nu}, "
          f"{JUDGEMENTS} judgements, {np.mean(ties):.0%} ties")
    for name, rows in results.items():
        coverage = np.mean([np.abs(s - truth) <= ranking.Z95 * se for s, se, _ in rows])
        rmse = np.sqrt(np.mean([(s - truth) ** 2 for s, _, _ in rows]))
        tau = np.mean([stats.kendalltau(s, truth).statistic for s, _, _ in rows])
        ms = 1e3 * np.median([t for *_, t in rows])
        print(f"{name:34s} coverage {coverage:.1%}  RMSE {rmse:.3f}  Kendall tau {tau:.3f}  {ms:.1f} ms/fit")


if __name__ == "__main__":
    main(*map(float, sys.argv[1:]))  # optional argument: nu
