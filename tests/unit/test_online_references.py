"""Online references (issue 27): the pool they train on, their balanced IN/OUT membership, and
what the audit reads from it (`ShadowsResult.reference_in`)."""

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ShadowsConfig
from pipeline.context import RunContext
from pipeline.results import ShadowsResult
from pipeline.stages import shadows as shadows_stage
from pipeline.validation import validate


def test_pairs_are_complementary_balanced_and_reproducible():
    cfg = ShadowsConfig(n_models=8, pool="with_candidates")
    rows = np.stack(shadows_stage.membership_rows(7, cfg, 101))  # odd pool: halves of 50 and 51
    assert np.all(rows.sum(axis=0) == 4)  # every pool point IN for exactly K/2 references
    for j in range(4):
        assert np.array_equal(rows[2 * j], ~rows[2 * j + 1])
    assert set(rows.sum(axis=1)) == {50, 51}
    assert len({r.tobytes() for r in rows}) == 8  # the pairs are different draws
    again = np.stack(shadows_stage.membership_rows(7, ShadowsConfig(n_models=12, pool="with_candidates"), 101))
    assert np.array_equal(again[:8], rows)  # raising K keeps the first pairs
    other = np.stack(shadows_stage.membership_rows(8, cfg, 101))
    assert not np.array_equal(other, rows)


def test_pool_holds_every_candidate_and_no_known_member(cfg_factory):
    cfg = cfg_factory("experiment=smoke", "+dataset.canaries=20", "shadows=online", "shadows.n_models=4")
    s = RunContext.build(cfg).data.splits
    pool = shadows_stage.pool(s, "with_candidates", 0)
    for part in (s.audit_members, s.test, s.search_members, s.val, s.canaries):
        assert np.isin(part, pool).all()
    assert not np.isin(s.known_members, pool).any()  # the target's other members stay out
    assert np.isin(np.setdiff1d(pool, shadows_stage.candidates(s)), s.population).all()
    assert len(pool) == min(2 * len(s.train), len(shadows_stage.candidates(s)) + len(s.population))
    assert np.array_equal(shadows_stage.pool(s, "population", 0), s.population)


def test_reference_in_reads_membership_through_the_pool():
    pool = np.array([3, 5, 9, 12])
    membership = np.array([[True, False, True, False], [False, True, False, True]])
    r = ShadowsResult(("a", "b"), (Path("a"), Path("b")), membership, 0, pool)
    got = r.reference_in(np.array([12, 4, 3, 100]))  # 4 and 100 are in no reference's data
    assert got.tolist() == [[False, False, True, False], [True, False, False, False]]


def test_online_lira_needs_the_online_pool_and_pairs(cfg_factory):
    with pytest.raises(ValueError, match="shadows.pool=with_candidates"):
        validate(cfg_factory("experiment=smoke", "stage=attack", "attack=online"))
    with pytest.raises(ValueError, match="must be even"):
        validate(cfg_factory("experiment=smoke", "stage=attack", "attack=online", "shadows=online", "shadows.n_models=5"))
    with pytest.raises(ValueError, match="member_fraction=0.5"):
        validate(cfg_factory("experiment=smoke", "shadows=online", "shadows.member_fraction=0.3"))
    with pytest.raises(ValueError, match="valid: \\['population', 'with_candidates'\\]"):
        validate(cfg_factory("experiment=smoke", "shadows.pool=everything"))


def test_audit_gives_every_candidate_half_in_half_out_references(cfg_factory):
    """End to end on the smoke set: the audit's reference_in (read back from the trained
    references' saved membership) is balanced on every audit point, and the default pool
    leaves every audit point OUT (offline, as before)."""
    from pipeline import flow

    cfg = cfg_factory("experiment=smoke", "stage=attack", "attack=online", "shadows=online", "shadows.n_models=4",
                      "attack.reference=dense", "tracking.enabled=false")
    ctx = RunContext.build(cfg)
    refs = shadows_stage.run(ctx)
    saved = np.stack([np.load(p / "members.npy") for p in refs.paths])
    assert np.array_equal(saved, refs.membership)
    result = flow.attack(ctx, None, refs)
    scores = np.load(result.path / "scores.npz")
    idx = scores["audit/example_index"]
    assert np.all(refs.reference_in(idx).sum(axis=0) == 2)
    assert result.metrics["audit_lira_online_per_example_variance"] == 0.0  # 2 IN + 2 OUT: global
    assert np.isfinite(result.metrics["audit_lira_online_auc"])
    offline = shadows_stage.run(RunContext.build(cfg_factory("experiment=smoke", "shadows.n_models=4")))
    assert not offline.reference_in(idx).any()


def test_full_audit_calibrates_rmia_on_the_references_and_logs_a(cfg_factory):
    """attack=full's RMIA (population-only references: offline) picks its a from the references'
    own membership on population points, and the audit records the a it used."""
    from pipeline.__main__ import run_stage

    m = run_stage(cfg_factory("experiment=smoke", "stage=attack", "attack=full", "attack.reference=dense",
                              "shadows.n_models=4", "tracking.enabled=false")).metrics
    assert m["audit_rmia_online"] == 0.0
    assert m["audit_rmia_offline_a"] in {round(0.1 * i, 1) for i in range(11)}
    assert np.isfinite(m["audit_rmia_auc"])
