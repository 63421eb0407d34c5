"""MMIA: several attackers at once, the "heterogeneous attacks" of SafeCompress (Zhu et al.,
"Safety and Performance, Why Not Both? Bi-Objective Optimized Model Compression against
Heterogeneous Attacks", IEEE TSE 2024).

Each member attack scores the audit points; scores on different scales are made comparable
as percentile ranks among the audit points (a point's risk under an attacker = the fraction
of audit points it outranks), then combined:
- "max": the highest risk any attacker assigns (a point is as exposed as its worst attack);
- "mean": the average risk;
- "stack": trained together, a logistic regression over the members' scores, fitted on the
  known members vs known non-members with out-of-fold member scores (2-fold cross-fitting,
  so the stacker never sees an attacker's scores on its own training points). Needs members
  that score from target signals only (metric and NN attacks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import numpy as np
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from attacks.inputs import AttackInputs, require
from attacks.registry import _specs, make_attack, register
from attacks.signals import Signals

__all__ = ["MMIA", "percentile_ranks"]

COMBINES = ("max", "mean", "stack")
# attacks whose score needs only the target's signals (so they can score known points)
TARGET_ONLY = {
    "loss",
    "confidence",
    "max_confidence",
    "entropy",
    "modified_entropy",
    "nn_blackbox",
    "nn_whitebox",
}


def percentile_ranks(scores: np.ndarray) -> np.ndarray:
    """(n,) ranks in (0, 1], ties averaged: the fraction of points a score is at or above."""
    s = np.asarray(scores, np.float64)
    return rankdata(s, method="average") / len(s)


class MMIA:
    name = "mmia"
    # the union of its members' declarations, set per instance once the members are built
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    needs_grads = False

    def __init__(
        self,
        members: Union[Sequence[str], Mapping[str, Mapping[str, Any]]] = ("loss", "nn_blackbox"),
        combine: str = "max",
        seed: int = 0,
    ):
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
        specs = _specs(members)
        if len(specs) < 2:
            raise ValueError(f"MMIA needs >= 2 member attacks, got {[s[0] for s in specs]}")
        if any(reg == "mmia" for _, reg, _ in specs):
            raise ValueError("MMIA members cannot be 'mmia'")
        if combine == "stack":
            bad = [reg for _, reg, _ in specs if reg not in TARGET_ONLY]
            if bad:
                raise ValueError(
                    f"combine='stack' needs members that score from target signals only "
                    f"({sorted(TARGET_ONLY)}); {bad} are not"
                )
        self.combine, self.seed = combine, seed
        self.specs = specs
        self.members_ = [make_attack(reg, **params) for _, reg, params in specs]
        req: list[str] = []
        for m in self.members_:
            req += [r for r in m.requires if r not in req]
        if combine == "stack":
            req += [r for r in ("known_members", "known_nonmembers") if r not in req]
        self.requires: tuple[str, ...] = tuple(req)
        self.wants: tuple[str, ...] = tuple(dict.fromkeys(w for m in self.members_ for w in m.wants))
        self.needs_grads = any(m.needs_grads for m in self.members_)
        self.stacker_: Optional[Any] = None

    def fit(self, inputs: AttackInputs) -> MMIA:
        require(self.name, inputs, self.requires)
        for m in self.members_:
            m.fit(inputs)
        if self.combine == "stack":
            self.stacker_ = self._fit_stacker(inputs)
        return self

    def _member_scores(self, inputs: AttackInputs, members: list) -> np.ndarray:
        return np.stack([np.asarray(m.score(inputs), np.float64) for m in members], 1)  # (n, M)

    def _fit_stacker(self, inputs: AttackInputs):
        km, kn = inputs.known_members, inputs.known_nonmembers
        assert km is not None and kn is not None
        rng = np.random.default_rng(self.seed)
        fold_m = rng.permutation(len(km)) % 2
        fold_n = rng.permutation(len(kn)) % 2
        feats, ys = [], []
        for f in (0, 1):
            train = inputs.with_target(inputs.target)
            train.known_members, train.known_nonmembers = (
                km.subset(fold_m != f),
                kn.subset(fold_n != f),
            )
            members = [make_attack(reg, **p).fit(train) for _, reg, p in self.specs]
            held: Signals = _concat(km.subset(fold_m == f), kn.subset(fold_n == f))
            feats.append(self._member_scores(inputs.with_target(held), members))
            ys.append(np.r_[np.ones(int((fold_m == f).sum())), np.zeros(int((fold_n == f).sum()))])
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
            np.concatenate(feats), np.concatenate(ys)
        )

    def score(self, inputs: AttackInputs) -> np.ndarray:
        s = self._member_scores(inputs, self.members_)
        if self.combine == "stack":
            if self.stacker_ is None:
                raise ValueError("MMIA (stack) must be fitted before scoring")
            return np.asarray(self.stacker_.decision_function(s), np.float64)
        ranks = np.stack([percentile_ranks(c) for c in s.T], 1)
        return ranks.max(1) if self.combine == "max" else ranks.mean(1)


def _concat(a: Signals, b: Signals) -> Signals:
    grads = None if a.grads is None or b.grads is None else np.concatenate([a.grads, b.grads])
    return Signals(
        np.concatenate([a.logits, b.logits]), np.concatenate([a.labels, b.labels]), grads
    )


register("mmia", MMIA)
