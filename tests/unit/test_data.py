"""The data protocol: disjoint, deterministic splits; audit members disjoint from known members."""

import numpy as np
import pytest

from pipeline.data import load_digits, load_purchase_synth, load_synthetic, make_splits

FRACTIONS = {"train": 0.3, "val": 0.15, "test": 0.15, "population": 0.4}


def test_splits_are_disjoint_and_cover_their_fractions():
    s = make_splits(1797, FRACTIONS, seed=0)
    parts = [s.train, s.val, s.test, s.population]
    union = np.concatenate(parts)
    assert len(union) == len(set(union.tolist()))  # disjoint
    assert [len(p) for p in parts] == [539, 270, 270, 718]  # the last part gets what is left
    assert set(s.audit_members) | set(s.known_members) == set(s.train)
    assert not set(s.audit_members) & set(s.known_members)
    assert len(s.audit_members) == len(s.test)


def test_splits_are_deterministic_in_the_seed():
    a, b, c = (make_splits(1000, FRACTIONS, seed=k) for k in (1, 1, 2))
    for name in ("train", "val", "test", "population", "audit_members"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.train, c.train)


@pytest.mark.parametrize(
    "fractions, message",
    [
        ({"train": 0.5, "val": 0.3, "test": 0.2, "population": 0.2}, "sum to at most 1"),
        ({"train": 0.5, "val": 0.1, "test": 0.1}, "missing"),
        ({"train": 0.5, "val": 0.1, "test": 0.1, "population": 0.1, "extra": 0.1}, "unknown"),
        ({"train": -0.1, "val": 0.1, "test": 0.1, "population": 0.1}, "must be in"),
    ],
)
def test_bad_fractions_raise(fractions, message):
    with pytest.raises(ValueError, match=message):
        make_splits(1000, fractions, seed=0)


def test_n_audit_bounds():
    with pytest.raises(ValueError, match="n_audit"):
        make_splits(1000, FRACTIONS, seed=0, n_audit=10_000)
    s = make_splits(1000, FRACTIONS, seed=0, n_audit=50)
    assert len(s.audit_members) == 50 and len(s.known_members) == 250


def test_loaders_shapes_and_determinism():
    d = load_digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.n_classes == 10
    assert abs(float(d.x.mean())) < 1e-4
    s1, s2 = load_synthetic(n_samples=300), load_synthetic(n_samples=300)
    assert s1.x.shape == (300, 40) and (s1.x == s2.x).all()
    p = load_purchase_synth(n_samples=500, n_features=100, n_classes=10)
    assert p.x.shape == (500, 100) and set(p.x.unique().tolist()) <= {0.0, 1.0}
    assert int(p.y.max()) < 10
