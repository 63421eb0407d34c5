"""Selection rules: each picks what it promises, ignores risk differences below the noise floor."""

import numpy as np
import pytest

from training.selection import (
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

    from training.selection import resolution

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


def test_standard_errors_exact_and_at_the_edges():
    # Hanley & McNeil (1982): q1 = A/(2-A), q2 = 2A^2/(1+A),
    # var = (A(1-A) + (n_pos-1)(q1-A^2) + (n_neg-1)(q2-A^2)) / (n_pos n_neg); not symmetric in n_pos, n_neg
    assert auc_standard_error(0.8, 50, 70) == pytest.approx(0.042672618632471813, rel=1e-12)
    assert auc_standard_error(0.8, 70, 50) == pytest.approx(0.039585150334236784, rel=1e-12)
    # AUC 1 (or 0) is clipped to 1 - 1e-6 (1e-6): a small positive SE, not 0 or NaN
    assert auc_standard_error(1.0, 10, 10) == pytest.approx(0.00023452081463824447, rel=1e-9)
    assert auc_standard_error(0.0, 10, 10) == pytest.approx(0.00023452081464089974, rel=1e-9)
    for args in ((0.7, 0, 5), (0.7, 5, 0), (float("nan"), 5, 5), (float("inf"), 5, 5)):
        assert np.isnan(auc_standard_error(*args)), args
    assert auc_standard_error(0.7, 1, 1) > 0
    # accuracy: binomial SE, floored at 1/n when accuracy is 0 or 1
    assert accuracy_standard_error(0.75, 300) == pytest.approx((0.75 * 0.25 / 300) ** 0.5, rel=1e-12)
    assert accuracy_standard_error(1.0, 100) == pytest.approx(0.01, rel=1e-12)
    assert accuracy_standard_error(0.0, 400) == pytest.approx(1 / 400, rel=1e-12)
    assert np.isnan(accuracy_standard_error(0.9, 0)) and np.isnan(accuracy_standard_error(float("nan"), 9))
    assert accuracy_standard_error(0.5, 8) == pytest.approx((0.25 / 8) ** 0.5, rel=1e-12)  # p(1-p) > 1/n


def test_noise_floor_snaps_risks_within_the_larger_standard_error_of_the_best():
    # best risk 0.50 (se 0.01); candidate 1 at 0.53 has se 0.04: |gap| 0.03 <= max(0.04, 0.01) -> tie;
    # candidate 2 at 0.53 with se 0.02 is resolved; a rejected candidate is never snapped
    t = CandidateTests(
        accuracy=np.array([0.80, 0.90, 0.95, np.nan]),
        risk=np.array([0.50, 0.53, 0.53, 0.40]),
        accuracy_se=np.full(4, 0.001),
        risk_se=np.array([0.01, 0.04, 0.02, 0.01]),
    )
    choice = select("weighted", t, lam=10.0)
    assert choice.index == 1  # tied on risk with the best, more accurate
    assert choice.scores[:3] == pytest.approx([0.80 - 10 * 0.0, 0.90 - 10 * 0.0, 0.95 - 10 * 0.03])
    assert choice.scores[3] == -np.inf
    # a NaN standard error counts as 0: only exact ties snap
    t_nan = CandidateTests(t.accuracy[:2], np.array([0.50, 0.5000001]), t.accuracy_se[:2], np.full(2, np.nan))
    assert select("weighted", t_nan, lam=1.0).scores[1] == pytest.approx(0.90 - 0.0000001)


def test_ties_go_to_the_higher_accuracy_then_the_lower_index():
    t = results([0.80, 0.90, 0.90], [0.60, 0.70, 0.70], risk_se=0.0)
    # weighted with lam 1: 0.80-0.10 = 0.90-0.20 = 0.70 for all three
    assert select("weighted", t, lam=1.0, noise_floor=False).index == 1
    assert select("weighted", results([0.9, 0.9], [0.6, 0.6]), lam=1.0).index == 0


def test_each_rule_states_its_reason():
    t = results([0.90, 0.88, 0.70], [0.70, 0.55, 0.52], risk_se=0.0, acc_se=0.001)
    assert select("weighted", t, lam=2.0).reason == "max accuracy - 2*(risk - 0.5)"
    assert select("ratio", t).reason == "max accuracy / risk"
    assert select("lexicographic", t, delta=0.01).reason == "lowest risk within 0.0100 of the best accuracy"
    assert select("pareto_knee", t).reason == "knee of the candidates' Pareto front"
    two = results([0.90, 0.88], [0.70, 0.55], risk_se=0.0)
    assert select("pareto_knee", two).reason == "Pareto front of <= 2 points: the more accurate"
    assert select("pareto_knee", two).index == 0


def test_ratio_survives_a_zero_risk_and_its_scores_are_the_ratios():
    t = results([0.9, 0.6], [0.0, 0.5], risk_se=0.0)
    choice = select("ratio", t, noise_floor=False)
    assert choice.index == 0 and choice.scores[0] == pytest.approx(0.9 / 1e-6)
    assert choice.scores[1] == pytest.approx(1.2)


def test_lexicographic_scores_rank_eligible_by_risk_then_accuracy():
    t = results([0.90, 0.895, 0.80], [0.60, 0.60, 0.50], risk_se=0.0, acc_se=0.0)
    choice = select("lexicographic", t, delta=0.01, noise_floor=False)
    assert choice.index == 0  # equal risk: the more accurate
    assert choice.scores == pytest.approx([-0.60 + 1e-3 * 0.90, -0.60 + 1e-3 * 0.895, -10.0 + 0.80])


def test_pareto_knee_scores_are_distances_to_the_chord():
    # front (accuracy, -risk): A (0.95, -0.90), B (0.90, -0.55), C (0.60, -0.50); chord C -> A
    t = results([0.95, 0.90, 0.60, 0.55], [0.90, 0.55, 0.50, 0.60], risk_se=0.0)  # D is dominated
    choice = select("pareto_knee", t, noise_floor=False)
    chord = np.array([0.95 - 0.60, -0.90 + 0.50])
    b = np.array([0.90 - 0.60, -0.55 + 0.50])
    distance = abs(chord[0] * b[1] - chord[1] * b[0]) / np.linalg.norm(chord)
    assert choice.index == 1
    assert choice.scores[:3] == pytest.approx([0.0, distance, 0.0], abs=1e-9)
    assert choice.scores[3] == -np.inf


def test_pareto_knee_does_not_depend_on_candidate_order():
    # the chord runs from the least to the most accurate front point wherever they sit
    acc, risk = [0.60, 0.90, 0.95, 0.55], [0.50, 0.55, 0.90, 0.60]
    choice = select("pareto_knee", results(acc, risk, risk_se=0.0), noise_floor=False)
    assert choice.index == 1 and choice.scores[1] > 0.1
    assert choice.scores[0] == pytest.approx(0.0, abs=1e-9) and choice.scores[2] == pytest.approx(0.0, abs=1e-9)


def test_resolution_needs_an_ok_status_and_a_finite_risk():
    import pandas as pd

    from training.selection import resolution

    base = [
        {"update": 1, "candidate": 0, "accuracy": 0.8, "risk": 0.70, "risk_se": 0.02, "status": "ok", "chosen": True},
        {"update": 1, "candidate": 1, "accuracy": 0.7, "risk": 0.60, "risk_se": 0.02, "status": "ok", "chosen": False},
    ]
    odd = [  # a rejected candidate with a recorded risk, an ok one without: neither is compared
        {"update": 1, "candidate": 2, "accuracy": 0.9, "risk": 0.10, "risk_se": 0.02, "status": "rejected: nan",
         "chosen": False},
        {"update": 1, "candidate": 3, "accuracy": 0.9, "risk": float("nan"), "risk_se": 0.02, "status": "ok",
         "chosen": False},
    ]
    assert resolution(pd.DataFrame(base + odd)) == resolution(pd.DataFrame(base))
    assert resolution(pd.DataFrame(base))["median_risk_spread"] == pytest.approx(0.10)
