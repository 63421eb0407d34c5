"""Likelihood-ratio attack, LiRA (Carlini et al., "Membership Inference Attacks From First
Principles", S&P'22).

Per audit point, the reference models' logit-scaled confidences phi = log p_y - log(1 - p_y)
are fitted by Gaussians: OUT (references that did not train on the point) and, online, IN.
Offline score: the one-sided test log Pr[Z <= phi_target], Z ~ N(mu_out, sigma_out^2).
Online score: log N(phi; mu_in, sigma_in^2) - log N(phi; mu_out, sigma_out^2).
Variance: "global" (one pooled within-point variance, Carlini's advice for few references)
or "per_example". Augmentation queries are not implemented (one query per point).
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_ndtr

from attacks.inputs import AttackInputs, MissingInputError, require

__all__ = ["lira_offline_scores", "lira_online_scores", "LiRAOffline", "LiRAOnline"]

VARIANCES = ("global", "per_example")
_MIN_STD = 1e-6


def _check(target_stat, ref_stats, ref_in) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.asarray(target_stat, dtype=np.float64)
    r = np.asarray(ref_stats, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"target statistic must be (n,), got shape {t.shape}")
    if r.ndim != 2 or r.shape[1] != len(t):
        raise ValueError(
            f"reference statistics must be (K, n) with n = {len(t)}, got shape {r.shape}"
        )
    m = np.zeros(r.shape, dtype=bool) if ref_in is None else np.asarray(ref_in, dtype=bool)
    if m.shape != r.shape:
        raise ValueError(f"reference_in has shape {m.shape}; need {r.shape} (K, n)")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(r))):
        raise ValueError("LiRA statistics contain NaN/inf; need finite logit-scaled confidences")
    return t, r, m


def _gaussian_fit(
    r: np.ndarray, mask: np.ndarray, variance: str, which: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point mean (n,) and std (n,) of the masked reference statistics."""
    if variance not in VARIANCES:
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
    mean = np.where(mask, r, 0.0).sum(axis=0) / counts
    resid2 = np.where(mask, (r - mean) ** 2, 0.0)
    if variance == "per_example":
        std = np.sqrt(resid2.sum(axis=0) / (counts - 1))
    else:
        dof = counts.sum() - np.count_nonzero(counts)
        if dof < 1:
            raise ValueError(
                f"LiRA with variance='global' needs some audit point with >= 2 {which} "
                "reference models to estimate the variance; give more references"
            )
        std = np.full(r.shape[1], np.sqrt(resid2.sum() / dof))
    return mean, np.maximum(std, _MIN_STD)


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def lira_offline_scores(
    target_stat, ref_stats, ref_in=None, variance: str = "global"
) -> np.ndarray:
    """(n,) offline LiRA: log Phi((phi - mu_out) / sigma_out) from the OUT references.

    target_stat (n,), ref_stats (K, n), ref_in (K, n) bool or None (all OUT).
    """
    t, r, m = _check(target_stat, ref_stats, ref_in)
    mu, sd = _gaussian_fit(r, ~m, variance, "OUT")
    return log_ndtr((t - mu) / sd)


def lira_online_scores(target_stat, ref_stats, ref_in, variance: str = "global") -> np.ndarray:
    """(n,) online LiRA: log-likelihood ratio of IN vs OUT Gaussians."""
    t, r, m = _check(target_stat, ref_stats, ref_in)
    if not m.any():
        raise MissingInputError(
            "LiRA online needs IN reference models (reference_in all False): train "
            "references whose data include the audit points, or use lira_offline"
        )
    mu_in, sd_in = _gaussian_fit(r, m, variance, "IN")
    mu_out, sd_out = _gaussian_fit(r, ~m, variance, "OUT")
    return _log_normal_pdf(t, mu_in, sd_in) - _log_normal_pdf(t, mu_out, sd_out)


class _LiRA:
    requires: tuple[str, ...] = ("references",)
    name = "lira"

    def __init__(self, variance: str = "global"):
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        self.variance = variance

    def fit(self, inputs: AttackInputs) -> _LiRA:
        require(self.name, inputs, self.requires)
        return self

    def _stats(self, inputs: AttackInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        require(self.name, inputs, self.requires)
        assert inputs.references is not None and inputs.reference_in is not None
        t = inputs.target.logit_scaled
        r = np.stack([ref.logit_scaled for ref in inputs.references])
        return t, r, inputs.reference_in


class LiRAOffline(_LiRA):
    """Offline LiRA: OUT references only (IN references, if any, are ignored)."""

    name = "lira_offline"

    def score(self, inputs: AttackInputs) -> np.ndarray:
        return lira_offline_scores(*self._stats(inputs), variance=self.variance)


class LiRAOnline(_LiRA):
    """Online LiRA: needs IN and OUT references for every audit point."""

    name = "lira_online"
    requires = ("references", "reference_in")

    def score(self, inputs: AttackInputs) -> np.ndarray:
        return lira_online_scores(*self._stats(inputs), variance=self.variance)
