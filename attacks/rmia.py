"""Robust membership inference, RMIA (Zarifzadeh, Liu, Chang, Shokri, "Low-Cost High-Power
Membership Inference Attacks", ICML'24).

Signal: the probability of the true class. For a point x, LR(x) = p(x|target) / p(x), with
p(x) the average over reference models; offline (no IN references) p(x) is corrected as
((1 + a) * mean_OUT + (1 - a)) / 2, since OUT references under-state a member's probability.
Score(x) = fraction of population points z with LR(x) / LR(z) > gamma. Our default gamma is
1: the score is monotone in LR(x) for any gamma, and a larger gamma only ties more points at
0 when the population is small (on digits, AUC 0.57 at gamma 2 vs 0.61 at gamma 1).

`offline_a="auto"` calibrates a as the paper does (Sec. 4, "offline"): each of a few reference
models in turn plays the target, the others are its references, and its own members and
non-members among the population points are the audit; the a in a grid on [0, 1] with the
highest mean AUC wins. It needs the references' membership on the population points
(`AttackInputs.population_reference_in`); the target's audit points never enter the choice.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np

from attacks.inputs import AttackInputs, MissingInputError, require
from attacks.metrics import roc_auc

__all__ = ["rmia_scores", "calibrate_offline_a", "RMIA"]

log = logging.getLogger(__name__)
_EPS = 1e-30
A_GRID = tuple(round(0.1 * i, 1) for i in range(11))  # 0.0, 0.1, ..., 1.0
N_CALIBRATION_TARGETS = 4  # references that play the target in turn


def calibrate_offline_a(
    pop_ref_p: np.ndarray,
    pop_ref_in: np.ndarray,
    gamma: float = 1.0,
    grid: tuple[float, ...] = A_GRID,
    n_targets: int = N_CALIBRATION_TARGETS,
) -> tuple[float, dict[float, float]]:
    """Offline RMIA's a, chosen on the references alone: (best a, {a: mean AUC}).

    pop_ref_p (K, m): the references' true-class probabilities on population points; pop_ref_in
    (K, m) their membership. Reference j (j < n_targets) is the target; the population's even
    positions are its audit points (members: pop_ref_in[j]; those on which every other reference
    trained are left out), the odd ones the comparison set z; the other K - 1 references are its
    references, each counted OUT where it did not train.
    """
    p = np.asarray(pop_ref_p, np.float64)
    member = np.asarray(pop_ref_in, bool)
    if p.ndim != 2 or member.shape != p.shape:
        raise ValueError(f"calibration needs (K, m) probabilities and membership, got {p.shape} and {member.shape}")
    k, m = p.shape
    if k < 2 or m < 4:
        raise ValueError(f"calibrating RMIA's a needs >= 2 references and >= 4 population points, got {k} and {m}")
    xs, zs = np.arange(0, m, 2), np.arange(1, m, 2)
    curves: dict[float, list[float]] = {a: [] for a in grid}
    for j in range(min(n_targets, k)):
        others = np.delete(np.arange(k), j)
        # the audit points with >= 1 OUT reference among the others (offline RMIA needs one)
        x = xs[(~member[others][:, xs]).any(axis=0)]
        labels = member[j, x].astype(int)
        if len(x) < 2 or labels.min() == labels.max():
            continue  # no members or no non-members to tell apart
        out_in = member[others][:, x]
        for a in grid:
            s = rmia_scores(p[j, x], p[others][:, x], p[j, zs], p[others][:, zs], out_in, gamma, a, online=False)
            curves[a].append(roc_auc(s, labels))
    if not any(curves.values()):
        raise ValueError("calibrating RMIA's a: no reference had both members and non-members among the points")
    mean = {a: float(np.mean(v)) for a, v in curves.items()}
    best = max(grid, key=lambda a: (mean[a], -a))  # ties: the smaller a
    return float(best), mean


def _ref_prob(
    ref_p: np.ndarray, ref_in: Optional[np.ndarray], offline_a: float, online: bool
) -> np.ndarray:
    """p(x) per point from (K, n) reference probabilities."""
    if online:
        return ref_p.mean(axis=0)
    out = ~ref_in if ref_in is not None else np.ones(ref_p.shape, bool)
    counts = out.sum(axis=0)
    if np.any(counts == 0):
        raise ValueError(
            f"offline RMIA needs >= 1 OUT reference per point; {int(np.sum(counts == 0))} point(s) have none"
        )
    mean_out = np.where(out, ref_p, 0.0).sum(axis=0) / counts
    return 0.5 * ((1.0 + offline_a) * mean_out + (1.0 - offline_a))


def rmia_scores(
    target_p: np.ndarray,
    ref_p: np.ndarray,
    pop_target_p: np.ndarray,
    pop_ref_p: np.ndarray,
    ref_in: Optional[np.ndarray] = None,
    gamma: float = 1.0,
    offline_a: float = 0.3,
    online: Optional[bool] = None,
) -> np.ndarray:
    """(n,) RMIA scores in [0, 1].

    target_p (n,) and ref_p (K, n): true-class probabilities of the audit points under the
    target and the references; pop_target_p (m,), pop_ref_p (K, m) the same on population
    points; ref_in (K, n) bool. online: None -> online iff some reference is IN.
    """
    t = np.asarray(target_p, np.float64)
    r = np.asarray(ref_p, np.float64)
    zt = np.asarray(pop_target_p, np.float64)
    zr = np.asarray(pop_ref_p, np.float64)
    if r.ndim != 2 or r.shape[1] != len(t):
        raise ValueError(f"ref_p must be (K, n) with n = {len(t)}, got {r.shape}")
    if zr.ndim != 2 or zr.shape != (r.shape[0], len(zt)):
        raise ValueError(f"pop_ref_p must be (K, m) = ({r.shape[0]}, {len(zt)}), got {zr.shape}")
    if len(zt) == 0:
        raise ValueError("RMIA needs >= 1 population point z")
    for name, a in (("target", t), ("references", r), ("population", zt), ("population refs", zr)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"RMIA {name} probabilities contain NaN/inf")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    if not 0.0 <= offline_a <= 1.0:
        raise ValueError(f"offline_a must lie in [0, 1] (\"auto\" is resolved by RMIA.score), got {offline_a}")
    if online is None:
        online = ref_in is not None and bool(np.any(ref_in))
    px = _ref_prob(r, ref_in, offline_a, online)
    pz = _ref_prob(zr, None, offline_a, online)
    ratio_x = t / np.maximum(px, _EPS)  # (n,)
    ratio_z = np.sort(zt / np.maximum(pz, _EPS))  # (m,)
    # count z with ratio_x / ratio_z > gamma, i.e. ratio_z < ratio_x / gamma
    return np.searchsorted(ratio_z, ratio_x / gamma, side="left") / len(ratio_z)


class RMIA:
    """RMIA on the reference models; needs the target and references on population points.

    population="given" requires AttackInputs.population_target/population_references;
    "auto" falls back to the audit points themselves as z when none are given (the score is
    then a rank of LR(x) among the audit points: same ranking up to ties, logged).
    offline_a: a number in [0, 1], or "auto" (`calibrate_offline_a`; offline mode needs
    AttackInputs.population_reference_in). The a used is in `fitted["offline_a"]`.
    """

    name = "rmia"
    requires: tuple[str, ...] = ("references",)
    wants: tuple[str, ...] = ("population_target", "population_references")  # its z points, when given
    needs_grads = False

    def __init__(
        self,
        gamma: float = 1.0,
        offline_a: float | str = 0.3,
        online: Optional[bool] = None,
        population: str = "auto",
    ):
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        if isinstance(offline_a, str):
            if offline_a != "auto":
                raise ValueError(f"offline_a must be a number in [0, 1] or 'auto', got {offline_a!r}")
        elif not 0.0 <= offline_a <= 1.0:
            raise ValueError(f"offline_a must lie in [0, 1] or be 'auto', got {offline_a}")
        if population not in ("auto", "given"):
            raise ValueError(f"population must be 'auto' or 'given', got {population!r}")
        self.gamma, self.offline_a, self.online, self.population = (
            gamma,
            offline_a,
            online,
            population,
        )
        if population == "given":
            self.requires = ("references", "population_target", "population_references")
        if offline_a == "auto":
            self.wants = (*self.wants, "population_reference_in")
        self.fitted: dict[str, float] = {}

    def fit(self, inputs: AttackInputs) -> RMIA:
        require(self.name, inputs, self.requires)
        return self

    def score(self, inputs: AttackInputs) -> np.ndarray:
        require(self.name, inputs, self.requires)
        assert inputs.references is not None
        t = inputs.target.confidence
        r = np.stack([s.confidence for s in inputs.references])
        if inputs.population_target is not None and inputs.population_references is not None:
            zt = inputs.population_target.confidence
            zr = np.stack([s.confidence for s in inputs.population_references])
        else:
            log.info("RMIA: no population points given; using the audit points as z")
            zt, zr = t, r
        online = self.online if self.online is not None else bool(np.any(inputs.reference_in))
        a = self.offline_a
        if a == "auto" and not online:
            if inputs.population_reference_in is None or inputs.population_references is None:
                raise MissingInputError(
                    "RMIA offline_a='auto' needs the references' membership on population points "
                    "(AttackInputs.population_reference_in); give it, or set a number in [0, 1]"
                )
            a, curve = calibrate_offline_a(zr, inputs.population_reference_in, self.gamma)
            log.info("RMIA: offline a = %.1f (mean AUC with a reference as target: %s)", a,
                     ", ".join(f"{g}: {v:.3f}" for g, v in curve.items()))
        a_used = 0.3 if a == "auto" else float(a)  # online: a is not used
        if self.offline_a == "auto":  # the choice made here: the audit records it (AuditResult.fitted)
            self.fitted = {"online": float(online)} | ({} if online else {"offline_a": a_used})
        return rmia_scores(t, r, zt, zr, inputs.reference_in, self.gamma, a_used, online)
