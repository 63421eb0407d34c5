"""Audit a released set of compressed versions of one model as one release (issue 27).

A compression search releases its Pareto front: several compressed versions of one model. An
attacker who queries every version can combine their per-example membership scores; CompLeak
(USENIX Security 2026) reports that several versions leak more than one. Given each version's
per-example scores of one attack on the same audit points (`audit/scores.npz`), this module
scores the set with
- `mean`: the mean of the versions' scores, `max`: their maximum (same attack, same scale);
- `learned`: a logistic regression on the versions' standardised scores, fitted on a labelled
  evaluation disjoint from the audit (the `select` evaluation: search members vs validation
  non-members, i.e. an attacker who knows some members, the protocol of the audit's trained
  attacks), never on the audit's own labels;
and reports the set's AUC and TPR at low FPR next to the best single version, and, for every k,
the mean over k-version subsets of the front (all of them, or a seeded sample of
`max_subsets`): how much releasing k versions adds.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from attacks.metrics import summarize

COMBINERS = ("mean", "max", "learned")
METRICS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")


def _standardise(fit: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both (V, n) arrays standardised per version with the fit set's mean and std."""
    mu, sd = fit.mean(axis=1, keepdims=True), fit.std(axis=1, keepdims=True)
    sd = np.where(sd > 0, sd, 1.0)
    return (fit - mu) / sd, (x - mu) / sd


def combine(
    how: str, scores: np.ndarray, fit_scores: np.ndarray | None = None, fit_labels: np.ndarray | None = None
) -> np.ndarray:
    """(n,) set scores from (V, n) per-version scores; `learned` also needs (V, m) fit scores and (m,) labels."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"per-version scores must be (V, n), got shape {s.shape}")
    if how == "mean":
        return s.mean(axis=0)
    if how == "max":
        return s.max(axis=0)
    if how != "learned":
        raise ValueError(f"unknown combiner {how!r}; valid: {list(COMBINERS)}")
    if fit_scores is None or fit_labels is None:
        raise ValueError("the learned combination needs fit_scores (V, m) and fit_labels (m,) disjoint from the audit")
    from sklearn.linear_model import LogisticRegression

    f, x = _standardise(np.asarray(fit_scores, dtype=np.float64), s)
    y = np.asarray(fit_labels).astype(int)
    if f.shape[0] != s.shape[0] or f.shape[1] != len(y) or len(set(y)) < 2:
        raise ValueError(
            f"fit_scores {f.shape} must be (V={s.shape[0]}, m) with m = {len(y)} labels of both classes"
        )
    model = LogisticRegression(C=1.0, max_iter=1000).fit(f.T, y)
    return model.decision_function(x.T)


def aligned(versions: Mapping[str, Mapping[str, np.ndarray]], attack: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(V, n) scores of `attack`, (n,) labels and (n,) pool indices on the points every version scored."""
    names = list(versions)
    common = None
    for v in names:
        idx = np.asarray(versions[v]["pool_index"])
        common = idx if common is None else np.intersect1d(common, idx)
    assert common is not None
    rows, labels = [], None
    for v in names:
        ev = versions[v]
        if attack not in ev:
            raise ValueError(f"version {v!r} has no scores of attack {attack!r}; it has {sorted(ev)}")
        order = {int(p): i for i, p in enumerate(np.asarray(ev["pool_index"]))}
        pos = np.array([order[int(p)] for p in common], dtype=np.int64)
        y = np.asarray(ev["member"]).astype(int)[pos]
        if labels is not None and not np.array_equal(labels, y):
            raise ValueError(f"version {v!r} gives other membership labels to the same points")
        labels = y
        rows.append(np.asarray(ev[attack], dtype=np.float64)[pos])
    return np.stack(rows), np.asarray(labels), common


def _metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    m = summarize(scores, labels, fprs=(0.01, 0.001))
    return {k: float(m[k]) for k in METRICS}


