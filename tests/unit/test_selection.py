"""Selection rules: each picks what it promises, ignores risk differences below the noise floor."""

import numpy as np
import pytest

from pipeline.selection import (
    CandidateTests,
    accuracy_standard_error,
    auc_standard_error,
    select,
)


def results(acc, risk, acc_se=0.01, risk_se=0.02):
    acc, risk = np.asarray(acc, float), np.asarray(risk, float)
    return CandidateTests(acc, risk, np.full_like(acc, acc_se), np.full_like(risk, risk_se))


def test_weighted_trades_accuracy_for_risk():
    t = results([0.90, 0.88], [0.70, 0.55])
    assert select("weighted", t, lam=1.0).index == 1  # 0.88-0.05 > 0.90-0.20
    assert select("weighted", t, lam=0.05).index == 0


def test_noise_floor_does_not_reward_a_risk_drop_below_one_se():
    t = results([0.90, 0.85], [0.60, 0.59], risk_se=0.02)  # risk gap 0.01 < SE
    assert select("weighted", t, lam=10.0, noise_floor=True).index == 0
    assert select("weighted", t, lam=10.0, noise_floor=False).index == 1


def test_lexicographic_lowest_risk_within_delta():
    t = results([0.90, 0.895, 0.80], [0.70, 0.60, 0.50], acc_se=0.001)
    assert select("lexicographic", t, delta=0.01).index == 1  # 0.80 is too far below
    assert select("lexicographic", t, delta=0.2).index == 2


def test_lexicographic_delta_grows_with_accuracy_se():
    t = results([0.90, 0.87], [0.70, 0.55], acc_se=0.03)
    assert select("lexicographic", t, delta=0.0, noise_floor=True).index == 1
    assert select("lexicographic", t, delta=0.0, noise_floor=False).index == 0


def test_pareto_knee():
    t = results([0.95, 0.90, 0.60], [0.90, 0.55, 0.50], risk_se=0.0)
    assert select("pareto_knee", t, noise_floor=False).index == 1


def test_ratio_prefers_higher_ratio():
    t = results([0.9, 0.6], [0.9, 0.5])
    assert select("ratio", t, noise_floor=False).index == 1


def test_rejected_candidates_never_win_and_all_rejected_raises():
    t = results([np.nan, 0.5], [0.5, 0.9])
    for rule in ("weighted", "ratio", "lexicographic", "pareto_knee"):
        assert select(rule, t).index == 1
    with pytest.raises(ValueError, match="every candidate was rejected"):
        select("weighted", results([np.nan], [np.nan]))


def test_unknown_rule_lists_valid():
    with pytest.raises(ValueError, match="valid: \\['lexicographic', 'pareto_knee', 'ratio', 'weighted'\\]"):
        select("vote", results([0.5], [0.5]))


def test_standard_errors():
    # Hanley-McNeil at AUC 0.5 with 270+270 is about 0.025 (SPEC "Statistical power")
    assert abs(auc_standard_error(0.5, 270, 270) - 0.0248) < 0.002
    assert auc_standard_error(0.9, 1000, 1000) < auc_standard_error(0.9, 100, 100)
    assert abs(accuracy_standard_error(0.9, 100) - 0.03) < 1e-9


def test_resolution_counts_updates_whose_risk_spread_exceeds_two_standard_errors():
    import pandas as pd

    from pipeline.selection import resolution

    rows = []
    # update 1: spread 0.10 > 2 * 0.02, the less accurate candidate chosen
    # update 2: spread 0.01 < 2 * 0.02, the most accurate chosen
    # update 3: one candidate rejected, one left: not a comparison, skipped
    for update, cands in {
        1: [(0.80, 0.70, False), (0.78, 0.60, True)],
        2: [(0.81, 0.70, True), (0.79, 0.69, False)],
        3: [(0.82, 0.70, True), (float("nan"), float("nan"), False)],
    }.items():
        for i, (acc, risk, chosen) in enumerate(cands):
            rows.append({"update": update, "candidate": i, "accuracy": acc, "risk": risk, "risk_se": 0.02,
                         "status": "ok" if risk == risk else "rejected: non-finite loss", "chosen": chosen})
    summary = resolution(pd.DataFrame(rows))
    assert summary["updates"] == 2
    assert summary["resolved_fraction"] == 0.5
    assert summary["less_accurate_chosen_fraction"] == 0.5
    assert summary["median_risk_spread"] == pytest.approx(0.055)
    assert summary["median_risk_se"] == pytest.approx(0.02)
    # several runs: updates are told apart by run
    both = pd.concat([pd.DataFrame(rows).assign(run="a"), pd.DataFrame(rows).assign(run="b")])
    assert resolution(both)["updates"] == 4
    # a DST run (one candidate, no risk) has nothing to summarise
    assert resolution(pd.DataFrame([{"update": 1, "candidate": 0, "accuracy": float("nan"), "risk": float("nan"),
                                     "risk_se": float("nan"), "status": "ok", "chosen": True}])) == {}
