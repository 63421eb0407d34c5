"""The data protocol: disjoint, deterministic splits; audit, search and known members disjoint;
standardisation fitted on the members only."""

import numpy as np
import pytest
import torch

from training.data import Dataset, make_splits, standardise_on
from training.embedded import load_digits, load_purchase_synth, load_synthetic

FRACTIONS = {"train": 0.3, "val": 0.15, "test": 0.15, "population": 0.4}


def test_splits_are_disjoint_and_cover_their_fractions():
    s = make_splits(1797, FRACTIONS, seed=0)
    parts = [s.train, s.val, s.test, s.population]
    union = np.concatenate(parts)
    assert len(union) == len(set(union.tolist()))  # disjoint
    assert [len(p) for p in parts] == [539, 270, 270, 718]  # the last part gets what is left
    audit, search, known = set(s.audit_members), set(s.search_members), set(s.known_members)
    assert audit | search | known == set(s.train)
    assert not audit & known and not audit & search and not search & known
    assert len(s.audit_members) == len(s.test)
    # as many as the search's non-members (half of val: 135), at most half of what the audit leaves (269)
    assert len(s.search_members) == 134 and len(s.known_members) == 135


def test_audit_members_do_not_depend_on_the_search_members():
    """Carving the search members out of `train` left the reported audit's members as they were."""
    a = make_splits(1000, FRACTIONS, seed=4)
    b = make_splits(1000, {**FRACTIONS, "val": 0.05, "population": 0.5}, seed=4)
    assert len(a.search_members) != len(b.search_members)
    # train is cut first and the audit takes the first n_audit (= |test|) of one permutation of it
    assert np.array_equal(a.train, b.train) and np.array_equal(a.audit_members, b.audit_members)


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
    # 300 members: 50 audit, 75 search (half of val's 150), 175 known
    assert (len(s.audit_members), len(s.search_members), len(s.known_members)) == (50, 75, 175)
    with pytest.raises(ValueError, match="search and known members"):
        make_splits(1000, {"train": 0.004, "val": 0.1, "test": 0.1, "population": 0.1}, seed=0, n_audit=3)


def test_loaders_shapes_and_determinism():
    d = load_digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.n_classes == 10
    # raw pixels, standardised only once the pool is split (standardise_on)
    assert d.standardise and float(d.x.min()) == 0.0 and float(d.x.max()) == 16.0
    s1, s2 = load_synthetic(n_samples=300), load_synthetic(n_samples=300)
    assert s1.x.shape == (300, 40) and (s1.x == s2.x).all()
    p = load_purchase_synth(n_samples=500, n_features=100, n_classes=10)
    assert p.x.shape == (500, 100) and set(p.x.unique().tolist()) <= {0.0, 1.0}
    assert int(p.y.max()) < 10


def test_standardisation_is_fitted_on_the_members_only():
    """Issue 18: digits was standardised with the whole pool's statistics, test and population included."""
    d = load_digits(image=False)
    s = make_splits(len(d), FRACTIONS, seed=0)
    z = standardise_on(d, s.train)
    assert not z.standardise and standardise_on(z, s.train) is z  # done once
    members = z.x[torch.from_numpy(s.train)].double()
    varying = d.x[torch.from_numpy(s.train)].std(0) > 0
    assert members.mean(0).abs().max() < 1e-5
    np.testing.assert_allclose(members.std(0, unbiased=False)[varying].numpy(), 1.0, atol=1e-5)
    # the held-out rows do not move the statistics: changing every non-member changes no member
    others = torch.from_numpy(np.setdiff1d(np.arange(len(d)), s.train))
    x2 = d.x.clone()
    x2[others] = x2[others] * 3 + 5
    z2 = standardise_on(Dataset(d.name, x2, d.y, d.n_classes, standardise=True), s.train)
    assert torch.equal(z2.x[torch.from_numpy(s.train)], z.x[torch.from_numpy(s.train)])
    # ... while fitting on the whole pool (the old protocol) would have
    whole = standardise_on(Dataset(d.name, x2, d.y, d.n_classes, standardise=True), np.arange(len(d)))
    assert not torch.allclose(whole.x[torch.from_numpy(s.train)], z.x[torch.from_numpy(s.train)])
    # a data set not marked for it is left alone
    raw = load_purchase_synth(n_samples=200, n_features=20, n_classes=5)
    assert standardise_on(raw, np.arange(100)) is raw
