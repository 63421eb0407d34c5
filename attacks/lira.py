"""Likelihood-ratio attack, LiRA (Carlini et al., "Membership Inference Attacks From First
Principles", S&P'22).

Per audit point, the reference models' logit-scaled confidences phi = log p_y - log(1 - p_y)
are fitted by Gaussians: OUT (references that did not train on the point) and, online, IN.
Offline score: the one-sided test log Pr[Z <= phi_target], Z ~ N(mu_out, sigma_out^2).
Online score: log N(phi; mu_in, sigma_in^2) - log N(phi; mu_out, sigma_out^2).
Variance: "global" (one pooled within-point variance, Carlini's advice below 64 references),
"per_example", or "auto": per-example when every point has at least `per_example_min` IN
(online) and OUT references, else global (Carlini et al. Sec. VI-A: a per-example variance
needs many references; with fewer the global one is better).
Augmentations (Carlini et al. Sec. VI-B): with A queries per point (the point and its
augmented views, e.g. a horizontal flip), every view gets its own Gaussians and the score is
the mean over views, as in the authors' code; one query per point when no views are given.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from attacks.inputs import AttackInputs, MissingInputError, require

__all__ = [
    "lira_offline_scores",
    "lira_online_scores",
    "resolve_variance",
    "LiRAOffline",
    "LiRAOnline",
]

VARIANCES = ("global", "per_example", "auto")
PER_EXAMPLE_MIN = 32  # "auto": per-example variance from 32 IN and 32 OUT references per point (K >= 64)
_MIN_STD = 1e-6


def _as_views(a: np.ndarray, ndim: int) -> np.ndarray:
    """Add a trailing views axis (A = 1) to a statistic given without one."""
    return a[..., None] if a.ndim == ndim else a


def _check(target_stat, ref_stats, ref_in) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """target (n, A), references (K, n, A), membership (K, n); A = 1 when given without views."""
    t = np.asarray(target_stat, dtype=np.float64)
    r = np.asarray(ref_stats, dtype=np.float64)
    if t.ndim not in (1, 2):
        raise ValueError(f"target statistic must be (n,) or (n, A), got shape {t.shape}")
    t = _as_views(t, 1)
    r = _as_views(r, 2) if r.ndim == 2 else r
    if r.ndim != 3 or r.shape[1:] != t.shape:
        raise ValueError(
            f"reference statistics must be (K, n) or (K, n, A) with (n, A) = {t.shape}, got shape "
            f"{np.shape(ref_stats)}"
        )
    shape = r.shape[:2]
    m = np.zeros(shape, dtype=bool) if ref_in is None else np.asarray(ref_in, dtype=bool)
    if m.shape != shape:
        raise ValueError(f"reference_in has shape {m.shape}; need {shape} (K, n)")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))):
        raise ValueError("LiRA statistics contain NaN/inf; need finite logit-scaled confidences")
    return t, r, m


def resolve_variance(variance: str, ref_in: np.ndarray, online: bool, per_example_min: int) -> str:
    """"auto" -> "per_example" when every point has >= per_example_min OUT (and, online, IN)
    references, else "global"; other values are returned as they are."""
    if variance not in VARIANCES:
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    if variance != "auto":
        return variance
    m = np.asarray(ref_in, dtype=bool)
    counts = [(~m).sum(axis=0)] + ([m.sum(axis=0)] if online else [])
    fewest = min(int(c.min()) if c.size else 0 for c in counts)
    return "per_example" if fewest >= per_example_min else "global"


def _gaussian_fit(
    r: np.ndarray, mask: np.ndarray, variance: str, which: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point, per-view mean (n, A) and std (n, A) of the masked reference statistics (K, n, A)."""
    if variance not in ("global", "per_example"):
        raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
    counts = mask.sum(axis=0)  # (n,)
    need = 2 if variance == "per_example" else 1
    if np.any(counts < need):
        bad = int(np.sum(counts < need))
        raise ValueError(
            f"LiRA needs >= {need} {which} reference model(s) per audit point with "
            f"variance={variance!r}; {bad} point(s) have fewer (min {int(counts.min())}). "
            "Train more references" + (" or use variance='global'" if need == 2 else "")
        )
    w = mask[..., None]  # (K, n, 1)
    c = counts[:, None]  # (n, 1)
    mean = np.where(w, r, 0.0).sum(axis=0) / c  # (n, A)
    resid2 = np.where(w, (r - mean) ** 2, 0.0)  # (K, n, A)
    if variance == "per_example":
        std = np.sqrt(resid2.sum(axis=0) / (c - 1))
    else:
        dof = counts.sum() - np.count_nonzero(counts)
        if dof < 1:
            raise ValueError(
                f"LiRA with variance='global' needs some audit point with >= 2 {which} "
                "reference models to estimate the variance; give more references"
            )
        # one variance per view (each summed as a contiguous (K, n) block, as with one view)
        pooled = np.array([np.ascontiguousarray(resid2[..., a]).sum() for a in range(r.shape[2])])
        std = np.broadcast_to(np.sqrt(pooled / dof), mean.shape)
    return mean, np.maximum(std, _MIN_STD)


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def lira_offline_scores(
    target_stat, ref_stats, ref_in=None, variance: str = "global", per_example_min: int = PER_EXAMPLE_MIN
) -> np.ndarray:
    """(n,) offline LiRA: log Phi((phi - mu_out) / sigma_out) from the OUT references, mean over views.

    target_stat (n,) or (n, A), ref_stats (K, n) or (K, n, A), ref_in (K, n) bool or None (all OUT).
    """
    t, r, m = _check(target_stat, ref_stats, ref_in)
    v = resolve_variance(variance, m, False, per_example_min)
    mu, sd = _gaussian_fit(r, ~m, v, "OUT")
    return log_ndtr((t - mu) / sd).mean(axis=1)


