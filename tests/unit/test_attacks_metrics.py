"""Metrics: exact ROC/AUC/TPR@FPR properties, sklearn agreement, bootstrap coverage."""

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from attacks.metrics import (
    advantage,
    balanced_accuracy,
    bootstrap_metrics,
    fpr_key,
    roc_auc,
    roc_curve,
    summarize,
    tpr_at_fpr,
    weighted_metrics,
)


def test_auc_is_one_on_separable_scores():
    labels = np.r_[np.ones(50), np.zeros(70)]
    scores = np.r_[np.linspace(1, 2, 50), np.linspace(-1, 0.5, 70)]
    assert roc_auc(scores, labels) == 1.0
    assert tpr_at_fpr(scores, labels, 0.0) == 1.0
    assert advantage(scores, labels) == 1.0
    assert roc_auc(-scores, labels) == 0.0


def test_auc_is_half_on_shuffled_scores():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=20000)
    labels = rng.permutation(np.r_[np.ones(10000), np.zeros(10000)])
    assert abs(roc_auc(scores, labels) - 0.5) < 0.03


def test_roc_and_tpr_at_fpr_match_a_hand_computed_curve():
    # members 0.9 0.8 0.4 0.3; non-members 0.7 0.35 0.2 0.1 (descending merge:
    # .9m .8m .7n .4m .35n .3m .2n .1n)
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.7, 0.35, 0.2, 0.1])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    fpr, tpr, thr = roc_curve(scores, labels)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(tpr, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0])
    assert thr[0] == np.inf and thr[1] == 0.9 and thr[-1] == 0.1
    assert tpr_at_fpr(scores, labels, 0.0) == 0.5
    assert tpr_at_fpr(scores, labels, 0.2) == 0.5  # no upward interpolation
    assert tpr_at_fpr(scores, labels, 0.25) == 0.75
    assert tpr_at_fpr(scores, labels, 0.5) == 1.0
    # AUC by hand: pairs (m > n) = 4+4+2+2... count: .9>4, .8>4, .4>3, .3>2 = 13 of 16
    assert roc_auc(scores, labels) == pytest.approx(13 / 16, abs=1e-12)
    assert advantage(scores, labels) == pytest.approx(0.5)
    assert balanced_accuracy(scores, labels) == pytest.approx(0.75)


def test_ties_collapse_into_one_roc_point_and_count_half():
    scores = np.array([1.0, 1.0, 0.0, 1.0])
    labels = np.array([1, 0, 0, 1])
    fpr, tpr, _ = roc_curve(scores, labels)
    np.testing.assert_allclose(fpr, [0, 0.5, 1.0])
    np.testing.assert_allclose(tpr, [0, 1.0, 1.0])
    assert roc_auc(scores, labels) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_sklearn_on_ties_heavy_data(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    labels = rng.integers(0, 2, n)
    scores = rng.integers(0, 12, n) + 0.7 * labels * rng.integers(0, 2, n)
    assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) < 1e-9


def test_summarize_keys_and_undersampled_flag():
    rng = np.random.default_rng(1)
    labels = np.r_[np.ones(300), np.zeros(300)]
    scores = rng.normal(size=600) + labels
    out = summarize(scores, labels)
    assert set(out) == {
        "auc",
        "tpr_at_1pct_fpr",
        "tpr_at_0.1pct_fpr",
        "tpr_at_0.1pct_fpr_undersampled",
        "balanced_accuracy",
        "advantage",
    }
    assert math.isnan(out["tpr_at_0.1pct_fpr"]) and out["tpr_at_0.1pct_fpr_undersampled"] == 1.0
    assert out["tpr_at_1pct_fpr"] == tpr_at_fpr(scores, labels, 0.01)
    assert out["balanced_accuracy"] == pytest.approx(0.5 + out["advantage"] / 2)
    assert fpr_key(0.01) == "tpr_at_1pct_fpr" and fpr_key(0.001) == "tpr_at_0.1pct_fpr"


def test_summarize_with_bootstrap_gives_ordered_intervals_and_nan_for_undersampled():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(400), np.zeros(500)]
    scores = rng.normal(size=900) + labels
    out = summarize(scores, labels, n_bootstrap=200, seed=3)
    for key in ("auc", "tpr_at_1pct_fpr"):
        assert out[f"{key}_ci_low"] <= out[key] <= out[f"{key}_ci_high"]
        assert out[f"{key}_ci_low"] < out[f"{key}_ci_high"]
    assert math.isnan(out["tpr_at_0.1pct_fpr_ci_low"])
    again = summarize(scores, labels, n_bootstrap=200, seed=3)
    assert again["auc_ci_low"] == out["auc_ci_low"]  # seeded


@pytest.mark.parametrize("n_bootstrap", [1, 50, 99, -1])
def test_bootstrap_below_100_raises(n_bootstrap):
    with pytest.raises(ValueError, match="n_bootstrap"):
        summarize(np.r_[1.0, 0.0], np.r_[1, 0], n_bootstrap=n_bootstrap)


