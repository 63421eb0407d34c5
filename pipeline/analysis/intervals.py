"""Bootstrap intervals of a mean paired difference a - b between two methods run on the same
seeds: over seeds (resample the seed pairs), and hierarchically over seeds and examples from
per-example audit scores (within each seed, members and non-members resampled separately;
both methods share the resample when they audited the same examples, so example difficulty
cancels in the difference)."""

from __future__ import annotations

import math
import re

import numpy as np

from attacks.metrics import fpr_key, weighted_metrics
from pipeline.analysis.audit_scores import NPZ_FIELDS

# audit_<attack>_<metric> (no attack: the strongest one), for the metrics scores can recompute
AUDIT_METRIC = re.compile(r"^audit_(?:(?P<attack>.+)_)?(?P<key>auc|tpr_at_[0-9.]+pct_fpr)$")


def seed_bootstrap(diffs: np.ndarray, n_bootstrap: int, confidence: float, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the mean paired difference, resampling seeds with replacement."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:  # one seed has no spread to resample
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_bootstrap, len(d)))
    means = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _metric_replicates(
    scores: dict[str, np.ndarray], attack: str | None, key: str, w1: np.ndarray, w0: np.ndarray
) -> np.ndarray | None:
    """(B,) replicates of audit metric `key` of one attack (None: the strongest attack per replicate)."""
    y = scores["labels"].astype(bool)
    names = [k for k in scores if k not in NPZ_FIELDS]
    names = [attack] if attack is not None else names
    if any(n not in scores for n in names) or not names:
        return None
    fpr = None
    if key != "auc":
        fpr = float(key[len("tpr_at_"):-len("pct_fpr")]) / 100.0
        if (~y).sum() < math.ceil(1.0 / fpr - 1e-9):
            return None  # too few non-members: the metric is not defined (never logged either)
    reps = []
    for n in names:
        s = np.asarray(scores[n], dtype=float)
        s1, s0 = s[y], s[~y]
        o1, o0 = np.argsort(s1, kind="mergesort"), np.argsort(s0, kind="mergesort")
        m = weighted_metrics(s1[o1], s0[o0], w1[:, o1], w0[:, o0], () if fpr is None else (fpr,))
        reps.append(m["auc"] if fpr is None else m[fpr_key(fpr)])
    return np.max(np.vstack(reps), axis=0)


def example_bootstrap(
    score_pairs: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
    metric: str,
    n_bootstrap: int,
    confidence: float,
    seed: int = 0,
) -> tuple[float, float]:
    """Hierarchical paired bootstrap of mean(metric_a − metric_b): seeds, then examples within a seed.

    Each element of `score_pairs` is one seed's (scores_a, scores_b) as read by
    `runs.load_scores`. Members and non-members are resampled separately (stratified);
    when both methods audited the same examples they share the resample.
    """
    m = AUDIT_METRIC.match(metric)
    if m is None or not score_pairs:
        return math.nan, math.nan
    attack, key = m.group("attack"), m.group("key")
    rng = np.random.default_rng(seed)
    per_seed = []
    for sa, sb in score_pairs:
        ya = sa["labels"].astype(bool)
        n1, n0 = int(ya.sum()), int((~ya).sum())
        w1 = rng.multinomial(n1, np.full(n1, 1.0 / n1), size=n_bootstrap).astype(float)
        w0 = rng.multinomial(n0, np.full(n0, 1.0 / n0), size=n_bootstrap).astype(float)
        ia, ib = sa.get("example_index"), sb.get("example_index")  # both None: files without the index
        same_index = (ia is None and ib is None) or (ia is not None and ib is not None and np.array_equal(ia, ib))
        same = same_index and np.array_equal(sa["labels"], sb["labels"])
        if same:
            v1, v0 = w1, w0
        else:
            yb = sb["labels"].astype(bool)
            m1, m0 = int(yb.sum()), int((~yb).sum())
            v1 = rng.multinomial(m1, np.full(m1, 1.0 / m1), size=n_bootstrap).astype(float)
            v0 = rng.multinomial(m0, np.full(m0, 1.0 / m0), size=n_bootstrap).astype(float)
        ra = _metric_replicates(sa, attack, key, w1, w0)
        rb = _metric_replicates(sb, attack, key, v1, v0)
        if ra is None or rb is None:
            return math.nan, math.nan
        per_seed.append(ra - rb)
    d = np.vstack(per_seed)  # (n_seeds, B)
    k = len(d)
    pick = rng.integers(0, k, size=(n_bootstrap, k))  # resampled seeds per replicate
    # the j-th draw of a replicate reads example replicate (b + j) mod B of its seed, so a
    # seed drawn twice in one replicate gets two different example resamples
    cols = (np.arange(n_bootstrap)[:, None] + np.arange(k)[None, :]) % n_bootstrap
    means = d[pick, cols].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
