"""Set audit (issue 27): several released versions of one model, scored together."""

import numpy as np
import pytest

from pipeline.analysis import set_audit


def versions(n_versions=4, n=600, noise=2.0, seed=0):
    """Each version scores the same points: a shared membership signal plus its own noise, so
    combining versions averages the noise out (what an attacker holding several gains)."""
    rng = np.random.default_rng(seed)
    out = {}
    for ev, m in (("audit", n), ("select", n)):
        member = (np.arange(m) % 2).astype(int)
        pool = np.arange(m) + (0 if ev == "audit" else 10_000)
        signal = member * 1.0
        out[ev] = {f"v{i}": {"loss": signal + rng.normal(0, noise, m), "member": member, "pool_index": pool}
                   for i in range(n_versions)}
    return out["audit"], out["select"]


def test_the_set_beats_the_best_single_version_and_gains_grow_with_k():
    audit, fit = versions()
    t = set_audit.set_audit(audit, fit, "loss")
    best = t[t.kind == "best_single"].auc.item()
    full = t[t.kind == "set"].set_index("combiner").auc
    assert full["mean"] > best + 0.05 and full["learned"] > best + 0.05
    by_k = t[(t.combiner == "mean") & t.kind.isin(["subsets", "set"])].sort_values("k").auc.to_numpy()
    assert np.all(np.diff(by_k) > 0)  # each added version adds leakage
    assert set(t[t.kind == "subsets"].n_subsets) == {6, 4}  # C(4,2), C(4,3): every subset


def test_one_informative_version_is_found_by_max_and_learned_not_lost_by_mean():
    audit, fit = versions(n_versions=3, noise=50.0)
    for ev in (audit, fit):
        ev["v1"]["loss"] = ev["v1"]["member"] * 3.0 + np.random.default_rng(1).normal(0, 1, 600)
    t = set_audit.set_audit(audit, fit, "loss")
    best = t[t.kind == "best_single"]
    assert best.version.item() == "v1"
    full = t[t.kind == "set"].set_index("combiner").auc
    assert full["learned"] >= best.auc.item() - 0.02  # the learned weights find the leaky version


def test_versions_are_aligned_by_pool_index_and_bad_input_is_refused():
    audit, fit = versions(n_versions=2)
    perm = np.random.default_rng(0).permutation(600)
    shuffled = {k: (v[perm] if k != "loss" else v[perm]) for k, v in audit["v1"].items()}
    a = set_audit.set_audit(audit, None, "loss")
    b = set_audit.set_audit({"v0": audit["v0"], "v1": shuffled}, None, "loss")
    assert np.allclose(a.auc, b.auc)  # the same points, in another order
    assert "learned" not in set(a.combiner)  # no fit evaluation: no learned combination
    with pytest.raises(ValueError, match="no scores of attack 'lira'"):
        set_audit.set_audit(audit, None, "lira")
    with pytest.raises(ValueError, match="unknown combiner"):
        set_audit.combine("median", np.zeros((2, 3)))
    bad = {"v0": audit["v0"], "v1": {**audit["v1"], "member": 1 - audit["v1"]["member"]}}
    with pytest.raises(ValueError, match="other membership labels"):
        set_audit.set_audit(bad, None, "loss")
