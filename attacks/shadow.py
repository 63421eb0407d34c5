"""Shadow-model attack (Shokri, Stronati, Song, Shmatikov, "Membership Inference Attacks
Against Machine Learning Models", S&P'17).

The attacker trains shadow models on its own data, labels the shadows' outputs on their own
members (1) and non-members (0), and trains an attack classifier on them; the classifier
then scores the target's outputs. Shokri trains one classifier per class on the prediction
vector (`per_class=True`, logistic regression on the log-probabilities and the logit-scaled
true-class confidence); the default is one global classifier, the black-box attack network
of `attacks.nn` (label-aligned features, so one model serves all classes).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from attacks.inputs import AttackInputs, MissingInputError
from attacks.nn import _seeded, blackbox_tensors, train_attack_model
from attacks.nn_models import BlackBoxAttackModel
from attacks.signals import Signals

__all__ = ["ShadowAttack", "shadow_training_data"]


def shadow_training_data(inputs: AttackInputs) -> tuple[Signals, np.ndarray]:
    """All shadows' signals on their own data pools, concatenated, and membership (bool).

    From AttackInputs.shadow_train; failing that, the references on the audit points with
    `reference_in`, when it holds both members and non-members.
    """
    parts: list[tuple[Signals, np.ndarray]] = []
    if inputs.shadow_train:
        parts = [(s, np.asarray(m, bool)) for s, m in inputs.shadow_train]
    elif (
        inputs.references is not None
        and inputs.reference_in is not None
        and inputs.reference_in.any()
    ):
        parts = list(zip(inputs.references, inputs.reference_in, strict=True))
    if not parts:
        raise MissingInputError(
            "attack 'shadow' needs AttackInputs.shadow_train (each shadow's signals on its own "
            "data and their membership), or references with some reference_in True"
        )
    member = np.concatenate([m for _, m in parts])
    if member.all() or not member.any():
        raise ValueError("shadow training data hold a single membership class; need both")
    sig = Signals(
        np.concatenate([s.logits for s, _ in parts]), np.concatenate([s.labels for s, _ in parts])
    )
    return sig, member


def _tabular(s: Signals) -> np.ndarray:
    """(n, C + 1): log-probabilities clamped at -30 and the logit-scaled true-class confidence."""
    return np.c_[np.maximum(s.log_probs, -30.0), np.clip(s.logit_scaled, -30.0, 30.0)]


class ShadowAttack:
    name = "shadow"
    requires: tuple[str, ...] = ()
    wants: tuple[str, ...] = ("shadow_train",)  # else references with mixed reference_in
    needs_grads = False

    def __init__(
        self,
        per_class: bool = False,
        epochs: int = 10,
        lr: float = 1e-3,
        max_examples: int = 4000,
        seed: int = 0,
    ):
        if epochs < 1 or lr <= 0 or max_examples < 2:
            raise ValueError(
                f"need epochs >= 1, lr > 0, max_examples >= 2; got {epochs}, {lr}, {max_examples}"
            )
        self.per_class, self.epochs, self.lr = per_class, epochs, lr
        self.max_examples, self.seed = max_examples, seed
        self.model_: Optional[torch.nn.Module] = None
        self.class_models_: dict[int, object] = {}
        self.global_model_: Optional[object] = None

    def fit(self, inputs: AttackInputs) -> ShadowAttack:
        sig, member = shadow_training_data(inputs)
        rng = np.random.default_rng(self.seed)
        if len(sig) > self.max_examples:  # keep the classifier's cost bounded
            keep = np.sort(rng.choice(len(sig), self.max_examples, replace=False))
            sig, member = sig.subset(keep), member[keep]
        if self.per_class:
            x = _tabular(sig)
            self.global_model_ = self._logistic().fit(x, member)
            self.class_models_ = {}
            for c in np.unique(sig.labels):
                sel = sig.labels == c
                if 5 <= member[sel].sum() <= sel.sum() - 5:
                    self.class_models_[int(c)] = self._logistic().fit(x[sel], member[sel])
            return self
        with _seeded(self.seed):
            model = BlackBoxAttackModel(sig.n_classes, (256, 128, 64), (128, 64), (128, 64))
        m_t, n_t = blackbox_tensors(sig.subset(member)), blackbox_tensors(sig.subset(~member))
        self.model_ = train_attack_model(
            model,
            m_t,
            n_t,
            self.epochs,
            self.lr,
            torch.Generator().manual_seed(self.seed),
            batch_size=128,
        )
        return self

    @staticmethod
    def _logistic():
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))

    def score(self, inputs: AttackInputs) -> np.ndarray:
        s = inputs.target
        if self.per_class:
            if self.global_model_ is None:
                raise ValueError("attack 'shadow' must be fitted before scoring")
            x = _tabular(s)
            out = self.global_model_.decision_function(x)  # type: ignore[attr-defined]
            for c, clf in self.class_models_.items():
                sel = s.labels == c
                if sel.any():
                    out[sel] = clf.decision_function(x[sel])  # type: ignore[attr-defined]
            return np.asarray(out, np.float64)
        if self.model_ is None:
            raise ValueError("attack 'shadow' must be fitted before scoring")
        with torch.no_grad():
            return self.model_(*blackbox_tensors(s)).double().numpy()
