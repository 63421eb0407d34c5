"""SafeCompress's safety test: the simulated attacker(s) of one mask update and their risk.

The in-loop attacker follows Nasr et al. (CCS'18): it knows some members and some
non-members of the target and is trained against the current model. Variants
(Zhu et al., TSE 2024): `metric` (loss attack), `bmia` (black-box NN), `wmia`
(white-box NN, adds loss and last-layer gradient), `mmia` (several at once).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from attacks.inputs import AttackInputs
from attacks.metrics import roc_auc
from attacks.nn import NNBlackBoxAttack, NNWhiteBoxAttack, train_attack_model
from attacks.signals import Signals, compute_signals
from training.data import DataBundle
from training.recipes import CompressConfig
from training.seeds import derive_seed


class SafetyTest:
    """The simulated attacker(s) of one mask update and the risk they assign to a candidate.

    Known members and val non-members are each split in two: the attacker is
    fitted on the first parts against the current model, the risk is its AUC on
    the held-out parts against each candidate (equal numbers of members and
    non-members, so the AUC's standard error follows Hanley & McNeil).
    """

    def __init__(self, data: DataBundle, c: CompressConfig, seed: int):
        rng = np.random.default_rng(derive_seed(seed, "safety_slices"))
        known = rng.permutation(data.splits.known_members)
        val = rng.permutation(data.splits.val)
        n = min(len(known), len(val))
        n_hold = max(2, int(round(c.safety.holdout_fraction * n)))
        n_fit = max(2, n - n_hold)

        def part(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            t = torch.from_numpy(np.sort(idx))
            return data.dataset.x[t], data.dataset.y[t]

        self.fit_m, self.fit_n = part(known[n_hold : n_hold + n_fit]), part(val[n_hold : n_hold + n_fit])
        self.hold_m, self.hold_n = part(known[:n_hold]), part(val[:n_hold])
        self.n_hold = n_hold
        self.c = c
        self.seed = seed
        members = {"mmia": c.safety.mmia_members}.get(c.variant, [c.variant])
        self.members = list(members)
        self.attackers: dict[str, Any] = {}

    @property
    def needs_grads(self) -> bool:
        return "wmia" in self.members

    def fit(self, model: nn.Module, update: int) -> None:
        """Train the NN attacker(s) against the current model (metric attacks need no fitting).

        The first update trains each attacker from scratch for `attacker_epochs`; later
        updates warm-start it and train `attacker_refresh_epochs` more against the
        current model (the model moves little between two mask updates).
        """
        for name in self.members:
            if name == "metric":
                continue
            wg = name == "wmia"
            m = compute_signals(model, *self.fit_m, with_grads=wg)
            n = compute_signals(model, *self.fit_n, with_grads=wg)
            if name in self.attackers and self.c.safety.attacker_refresh_epochs > 0:
                a = self.attackers[name]
                train_attack_model(
                    a.model_, a.tensors(m), a.tensors(n), epochs=self.c.safety.attacker_refresh_epochs,
                    lr=self.c.safety.attacker_lr, batch_size=a.batch_size, weight_decay=a.weight_decay,
                    generator=torch.Generator().manual_seed(derive_seed(self.seed, "attacker", name, update) % (2**31)),
                )
                continue
            cls = NNWhiteBoxAttack if name == "wmia" else NNBlackBoxAttack
            attack = cls(
                epochs=self.c.safety.attacker_epochs,
                lr=self.c.safety.attacker_lr,
                width_scale=self.c.safety.width_scale,
                batch_size=128,
                seed=derive_seed(self.seed, "attacker", name, update) % (2**31),
            )
            self.attackers[name] = attack.fit(AttackInputs(target=m, known_members=m, known_nonmembers=n))

    def risk(self, model: nn.Module) -> float:
        """The attackers' AUC on the held-out slice (max or mean over MMIA members)."""
        wg = self.needs_grads
        m = compute_signals(model, *self.hold_m, with_grads=wg)
        n = compute_signals(model, *self.hold_n, with_grads=wg)
        return float(self._risks([m], [n])[0])

    @property
    def holdout_x(self) -> torch.Tensor:
        """Held-out members then non-members, the inputs `risks_from_logits` expects logits of."""
        return torch.cat([self.hold_m[0], self.hold_n[0]])

    def risks_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        """`risk` of K models from their logits on `holdout_x`, (K, 2 n_hold, C) -> (K,).

        Needs no gradient signals (any variant but wmia/mmia with wmia).
        """
        if self.needs_grads:
            raise ValueError("the white-box attacker needs last-layer gradients; use risk(model)")
        n_m = len(self.hold_m[1])
        ym, yn = self.hold_m[1].numpy().astype(np.int64), self.hold_n[1].numpy().astype(np.int64)
        lg = logits.float().numpy()
        return self._risks([Signals(z[:n_m], ym) for z in lg], [Signals(z[n_m:], yn) for z in lg])

    def _risks(self, ms: list[Signals], ns: list[Signals]) -> np.ndarray:
        """AUC per model k of members `ms[k]` vs non-members `ns[k]` (NaN on non-finite scores).

        The NN attackers score all K models in one forward pass (rows are independent).
        """
        n_k = len(ms)
        labels = np.r_[np.ones(len(ms[0]), int), np.zeros(len(ns[0]), int)]
        aucs = np.full((len(self.members), n_k), np.nan)
        for j, name in enumerate(self.members):
            if name == "metric":
                scores = [np.r_[-m.loss, -n.loss] for m, n in zip(ms, ns)]
            else:
                parts = [s for m, n in zip(ms, ns) for s in (m, n)]
                every = self.attackers[name].score_signals(concat_signals(parts))
                scores = np.split(every, np.cumsum([len(m) + len(n) for m, n in zip(ms, ns)])[:-1])
            for k, sc in enumerate(scores):
                if np.isfinite(sc).all():
                    aucs[j, k] = roc_auc(sc, labels)
        bad = np.isnan(aucs).any(0)
        out = aucs.max(0) if self.c.safety.mmia_combine == "max" else aucs.mean(0)
        return np.where(bad, np.nan, out)


def concat_signals(parts: list[Signals]) -> Signals:
    grads = [p.grads for p in parts]
    return Signals(
        logits=np.concatenate([p.logits for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        grads=None if any(g is None for g in grads) else np.concatenate([g for g in grads if g is not None]),
    )