def lira_online_scores(
    target_stat, ref_stats, ref_in, variance: str = "global", per_example_min: int = PER_EXAMPLE_MIN
) -> np.ndarray:
    """(n,) online LiRA: log-likelihood ratio of IN vs OUT Gaussians, mean over views."""
    t, r, m = _check(target_stat, ref_stats, ref_in)
    if not m.any():
        raise MissingInputError(
            "LiRA online needs IN reference models (reference_in all False): train "
            "references whose data include the audit points (shadows.pool=with_candidates), or use lira_offline"
        )
    v = resolve_variance(variance, m, True, per_example_min)
    mu_in, sd_in = _gaussian_fit(r, m, v, "IN")
    mu_out, sd_out = _gaussian_fit(r, ~m, v, "OUT")
    return (_log_normal_pdf(t, mu_in, sd_in) - _log_normal_pdf(t, mu_out, sd_out)).mean(axis=1)


class _LiRA:
    requires: tuple[str, ...] = ("references",)
    wants: tuple[str, ...] = ("target_views", "reference_views")  # augmented queries, when the data has them
    needs_grads = False
    name = "lira"
    _online = False

    def __init__(self, variance: str = "global", per_example_min: int = PER_EXAMPLE_MIN):
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        if per_example_min < 2:
            raise ValueError(f"per_example_min must be >= 2, got {per_example_min}")
        self.variance, self.per_example_min = variance, per_example_min
        self.fitted: dict[str, float] = {}

    def fit(self, inputs: AttackInputs) -> _LiRA:
        require(self.name, inputs, self.requires)
        return self

    def _stats(self, inputs: AttackInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """target (n, A), references (K, n, A), membership (K, n): A = 1 + the augmented views."""
        require(self.name, inputs, self.requires)
        assert inputs.references is not None and inputs.reference_in is not None
        t = [inputs.target.logit_scaled]
        r = [np.stack([ref.logit_scaled for ref in inputs.references])]
        if inputs.target_views is not None and inputs.reference_views is not None:
            t += [v.logit_scaled for v in inputs.target_views]
            r += [np.stack([ref.logit_scaled for ref in views]) for views in inputs.reference_views]
        if self.variance == "auto" or len(t) > 1:  # a choice made here: the audit records it (AuditResult.fitted)
            v = resolve_variance(self.variance, inputs.reference_in, self._online, self.per_example_min)
            self.fitted = {"per_example_variance": float(v == "per_example"), "n_views": float(len(t))}
        return np.stack(t, axis=1), np.stack(r, axis=2), inputs.reference_in


class LiRAOffline(_LiRA):
    """Offline LiRA: OUT references only (IN references, if any, are ignored)."""

    name = "lira_offline"

    def score(self, inputs: AttackInputs) -> np.ndarray:
        return lira_offline_scores(*self._stats(inputs), variance=self.variance, per_example_min=self.per_example_min)


class LiRAOnline(_LiRA):
    """Online LiRA: needs IN and OUT references for every audit point."""

    name = "lira_online"
    requires = ("references", "reference_in")
    _online = True

    def score(self, inputs: AttackInputs) -> np.ndarray:
        return lira_online_scores(*self._stats(inputs), variance=self.variance, per_example_min=self.per_example_min)
