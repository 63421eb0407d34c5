"""Membership-inference metrics: ROC curve, AUC, TPR at low FPR, balanced accuracy, advantage,
and stratified bootstrap confidence intervals.

Follows the evaluation of Carlini et al., "Membership Inference Attacks From First
Principles" (S&P'22): report the full ROC, its AUC, and the TPR at a low FPR, on a log-log
plot. Convention everywhere: `labels` 1 = member, 0 = non-member; a higher score means
"member".

TPR at a target FPR (our documented choice, conservative): the highest TPR among the ROC
points whose FPR is <= the target; no interpolation upward. With n non-members the ROC
moves in steps of 1/n, so an FPR below 1/n is decided by one sample: `summarize` then
reports NaN with a `<key>_undersampled` flag instead of a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "roc_curve",
    "roc_auc",
    "tpr_at_fpr",
    "advantage",
    "balanced_accuracy",
    "summarize",
    "fpr_key",
    "bootstrap_metrics",
    "weighted_metrics",
    "check_scores_labels",
]


def check_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 scores (n,) and bool labels (n,); ValueError says what was wrong."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-d arrays, got shapes {s.shape} and {y.shape}"
        )
    if len(s) != len(y):
        raise ValueError(
            f"scores and labels have mismatched lengths {len(s)} and {len(y)}; "
            "need one score per labelled example"
        )
    if not np.all(np.isfinite(s)):
        bad = int(np.sum(~np.isfinite(s)))
        raise ValueError(f"scores contain {bad} NaN/inf value(s); need finite scores")
    uniq = np.unique(y)
    if not np.all(np.isin(uniq, [0, 1])):
        raise ValueError(f"labels must be 0 (non-member) or 1 (member), got values {uniq[:10]}")
    if len(uniq) < 2:
        raise ValueError(
            f"labels contain a single membership class ({uniq.tolist()}); "
            "need both members (1) and non-members (0)"
        )
    return s, y.astype(bool)


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) over every distinct score, thresholds decreasing.

    Point i predicts "member" for score >= thresholds[i]; the first point is (0, 0) at
    threshold +inf. No intermediate point is dropped, so the curve is exact.
    """
    s, y = check_scores_labels(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of equal scores
    distinct = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    tps = np.r_[0, tps]
    fps = np.r_[0, fps]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return fps / fps[-1], tps / tps[-1], thresholds


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (trapezoids): P(member score > non-member score) + 1/2 P(tie)."""
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def tpr_at_fpr(scores, labels, fpr: float) -> float:
    """Highest TPR among ROC points with FPR <= `fpr` (conservative, no interpolation)."""
    if not (0.0 <= fpr <= 1.0):
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    f, t, _ = roc_curve(scores, labels)
    return float(np.max(t[f <= fpr + 1e-12]))


def advantage(scores, labels) -> float:
    """Membership advantage (Yeom et al. 2018): max over thresholds of TPR - FPR."""
    f, t, _ = roc_curve(scores, labels)
    return float(np.max(t - f))


def balanced_accuracy(scores, labels) -> float:
    """Best balanced attack accuracy over thresholds, (TPR + 1 - FPR) / 2 = (1 + advantage) / 2.

    The threshold is chosen on the scored data itself (an upper bound); attacks that choose
    their threshold on shadow data expose `predict` for the honest version.
    """
    return 0.5 * (1.0 + advantage(scores, labels))


def fpr_key(fpr: float) -> str:
    """'tpr_at_1pct_fpr' for 0.01, 'tpr_at_0.1pct_fpr' for 0.001."""
    pct = fpr * 100.0
    txt = f"{pct:.6g}"
    return f"tpr_at_{txt}pct_fpr"


def summarize(
    scores,
    labels,
    fprs: Sequence[float] = (0.01, 0.001),
    n_bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """All audit numbers for one attack.

    Keys: "auc", "tpr_at_<p>pct_fpr" per FPR, "balanced_accuracy", "advantage"; with
    n_bootstrap >= 100 also "<key>_ci_low"/"<key>_ci_high" for the AUC and the TPRs
    (stratified percentile bootstrap, `confidence` level). A TPR whose FPR needs more
    non-members than there are (n_nonmembers < 1/fpr) is NaN, with "<key>_undersampled": 1.0.
    """
    s, y = check_scores_labels(scores, labels)
    if n_bootstrap < 0 or 0 < n_bootstrap < 100:
        raise ValueError(f"n_bootstrap={n_bootstrap}: use 0 (no intervals) or >= 100 resamples")
    n0 = int(np.sum(~y))
    out: dict[str, float] = {"auc": roc_auc(s, y)}
    for fpr in fprs:
        key = fpr_key(fpr)
        if n0 < math.ceil(1.0 / fpr - 1e-9):
            out[key] = math.nan
            out[f"{key}_undersampled"] = 1.0
        else:
            out[key] = tpr_at_fpr(s, y, fpr)
    adv = advantage(s, y)
    out["balanced_accuracy"] = 0.5 * (1.0 + adv)
    out["advantage"] = adv
    if n_bootstrap:
        boot = bootstrap_metrics(s, y, fprs=fprs, n_bootstrap=n_bootstrap, seed=seed)
        alpha = (1.0 - confidence) / 2.0
        for key, values in boot.items():
            if key in out and math.isnan(out[key]):
                out[f"{key}_ci_low"] = math.nan
                out[f"{key}_ci_high"] = math.nan
                continue
            lo, hi = np.quantile(values, [alpha, 1.0 - alpha])
            out[f"{key}_ci_low"] = float(lo)
            out[f"{key}_ci_high"] = float(hi)
    return out


def bootstrap_metrics(
    scores,
    labels,
    fprs: Sequence[float] = (0.01, 0.001),
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Stratified bootstrap replicates of the AUC and the TPRs: {key: (n_bootstrap,)}.

    Members and non-members are resampled separately (with replacement, their own sizes),
    so every replicate keeps the audit's class balance. Vectorised over replicates: each
    replicate is a vector of counts per example, and both metrics are read from cumulative
    counts over the once-sorted scores (O(B * n) memory and time).
    """
    s, y = check_scores_labels(scores, labels)
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    s1 = np.sort(s[y])  # members, ascending
    s0 = np.sort(s[~y])  # non-members, ascending
    n1, n0 = len(s1), len(s0)
    # counts of each sorted example in each replicate: (B, n)
    w1 = rng.multinomial(n1, np.full(n1, 1.0 / n1), size=n_bootstrap).astype(np.float64)
    w0 = rng.multinomial(n0, np.full(n0, 1.0 / n0), size=n_bootstrap).astype(np.float64)
    return weighted_metrics(s1, s0, w1, w0, fprs)


def weighted_metrics(
    s1: np.ndarray, s0: np.ndarray, w1: np.ndarray, w0: np.ndarray, fprs: Sequence[float]
) -> dict[str, np.ndarray]:
    """AUC and TPR@FPR for B weighted copies of an audit: {key: (B,)}.

    s1 (n1,) member and s0 (n0,) non-member scores, both sorted ascending; w1 (B, n1) and
    w0 (B, n0) integer multiplicities, each row summing to n1 and n0. With all weights 1
    this equals `roc_auc` and `tpr_at_fpr`.
    """
    n_rep = w1.shape[0]
    n1, n0 = int(round(w1[0].sum())), int(round(w0[0].sum()))
    cum0 = np.concatenate([np.zeros((n_rep, 1)), np.cumsum(w0, axis=1)], axis=1)  # (B, n0+1)
    cum1 = np.concatenate([np.zeros((n_rep, 1)), np.cumsum(w1, axis=1)], axis=1)  # (B, n1+1)
    # AUC: for each member, the weighted count of non-members strictly below and tied
    lt = np.searchsorted(s0, s1, side="left")  # (n1,)
    le = np.searchsorted(s0, s1, side="right")
    below = cum0[:, lt]  # (B, n1)
    ties = cum0[:, le] - below
    out: dict[str, np.ndarray] = {"auc": np.sum(w1 * (below + 0.5 * ties), axis=1) / (n1 * n0)}
    rows = np.arange(n_rep)
    above = n0 - cum0[:, :-1]  # (B, n0): weighted non-members at ascending index >= j
    for fpr in fprs:
        k = math.floor(fpr * n0 + 1e-9)  # false positives allowed
        if k >= n0:
            out[fpr_key(fpr)] = np.ones(n_rep)
            continue
        # predict "member" iff score > v, v the (k+1)-th largest weighted non-member:
        # the lowest threshold with at most k false positives
        j = np.sum(above > k, axis=1)  # (B,) first index with at most k at or above it
        v = s0[j - 1]
        pos = np.searchsorted(s1, v, side="right")  # members <= v
        out[fpr_key(fpr)] = (n1 - cum1[rows, pos]) / n1
    return out
