"""The per-example scores table (issue 27): written by every audit, read back by an outside
tool, and enough to recompute the logged metrics."""

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipeline.analysis import audit_scores
from pipeline.context import RunContext


def test_table_round_trips_through_csv_and_parquet(tmp_path):
    rng = np.random.default_rng(0)
    ev = {
        "audit": {"pool_index": np.arange(10, 30), "member": np.r_[np.ones(10), np.zeros(10)].astype(int),
                  "n_references_in": rng.integers(0, 4, 20), "scores": {"loss": rng.normal(size=20) * 1e-9 + 1.0}},
        "canary": {"pool_index": np.arange(5), "member": np.array([1, 0, 1, 0, 0]),
                   "n_references_in": np.zeros(5, int), "scores": {"loss": rng.normal(size=5)}},
    }
    frame = audit_scores.table(ev)
    paths = audit_scores.write(tmp_path, frame)
    assert {p.name for p in paths} == {"scores.csv", "scores.parquet"}  # pyarrow is in the dev venv
    for p in paths:
        back = audit_scores.read(p)
        assert list(back.columns) == ["evaluation", "pool_index", "member", "n_references_in", "score_loss"]
        # full precision survives, even in the CSV: scores that differ by 1e-9 keep their order
        np.testing.assert_array_equal(back["score_loss"].to_numpy(), frame["score_loss"].to_numpy())
        assert back["pool_index"].tolist() == frame["pool_index"].tolist()
    with pytest.raises(ValueError, match=".csv or .parquet"):
        audit_scores.read(tmp_path / "scores.json")


def test_an_audit_writes_the_table_and_it_recomputes_the_logged_auc(cfg_factory):
    """A real `stage=attack` (smoke set, canaries): the table holds every evaluated example
    once per evaluation, and sklearn's AUC on it equals each logged AUC."""
    from pipeline.__main__ import run_stage

    cfg = cfg_factory("experiment=smoke", "stage=attack", "+dataset.canaries=20", "attack.reference=dense",
                      "tracking.enabled=false")
    result = run_stage(cfg)
    frame = audit_scores.read(result.path / "scores.parquet")
    npz = np.load(result.path / "scores.npz")
    logged = json.loads((result.path / "metrics.json").read_text())
    assert set(frame.evaluation) == {"select", "audit", "canary"}
    for name, ev in frame.groupby("evaluation"):
        assert ev["pool_index"].tolist() == npz[f"{name}/pool_index"].tolist()
        assert ev["member"].tolist() == npz[f"{name}/member"].astype(int).tolist()
        for att in audit_scores.attacks_in(ev):
            auc = roc_auc_score(ev["member"], ev[f"score_{att}"])
            assert auc == pytest.approx(logged[f"{name}_{att}_auc"], abs=1e-12)
    again = audit_scores.recompute_metrics(audit_scores.read(result.path / "scores.csv"))
    for k, v in again.items():
        if k in logged and isinstance(v, float) and np.isfinite(v):
            assert v == pytest.approx(logged[k], abs=1e-12), k
    assert "audit_lira_offline_tpr_at_1pct_fpr" in again
    # members are audit members, non-members test points
    s = RunContext.build(cfg).data.splits
    audit = frame[frame.evaluation == "audit"]
    assert np.isin(audit[audit.member == 1].pool_index, s.audit_members).all()
    assert np.isin(audit[audit.member == 0].pool_index, s.test).all()


def test_the_strongest_attack_interval_ignores_the_per_example_fields():
    """scores.npz's member / pool_index / n_references_in are not attacks: the hierarchical
    bootstrap of the strongest attack must not take a maximum over them (pool_index sorted by
    membership would be a perfect 'attack')."""
    from pipeline.analysis.intervals import example_bootstrap

    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(50), np.zeros(50)].astype(int)
    base = {"labels": labels, "example_index": np.arange(100), "loss": rng.normal(size=100)}
    full = {**base, "member": labels.astype(bool), "pool_index": np.arange(100)[::-1],
            "n_references_in": labels * 4}
    other = {**base, "loss": rng.normal(size=100)}
    assert example_bootstrap([(full, other)], "audit_auc", 200, 0.95) == example_bootstrap(
        [(base, other)], "audit_auc", 200, 0.95)