def set_audit(
    audit: Mapping[str, Mapping[str, np.ndarray]],
    fit: Mapping[str, Mapping[str, np.ndarray]] | None,
    attack: str,
    max_subsets: int = 50,
    seed: int = 0,
) -> pd.DataFrame:
    """The set audit of one attack: rows (kind, k, combiner, n_subsets, auc, tpr_at_1pct_fpr,
    tpr_at_0.1pct_fpr); kind `single` (each version, k = 1), `best_single`, `subsets` (mean
    over k-version subsets), `set` (all V versions). `audit[v]` / `fit[v]`: version v's arrays
    of one evaluation ({attack: scores, "member", "pool_index"}); fit None: no learned row."""
    if len(audit) < 1:
        raise ValueError("a set audit needs at least one version")
    names = list(audit)
    s, y, _ = aligned(audit, attack)
    fs = fy = None
    if fit is not None:
        fs, fy, _ = aligned({v: fit[v] for v in names}, attack)
    combiners = [c for c in COMBINERS if c != "learned" or fs is not None]
    rows = []
    singles = []
    for i, v in enumerate(names):
        m = _metrics(s[i], y)
        singles.append(m)
        rows.append({"kind": "single", "version": v, "k": 1, "combiner": "", "n_subsets": 1, **m})
    best = max(range(len(names)), key=lambda i: singles[i]["auc"])
    rows.append({"kind": "best_single", "version": names[best], "k": 1, "combiner": "", "n_subsets": len(names),
                 **singles[best]})
    rng = np.random.default_rng(seed)
    for k in range(2, len(names) + 1):
        subsets = list(itertools.combinations(range(len(names)), k))
        if len(subsets) > max_subsets:
            subsets = [subsets[j] for j in np.sort(rng.choice(len(subsets), max_subsets, replace=False))]
        for how in combiners:
            ms = []
            for sub in subsets:
                sel = list(sub)
                combined = combine(how, s[sel], None if fs is None else fs[sel], fy)
                ms.append(_metrics(combined, y))
            kind = "set" if k == len(names) else "subsets"
            mean = {m: float(np.nanmean([x[m] for x in ms])) if any(math.isfinite(x[m]) for x in ms) else math.nan
                    for m in METRICS}
            rows.append({"kind": kind, "version": "+".join(names[i] for i in subsets[0]) if kind == "set" else "",
                         "k": k, "combiner": how, "n_subsets": len(subsets), **mean})
    table = pd.DataFrame(rows)
    table.insert(0, "attack", attack)
    return table


def to_markdown(table: pd.DataFrame, title: str) -> str:
    """The set-audit table with the gain of the full set over the best single version."""
    lines = [f"# {title}", "",
             "Each row scores the audit points (audit members vs test non-members) with one attack. `single`: one "
             "version; `subsets`: mean over k-version subsets of the front; `set`: every version. Combiners: `mean` "
             "and `max` of the versions' scores; `learned`: logistic regression on them, fitted on the `select` "
             "evaluation (search members vs validation non-members), never on the audit's labels. `n/a`: fewer "
             "non-members than 1/FPR.", ""]

    def fmt(v: float) -> str:
        return "n/a" if not math.isfinite(v) else f"{v:.3f}"

    for attack, t in table.groupby("attack", sort=False):
        best = t[t.kind == "best_single"].iloc[0]
        lines += [f"## {attack}", "", f"Best single version: {best.version} (AUC {fmt(best.auc)}, TPR@1%FPR "
                  f"{fmt(best.tpr_at_1pct_fpr)}, TPR@0.1%FPR {fmt(best['tpr_at_0.1pct_fpr'])}).", ""]
        full = t[t.kind == "set"]
        for _, r in full.iterrows():
            lines.append(f"- all {r.k} versions, {r.combiner}: AUC {fmt(r.auc)} ({r.auc - best.auc:+.3f} over the best "
                         f"single), TPR@1%FPR {fmt(r.tpr_at_1pct_fpr)}, TPR@0.1%FPR {fmt(r['tpr_at_0.1pct_fpr'])}")
        lines += ["", "| kind | version(s) | k | combiner | subsets | AUC | TPR@1%FPR | TPR@0.1%FPR |",
                  "|---|---|---|---|---|---|---|---|"]
        for _, r in t.iterrows():
            lines.append(f"| {r.kind} | {r.version} | {r.k} | {r.combiner} | {r.n_subsets} | {fmt(r.auc)} | "
                         f"{fmt(r.tpr_at_1pct_fpr)} | {fmt(r['tpr_at_0.1pct_fpr'])} |")
        lines.append("")
    return "\n".join(lines) + "\n"
