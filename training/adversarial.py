"""Adversarial regularization (Nasr, Shokri, Houmansadr, CCS'18): min-max training against an attacker.

After a warm-up the classifier's training alternates with attacker steps:
- attacker step: the attacker h (black-box: softmax + label; white-box: adds the
  per-example loss and the last-layer gradient) takes one Adam step to tell a
  batch of members (the training batch) from reference non-members;
- classifier step: the classifier minimizes CE + λ·G with G = mean over the
  member batch of log h(member), the attacker's log-likelihood of calling
  members members. G → −∞ as the attacker is fooled, so the classifier is
  penalised exactly when the attacker is right (SPEC; issue 10 acceptance 6).

Whose members: the adversary plays on the classifier's own training batches, so it
sees every member of `train`, the audit and search members included. That is what a
defence must do — protect every member, not only those an attacker happens to know —
and it is no leak into the audit: the audit's attacks are fitted only on
`known_members` (`training.data`), and whether the defence protected the audit members
is exactly what the audit then measures. Its reference non-members are half of `val`,
the defender's held-out data.

Per-example last-layer gradients of CE w.r.t. `head.weight` are computed
analytically, (softmax − onehot) ⊗ features, so they stay in the autograd graph
for the white-box penalty.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from attacks.nn_models import BlackBoxAttackModel, WhiteBoxAttackModel
from training.loops import model_device
from training.models import feature_model

ADVERSARY_KINDS = ("bmia", "wmia", "both")


def last_layer_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """(logits, probs, onehot, per-example loss, per-example head-weight gradients (n, C, d))."""
    net = feature_model(model)
    feats = net.features(x)  # (n, d)
    logits = net.head(feats)  # (n, C)
    probs = logits.softmax(1)
    onehot = F.one_hot(y, logits.shape[1]).float()
    loss = F.cross_entropy(logits, y, reduction="none")
    grads = (probs - onehot).unsqueeze(2) * feats.unsqueeze(1)  # (n, C, d)
    return logits, probs, onehot, loss, grads


class Adversary:
    """The in-training attacker(s) and the classifier's penalty."""

    def __init__(
        self,
        kind: str,
        n_classes: int,
        feature_dim: int,
        ref_x: torch.Tensor,
        ref_y: torch.Tensor,
        lam: float = 0.1,
        lr: float = 1e-3,
        width_scale: float = 0.25,
        seed: int = 0,
    ):
        if kind not in ADVERSARY_KINDS:
            raise ValueError(f"unknown adversary {kind!r}; valid: {list(ADVERSARY_KINDS)}")
        if lam < 0:
            raise ValueError(f"adversarial lambda must be >= 0, got {lam}")
        self.kind, self.lam = kind, lam
        self.ref_x, self.ref_y = ref_x, ref_y
        self.generator = torch.Generator().manual_seed(seed)

        def w(ws):
            return [max(4, round(v * width_scale)) for v in ws]

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.attackers: list[nn.Module] = []
            if kind in ("bmia", "both"):
                self.attackers.append(BlackBoxAttackModel(n_classes, w((1024, 512, 64)), w((512, 64)), w((256, 64))))
            if kind in ("wmia", "both"):
                self.attackers.append(
                    WhiteBoxAttackModel(n_classes, feature_dim, 8, w((1024, 512, 64)), w((512, 64)), w((256, 64)))
                )
        self.optimizers = [torch.optim.Adam(a.parameters(), lr=lr) for a in self.attackers]
        self.is_warm = False

    def warm_up(self, model: nn.Module, members_x: torch.Tensor, members_y: torch.Tensor, steps: int,
                batch_size: int = 64) -> None:
        """Train the attacker(s) alone for `steps` steps before the min-max game starts.

        An untrained attacker is nearly constant in the model's outputs, so its
        penalty has almost no gradient (measured: 5e-6 vs 0.1 for the CE gradient
        at λ = 0.1); Nasr et al. likewise train the attack model before the
        classifier starts to play against it.
        """
        for _ in range(steps):
            idx = torch.randint(0, len(members_y), (batch_size,), generator=self.generator)
            self.attacker_step(model, members_x[idx], members_y[idx])
        self.is_warm = True

    def _follow(self, model: nn.Module) -> torch.device:
        """Keep the attackers and the reference batch on the classifier's device."""
        device = model_device(model)
        if self.ref_x.device != device:
            self.ref_x, self.ref_y = self.ref_x.to(device), self.ref_y.to(device)
            for attacker in self.attackers:
                attacker.to(device)  # Adam's state is created on first step, on the same device
        return device

    def _call(self, attacker: nn.Module, inputs) -> torch.Tensor:
        _, probs, onehot, loss, grads = inputs
        if isinstance(attacker, WhiteBoxAttackModel):
            return attacker(probs, onehot, loss, grads)
        return attacker(probs, onehot)

    def attacker_step(self, model: nn.Module, xm: torch.Tensor, ym: torch.Tensor) -> float:
        """One Adam step of every attacker on members (xm, ym) vs a reference non-member batch."""
        idx = torch.randint(0, len(self.ref_y), (len(ym),), generator=self.generator)
        device = self._follow(model)
        xm, ym, idx = xm.to(device), ym.to(device), idx.to(device)
        was = model.training
        model.eval()
        with torch.no_grad():
            mem = [t.detach() for t in last_layer_inputs(model, xm, ym)]
            non = [t.detach() for t in last_layer_inputs(model, self.ref_x[idx], self.ref_y[idx])]
        model.train(was)
        total = 0.0
        target = torch.cat([torch.ones(len(ym)), torch.zeros(len(idx))]).to(device)
        for attacker, opt in zip(self.attackers, self.optimizers):
            attacker.train()
            logit = torch.cat([self._call(attacker, mem), self._call(attacker, non)])
            loss = F.binary_cross_entropy_with_logits(logit, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.item())
        return total

    def penalty(self, inputs) -> torch.Tensor:
        """λ · mean log h(member): the attackers' log-likelihood of calling members members."""
        gain = torch.zeros((), device=inputs[0].device)
        for attacker in self.attackers:
            attacker.eval()
            with _frozen(attacker):
                gain = gain + F.logsigmoid(self._call(attacker, inputs)).mean()
        return self.lam * gain


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """Gradients flow through the attacker to the classifier, not into the attacker's weights."""
    flags = [p.requires_grad for p in module.parameters()]
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)