def test_weighted_metrics_equal_the_plain_ones_and_repeated_data():
    rng = np.random.default_rng(4)
    s1 = np.round(rng.normal(1, 1, 60), 1)
    s0 = np.round(rng.normal(0, 1, 250), 1)  # rounded: many ties
    s1.sort()
    s0.sort()
    w1 = rng.multinomial(60, np.full(60, 1 / 60), size=3).astype(float)
    w0 = rng.multinomial(250, np.full(250, 1 / 250), size=3).astype(float)
    w1[0], w0[0] = 1.0, 1.0
    got = weighted_metrics(s1, s0, w1, w0, (0.01, 0.05, 0.2))
    for b in range(3):
        xs1, xs0 = np.repeat(s1, w1[b].astype(int)), np.repeat(s0, w0[b].astype(int))
        scores = np.r_[xs1, xs0]
        labels = np.r_[np.ones(len(xs1)), np.zeros(len(xs0))]
        assert got["auc"][b] == pytest.approx(roc_auc(scores, labels), abs=1e-12)
        for fpr in (0.01, 0.05, 0.2):
            assert got[fpr_key(fpr)][b] == pytest.approx(tpr_at_fpr(scores, labels, fpr), abs=1e-12)


def test_bootstrap_interval_covers_true_auc_92_to_98_percent():
    # members N(d, 1), non-members N(0, 1): AUC = Phi(d / sqrt 2)
    d, n1, n0, reps = 1.0, 200, 200, 200
    true_auc = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(5)
    covered = 0
    for r in range(reps):
        scores = np.r_[rng.normal(d, 1, n1), rng.normal(0, 1, n0)]
        labels = np.r_[np.ones(n1), np.zeros(n0)]
        boot = bootstrap_metrics(scores, labels, fprs=(), n_bootstrap=400, seed=r)["auc"]
        lo, hi = np.quantile(boot, [0.025, 0.975])
        covered += lo <= true_auc <= hi
    assert 0.92 <= covered / reps <= 0.98, covered / reps


@pytest.mark.parametrize(
    "scores, labels, match",
    [
        (np.zeros(3), np.r_[1, 0], "mismatched lengths"),
        (np.r_[0.1, 0.2], np.r_[1, 1], "single membership class"),
        (np.r_[0.1, np.nan], np.r_[1, 0], "NaN/inf"),
        (np.r_[0.1, np.inf], np.r_[1, 0], "NaN/inf"),
        (np.r_[0.1, 0.2], np.r_[1, 2], "0 \\(non-member\\) or 1"),
    ],
)
def test_bad_inputs_raise(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        roc_auc(scores, labels)


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_interval_tails_are_the_quantiles_of_the_same_bootstrap_draws(confidence):
    # a 95% interval is the 2.5% and 97.5% quantiles of the replicates (90%: 5% and 95%), of
    # exactly the draws `bootstrap_metrics` makes with the same seed
    rng = np.random.default_rng(6)
    labels = np.r_[np.ones(300), np.zeros(400)]
    scores = rng.normal(size=700) + 0.8 * labels
    fprs = (0.01, 0.05)
    out = summarize(scores, labels, fprs=fprs, n_bootstrap=300, seed=11, confidence=confidence)
    boot = bootstrap_metrics(scores, labels, fprs=fprs, n_bootstrap=300, seed=11)
    tail = (1.0 - confidence) / 2.0
    for key in ("auc", fpr_key(0.01), fpr_key(0.05)):
        assert out[f"{key}_ci_low"] == pytest.approx(np.quantile(boot[key], tail), abs=1e-12)
        assert out[f"{key}_ci_high"] == pytest.approx(np.quantile(boot[key], 1.0 - tail), abs=1e-12)
        # and not the neighbouring tails: the pinning above can tell them apart on this data
        wider = np.quantile(boot[key], [tail / 2, 1.0 - tail / 2])
        assert (out[f"{key}_ci_low"], out[f"{key}_ci_high"]) != pytest.approx(tuple(wider), abs=1e-12)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.29])
def test_a_roc_point_exactly_at_the_target_fpr_counts(target):
    # 100 non-members at 0.00 .. 0.99; 30 members: 10 above all of them, 5 just below the
    # n_fp-th highest non-member (n_fp = target·100), 15 below all. The 5 are reached only by
    # letting exactly n_fp non-members through, at FPR == target exactly, which must count.
    # 0.29·100 = 28.999999999999996 in floating point: the allowed false positives are still 29.
    n_fp = round(target * 100)
    s0 = np.arange(100) / 100.0
    s1 = np.r_[np.full(10, 2.0), s0[-n_fp] - 0.005 + np.zeros(5), np.full(15, -1.0)]
    scores, labels = np.r_[s1, s0], np.r_[np.ones(len(s1)), np.zeros(100)]
    # "member" for score >= s0[-n_fp] - 0.005: FPR = n_fp/100 = target, TPR = 15/30
    assert tpr_at_fpr(scores, labels, target) == 0.5
    assert tpr_at_fpr(scores, labels, target - 0.005) == pytest.approx(10 / 30)  # one fewer FP allowed
    ones1, ones0 = np.ones((1, len(s1))), np.ones((1, 100))
    weighted = weighted_metrics(np.sort(s1), s0, ones1, ones0, (target,))[fpr_key(target)]
    assert weighted[0] == 0.5
    assert summarize(scores, labels, fprs=(target,))[fpr_key(target)] == 0.5


def test_tpr_target_outside_0_1_and_bootstrap_counts_are_checked():
    scores, labels = np.r_[0.9, 0.2, 0.4], np.r_[1, 0, 0]
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=rf"^fpr must lie in \[0, 1\], got {bad}$"):
            tpr_at_fpr(scores, labels, bad)
    assert tpr_at_fpr(scores, labels, 1.0) == 1.0
    assert len(bootstrap_metrics(scores, labels)["auc"]) == 1000  # the documented default
    assert len(bootstrap_metrics(scores, labels, n_bootstrap=1)["auc"]) == 1
    with pytest.raises(ValueError, match="n_bootstrap must be >= 1, got 0"):
        bootstrap_metrics(scores, labels, n_bootstrap=0)
