"""Metric-based attacks: threshold one per-example signal of the target model.

Loss (Yeom et al., CSF'18), true-class and max confidence, prediction entropy and modified
entropy (Song & Mittal, "Systematic Evaluation of Privacy Risks of Machine Learning Models",
USENIX Security'21). The score needs only the target's signals; `fit` chooses the decision
threshold (global, or one per class as in Song & Mittal) on shadow data when the attacker
has some (shadow models' members/non-members, else the target's known members/non-members),
so `predict` reports an honest attack accuracy.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from attacks.inputs import AttackInputs
from attacks.metrics import check_scores_labels, roc_curve
from attacks.signals import Signals

__all__ = [
    "SignalAttack",
    "LossAttack",
    "ConfidenceAttack",
    "MaxConfidenceAttack",
    "EntropyAttack",
    "ModifiedEntropyAttack",
    "best_threshold",
    "signal_score",
]

# signal name -> sign making "higher = member"
SIGNAL_SIGNS = {
    "loss": -1.0,
    "confidence": 1.0,
    "max_confidence": 1.0,
    "entropy": -1.0,
    "modified_entropy": -1.0,
    "logit_scaled": 1.0,
}


def signal_score(signals: Signals, signal: str) -> np.ndarray:
    """The membership score of one signal: the signal, negated where lower means member."""
    if signal not in SIGNAL_SIGNS:
        raise ValueError(f"unknown signal {signal!r}; valid: {sorted(SIGNAL_SIGNS)}")
    return SIGNAL_SIGNS[signal] * np.asarray(getattr(signals, signal), dtype=np.float64)


def best_threshold(scores, labels) -> float:
    """Threshold t maximising balanced accuracy of "member iff score >= t" on (scores, labels)."""
    fpr, tpr, thr = roc_curve(scores, labels)
    i = int(np.argmax(tpr - fpr))
    if not np.isfinite(thr[i]):  # no threshold beats chance: call everything a non-member
        return float(np.max(scores)) + 1.0
    return float(thr[i])


class SignalAttack:
    """Threshold attack on one signal; subclasses fix `signal`."""

    name = "signal"
    signal = "loss"
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ()
    needs_grads = False

    def __init__(self, per_class: bool = False):
        if not isinstance(per_class, bool):
            raise ValueError(f"per_class must be a bool, got {per_class!r}")
        self.per_class = per_class
        self.threshold_: Optional[float] = None
        self.class_thresholds_: Optional[np.ndarray] = None

    def _shadow_data(
        self, inputs: AttackInputs
    ) -> Optional[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(scores, membership, class labels) of the attacker's own labelled data, if any."""
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        if inputs.shadow_train:
            for sig, member in inputs.shadow_train:
                parts.append((signal_score(sig, self.signal), np.asarray(member, bool), sig.labels))
        elif inputs.known_members is not None and inputs.known_nonmembers is not None:
            km, kn = inputs.known_members, inputs.known_nonmembers
            parts.append((signal_score(km, self.signal), np.ones(len(km), bool), km.labels))
            parts.append((signal_score(kn, self.signal), np.zeros(len(kn), bool), kn.labels))
        if not parts:
            return None
        return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]

    def fit(self, inputs: AttackInputs) -> SignalAttack:
        data = self._shadow_data(inputs)
        if data is None:
            if self.per_class:
                raise ValueError(
                    f"attack {self.name!r} with per_class=True needs shadow data to set the "
                    "class thresholds: AttackInputs.shadow_train or known_members + known_nonmembers"
                )
            return self
        s, m, c = data
        check_scores_labels(s, m)
        self.threshold_ = best_threshold(s, m)
        if self.per_class:
            n_classes = inputs.target.n_classes
            thr = np.full(n_classes, self.threshold_)
            for k in range(n_classes):
                sel = c == k
                if sel.any() and 0 < m[sel].sum() < sel.sum():
                    thr[k] = best_threshold(s[sel], m[sel])
            self.class_thresholds_ = thr
        return self

    def score(self, inputs: AttackInputs) -> np.ndarray:
        s = signal_score(inputs.target, self.signal)
        if self.per_class:
            if self.class_thresholds_ is None:
                raise ValueError(
                    f"attack {self.name!r} (per_class=True) must be fitted before scoring"
                )
            return s - self.class_thresholds_[inputs.target.labels]
        return s

    def predict(self, inputs: AttackInputs) -> np.ndarray:
        """(n,) bool membership decisions with the threshold(s) chosen in `fit`."""
        if self.threshold_ is None:
            raise ValueError(
                f"attack {self.name!r} has no threshold: fit it with shadow data "
                "(AttackInputs.shadow_train or known_members + known_nonmembers) first"
            )
        s = self.score(inputs)
        return s >= (0.0 if self.per_class else self.threshold_)


class LossAttack(SignalAttack):
    """Yeom et al.: lower loss -> member."""

    name = "loss"
    signal = "loss"


class ConfidenceAttack(SignalAttack):
    """Softmax probability of the true class; higher -> member."""

    name = "confidence"
    signal = "confidence"


class MaxConfidenceAttack(SignalAttack):
    """Largest softmax probability (label-free); higher -> member."""

    name = "max_confidence"
    signal = "max_confidence"


class EntropyAttack(SignalAttack):
    """Prediction entropy; lower -> member."""

    name = "entropy"
    signal = "entropy"


class ModifiedEntropyAttack(SignalAttack):
    """Song & Mittal's modified entropy (uses the label); lower -> member."""

    name = "modified_entropy"
    signal = "modified_entropy"
