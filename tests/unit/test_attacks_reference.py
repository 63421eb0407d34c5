"""Reference-model attacks: LiRA offline/online and RMIA on planted Gaussian signals."""

import numpy as np
import pytest

from attacks.inputs import AttackInputs, MissingInputError
from attacks.lira import lira_offline_scores, lira_online_scores
from attacks.metrics import roc_auc
from attacks.rmia import RMIA, rmia_scores
from attacks.signals import Signals


def planted(n=2000, k=16, shift=1.0, seed=0):
    """Per-point means mu_i; OUT ~ N(mu_i, .5), IN ~ N(mu_i + shift, .5); half the points members."""
    rng = np.random.default_rng(seed)
    mu = rng.normal(0, 3, n)  # large between-point spread: a global threshold fails
    member = rng.permutation(np.r_[np.ones(n // 2, bool), np.zeros(n - n // 2, bool)])
    ref_in = np.argsort(rng.random((k, n)), axis=0) < k // 2  # each point IN for k/2 refs
    refs = mu + shift * ref_in + rng.normal(0, 0.5, (k, n))
    target = mu + shift * member + rng.normal(0, 0.5, n)
    return target, refs, ref_in, member


@pytest.mark.parametrize("variance", ["global", "per_example"])
def test_lira_recovers_planted_members(variance):
    target, refs, ref_in, member = planted(shift=2.5)
    off = lira_offline_scores(target, refs, ref_in, variance=variance)
    on = lira_online_scores(target, refs, ref_in, variance=variance)
    assert roc_auc(off, member) > 0.95
    assert roc_auc(on, member) > 0.95
    assert roc_auc(target, member) < 0.8  # the raw statistic alone is weak


def test_lira_online_without_in_models_raises():
    target, refs, _, _ = planted(n=50, k=4)
    with pytest.raises(MissingInputError, match="IN reference"):
        lira_online_scores(target, refs, np.zeros(refs.shape, bool))


def test_lira_per_example_variance_needs_two_out_models():
    target, refs, _, _ = planted(n=20, k=1)
    with pytest.raises(ValueError, match=">= 2 OUT"):
        lira_offline_scores(target, refs, variance="per_example")
    with pytest.raises(ValueError, match="variance must be"):
        lira_offline_scores(target, np.r_[refs, refs], variance="pooled")


def test_lira_rejects_nan_and_bad_shapes():
    target, refs, _, _ = planted(n=20, k=3)
    with pytest.raises(ValueError, match="\\(K, n\\)"):
        lira_offline_scores(target, refs[:, :5])
    refs[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN/inf"):
        lira_offline_scores(target, refs)


def sig_from_prob(p_true):
    """Signals whose true-class probability is p_true (two classes, label 0)."""
    p = np.clip(np.asarray(p_true, float), 1e-6, 1 - 1e-6)
    logits = np.stack([np.log(p), np.log(1 - p)], 1)
    return Signals(logits.astype(np.float32), np.zeros(len(p), int))


def test_rmia_recovers_planted_members_and_scores_are_fractions():
    rng = np.random.default_rng(1)
    n, m, k = 1000, 500, 8
    diff = rng.uniform(0.2, 0.9, n)  # point difficulty: references' probability
    member = rng.random(n) < 0.5
    ref_p = np.clip(diff + rng.normal(0, 0.02, (k, n)), 0.01, 0.99)
    target_p = np.clip(diff + 0.08 * member + rng.normal(0, 0.02, n), 0.01, 0.99)
    zd = rng.uniform(0.2, 0.9, m)
    pop_ref = np.clip(zd + rng.normal(0, 0.02, (k, m)), 0.01, 0.99)
    pop_t = np.clip(zd + rng.normal(0, 0.02, m), 0.01, 0.99)
    s = rmia_scores(target_p, ref_p, pop_t, pop_ref, gamma=1.0, offline_a=1.0)
    assert s.min() >= 0 and s.max() <= 1
    assert roc_auc(s, member) > 0.95
    assert roc_auc(target_p, member) < 0.7
    inputs = AttackInputs(
        target=sig_from_prob(target_p),
        references=[sig_from_prob(r) for r in ref_p],
        population_target=sig_from_prob(pop_t),
        population_references=[sig_from_prob(r) for r in pop_ref],
    )
    got = RMIA(gamma=1.0, offline_a=1.0).fit(inputs).score(inputs)
    assert roc_auc(got, member) > 0.95


def test_rmia_bad_parameters_raise():
    with pytest.raises(ValueError, match="gamma"):
        RMIA(gamma=0)
    with pytest.raises(ValueError, match="offline_a"):
        RMIA(offline_a=1.5)
    inputs = AttackInputs(target=sig_from_prob([0.5, 0.6]), references=[sig_from_prob([0.5, 0.5])])
    with pytest.raises(MissingInputError, match="population_target"):
        RMIA(population="given").fit(inputs)


def test_lira_defaults_to_the_global_variance_and_the_normal_log_density_is_exact():
    from attacks.lira import _log_normal_pdf

    rng = np.random.default_rng(3)
    target, refs = rng.normal(size=6), rng.normal(size=(4, 6))
    ref_in = np.array([[True] * 6, [False] * 6, [True] * 6, [False] * 6])
    np.testing.assert_array_equal(
        lira_offline_scores(target, refs, ref_in), lira_offline_scores(target, refs, ref_in, variance="global"))
    np.testing.assert_array_equal(
        lira_online_scores(target, refs, ref_in), lira_online_scores(target, refs, ref_in, variance="global"))
    assert _log_normal_pdf(np.float64(1.0), np.float64(0.0), np.float64(2.0)) == pytest.approx(
        -0.125 - np.log(2.0) - 0.5 * np.log(2 * np.pi), abs=1e-12)
