"""LiRA and RMIA scores equal a literal, per-example re-implementation of their papers' formulas.

The library code is vectorised (masked means, pooled variances, a sorted search for RMIA's
population comparison); the references here are plain Python loops with scipy.stats, written
from the definitions in the attacks' docstrings, on random statistics with a random IN/OUT
split per reference model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from attacks.lira import lira_offline_scores, lira_online_scores
from attacks.rmia import rmia_scores

K, N, M = 8, 60, 45


@pytest.fixture()
def world():
    rng = np.random.default_rng(7)
    ref_in = rng.random((K, N)) < 0.5
    ref_in[0], ref_in[1] = True, False  # every point has >= 1 IN and >= 1 OUT reference
    ref_in[2], ref_in[3] = True, False  # ... and >= 2 of each, for per-example variances
    centre = rng.normal(0, 2, N)
    ref_stats = centre + rng.normal(0, 1, (K, N)) + 1.5 * ref_in  # IN models score higher
    target = centre + rng.normal(0, 1, N) + 1.5 * (rng.random(N) < 0.5)
    return target, ref_stats, ref_in


def _fits(values_per_point: list[list[float]], variance: str) -> tuple[list[float], list[float]]:
    means = [sum(v) / len(v) for v in values_per_point]
    if variance == "per_example":
        sds = [stats.tstd(v) for v in values_per_point]  # sample std, ddof 1
    else:  # one variance pooled over points: within-point squared residuals / their degrees of freedom
        ss = sum(sum((x - m) ** 2 for x in v) for v, m in zip(values_per_point, means))
        dof = sum(len(v) - 1 for v in values_per_point)
        sds = [math.sqrt(ss / dof)] * len(values_per_point)
    return means, sds


@pytest.mark.parametrize("variance", ["global", "per_example"])
def test_lira_offline_is_the_one_sided_gaussian_test_on_out_references(world, variance):
    target, ref_stats, ref_in = world
    outs = [[ref_stats[k, i] for k in range(K) if not ref_in[k, i]] for i in range(N)]
    mu, sd = _fits(outs, variance)
    expected = [stats.norm.logcdf(target[i], mu[i], sd[i]) for i in range(N)]
    got = lira_offline_scores(target, ref_stats, ref_in, variance=variance)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variance", ["global", "per_example"])
def test_lira_online_is_the_in_out_gaussian_log_likelihood_ratio(world, variance):
    target, ref_stats, ref_in = world
    ins = [[ref_stats[k, i] for k in range(K) if ref_in[k, i]] for i in range(N)]
    outs = [[ref_stats[k, i] for k in range(K) if not ref_in[k, i]] for i in range(N)]
    mu_in, sd_in = _fits(ins, variance)
    mu_out, sd_out = _fits(outs, variance)
    expected = [
        stats.norm.logpdf(target[i], mu_in[i], sd_in[i]) - stats.norm.logpdf(target[i], mu_out[i], sd_out[i])
        for i in range(N)
    ]
    got = lira_online_scores(target, ref_stats, ref_in, variance=variance)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("online, gamma", [(False, 1.0), (False, 2.0), (True, 1.0), (True, 1.5)])
def test_rmia_is_the_fraction_of_population_points_dominated_by_the_likelihood_ratio(world, online, gamma):
    _, _, ref_in = world
    rng = np.random.default_rng(11)
    target_p, ref_p = rng.uniform(0.01, 1, N), rng.uniform(0.01, 1, (K, N))
    pop_target_p, pop_ref_p = rng.uniform(0.01, 1, M), rng.uniform(0.01, 1, (K, M))
    a = 0.3

    def p_x(column: np.ndarray, in_column: np.ndarray | None) -> float:
        if online:
            return sum(column) / len(column)  # all references, IN and OUT
        out = [p for k, p in enumerate(column) if in_column is None or not in_column[k]]
        return 0.5 * ((1 + a) * sum(out) / len(out) + (1 - a))  # Zarifzadeh et al.'s offline correction

    expected = []
    for i in range(N):
        lr_x = target_p[i] / p_x(ref_p[:, i], ref_in[:, i])
        wins = sum(lr_x / (pop_target_p[j] / p_x(pop_ref_p[:, j], None)) > gamma for j in range(M))
        expected.append(wins / M)
    got = rmia_scores(target_p, ref_p, pop_target_p, pop_ref_p, ref_in, gamma=gamma, offline_a=a, online=online)
    np.testing.assert_allclose(got, expected, atol=1e-12)
