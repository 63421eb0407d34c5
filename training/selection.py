"""Candidate selection rules of the SafeCompress loop, with a noise floor.

At every mask update each candidate has a performance-test result (validation
accuracy) and a safety-test result (the simulated attacker's AUC, "risk"), each
with its sampling standard error. A rule turns them into one score per
candidate; the loop continues from the highest. Zhu et al. (TSE 2024) do not
publish their exact formula, so the rules are pluggable:

- `weighted`       accuracy − λ·(risk − 0.5)
- `ratio`          accuracy / risk
- `lexicographic`  lowest risk among candidates within δ of the best accuracy
- `pareto_knee`    the knee of the candidates' accuracy/risk Pareto front

Noise floor (issue: selection must not reward noise or damage): with
`noise_floor=True`, risk differences smaller than the risk's standard error count
as ties (risks are snapped to the lowest risk within one SE), and the
lexicographic δ is at least `z` accuracy standard errors. Ties always go to the
higher accuracy, then to the lower index, so a candidate is never chosen for a
risk drop the test cannot resolve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CandidateTests:
    """Per-candidate test outcomes, all shape (N,). Rejected candidates have NaN."""

    accuracy: np.ndarray
    risk: np.ndarray
    accuracy_se: np.ndarray
    risk_se: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.accuracy) & np.isfinite(self.risk)


@dataclass(frozen=True)
class Choice:
    index: int
    scores: np.ndarray  # (N,), -inf for rejected candidates
    reason: str


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC from n_pos positives and n_neg negatives."""
    if not (n_pos > 0 and n_neg > 0) or not math.isfinite(auc):
        return math.nan
    a = min(max(auc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return float(math.sqrt(max(var, 0.0)))


def accuracy_standard_error(acc: float, n: int) -> float:
    if n <= 0 or not math.isfinite(acc):
        return math.nan
    return float(math.sqrt(max(acc * (1 - acc), 1.0 / n) / n))


def _floored_risk(t: CandidateTests, noise_floor: bool) -> np.ndarray:
    """Risks within one standard error of the lowest valid risk are treated as equal to it."""
    risk = t.risk.copy()
    if not noise_floor or not t.valid.any():
        return risk
    best = int(np.nanargmin(np.where(t.valid, risk, np.inf)))
    se = np.nan_to_num(np.maximum(t.risk_se, t.risk_se[best]), nan=0.0)
    close = t.valid & (risk - risk[best] <= se)
    risk[close] = risk[best]
    return risk


def _finalise(scores: np.ndarray, t: CandidateTests, reason: str) -> Choice:
    scores = np.where(t.valid, scores, -np.inf)
    if not np.isfinite(scores).any():
        raise ValueError("every candidate was rejected (non-finite accuracy or risk)")
    top = np.flatnonzero(scores >= np.max(scores) - 1e-12)
    # ties: higher accuracy first, then lower index
    index = int(top[np.argmax(t.accuracy[top])]) if len(top) > 1 else int(top[0])
    return Choice(index, scores, reason)


def weighted(t: CandidateTests, lam: float = 1.0, noise_floor: bool = True, **_: float) -> Choice:
    risk = _floored_risk(t, noise_floor)
    return _finalise(t.accuracy - lam * (risk - 0.5), t, f"max accuracy - {lam:g}*(risk - 0.5)")


def ratio(t: CandidateTests, noise_floor: bool = True, **_: float) -> Choice:
    risk = _floored_risk(t, noise_floor)
    return _finalise(t.accuracy / np.maximum(risk, 1e-6), t, "max accuracy / risk")


def lexicographic(
    t: CandidateTests, delta: float = 0.01, noise_floor: bool = True, z: float = 1.0, **_: float
) -> Choice:
    acc = np.where(t.valid, t.accuracy, -np.inf)
    best = int(np.argmax(acc))
    tol = delta
    if noise_floor and math.isfinite(t.accuracy_se[best]):
        tol = max(delta, z * float(t.accuracy_se[best]))
    eligible = t.valid & (acc >= acc[best] - tol)
    risk = _floored_risk(t, noise_floor)
    # score: eligible candidates ordered by (-risk, accuracy); others far below
    scores = np.where(eligible, -risk + 1e-3 * t.accuracy, -10.0 + t.accuracy)
    return _finalise(scores, t, f"lowest risk within {tol:.4f} of the best accuracy")


def pareto_knee(t: CandidateTests, noise_floor: bool = True, **_: float) -> Choice:
    """Nondominated candidates (max accuracy, min risk); pick the one farthest from the chord."""
    risk = _floored_risk(t, noise_floor)
    idx = np.flatnonzero(t.valid)
    pts = np.stack([t.accuracy[idx], -risk[idx]], axis=1)  # maximise both
    nd = [
        i for i in range(len(idx))
        if not np.any(np.all(pts >= pts[i], axis=1) & np.any(pts > pts[i], axis=1))
    ]
    front = pts[nd]
    scores = np.full(len(t.accuracy), -np.inf)
    if len(nd) <= 2:
        for j, i in enumerate(nd):
            scores[idx[i]] = front[j, 0]  # no knee: prefer accuracy
        return _finalise(scores, t, "Pareto front of <= 2 points: the more accurate")
    lo, hi = front[np.argmin(front[:, 0])], front[np.argmax(front[:, 0])]
    span = (hi - lo) / (np.linalg.norm(hi - lo) + 1e-12)
    for j, i in enumerate(nd):
        v = front[j] - lo
        scores[idx[i]] = abs(v[0] * span[1] - v[1] * span[0])  # distance to the chord
    return _finalise(scores, t, "knee of the candidates' Pareto front")


RULES: dict[str, Callable[..., Choice]] = {
    "weighted": weighted,
    "ratio": ratio,
    "lexicographic": lexicographic,
    "pareto_knee": pareto_knee,
}


def select(rule: str, t: CandidateTests, **params: float) -> Choice:
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; valid: {sorted(RULES)}")
    return RULES[rule](t, **params)


def resolution(table) -> dict[str, float]:
    """Did the safety test tell the candidates apart? A summary of a run's candidate table.

    `table` holds one row per candidate per mask update (the compress stage's
    `candidates.csv`: update, candidate, accuracy, risk, risk_se, status, chosen; an
    optional `run` column groups several runs). Over the updates with at least two
    candidates tested: the median spread of their risks (max − min), the median
    standard error of one risk, the share of updates whose spread exceeds two standard
    errors (a difference the safety test resolves), and the share where the chosen
    candidate is not the most accurate one. Empty when no update tested two candidates.
    """
    import pandas as pd

    t = pd.DataFrame(table).reset_index(drop=True)
    if t.empty or "risk" not in t or "risk_se" not in t:
        return {}
    t = t[(t["status"].astype(str) == "ok") & np.isfinite(t["risk"].astype(float))]
    keys = ["run", "update"] if "run" in t else ["update"]
    t = t[t.groupby(keys)["candidate"].transform("size") >= 2]
    if t.empty:
        return {}
    by_update = t.groupby(keys)
    spread = by_update["risk"].max() - by_update["risk"].min()
    se = by_update["risk_se"].mean()
    most_accurate = t.loc[by_update["accuracy"].idxmax()].set_index(keys)["candidate"]
    chosen = t[t["chosen"].astype(str).str.lower() == "true"].groupby(keys)["candidate"].max()
    return {
        "updates": float(len(spread)),
        "median_risk_spread": float(spread.median()),
        "median_risk_se": float(se.median()),
        "resolved_fraction": float((spread > 2 * se).mean()),
        "less_accurate_chosen_fraction": float((chosen.reindex(spread.index) != most_accurate).mean()),
    }
