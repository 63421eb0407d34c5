"""Neural-network attackers: black-box after Nasr, Shokri, Houmansadr, "Machine Learning with
Membership Privacy using Adversarial Regularization" (CCS'18), white-box after Nasr, Shokri,
Houmansadr, "Comprehensive Privacy Analysis of Deep Learning" (S&P'19).

The attack models (`attacks.nn_models`): black-box after Nasr CCS'18 over label-aligned
features, white-box after Nasr S&P'19 adding the loss and last-layer gradient branches.

Training (`train_attack_model`): Adam (Nasr's lr 1e-3; fused kernel), class-balanced binary cross-entropy,
mini-batches shuffled by an explicit generator. Nasr's official code trains 100 epochs; our
default is shorter for CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.inputs import AttackInputs, MissingInputError, require
from attacks.nn_models import BlackBoxAttackModel, WhiteBoxAttackModel, prediction_features
from attacks.signals import Signals

__all__ = [
    "train_attack_model",
    "blackbox_tensors",
    "whitebox_tensors",
    "NNBlackBoxAttack",
    "NNWhiteBoxAttack",
]

def blackbox_tensors(s: Signals) -> tuple[torch.Tensor, torch.Tensor]:
    """(probs, one-hot) float32 tensors of a Signals object."""
    probs = torch.from_numpy(s.probs.astype(np.float32))
    onehot = F.one_hot(torch.from_numpy(s.labels).long(), s.n_classes).float()
    return probs, onehot


def whitebox_tensors(s: Signals) -> tuple[torch.Tensor, ...]:
    """(probs, one-hot, loss, grads) float32 tensors; needs Signals with grads."""
    if s.grads is None:
        raise MissingInputError(
            "the white-box attack needs last-layer gradients: "
            "compute_signals(..., with_grads=True) for the target and its known members/non-members"
        )
    loss = torch.from_numpy(s.loss.astype(np.float32))
    return (*blackbox_tensors(s), loss, torch.from_numpy(s.grads))


def train_attack_model(
    model_nn: nn.Module,
    member_inputs: Sequence[torch.Tensor],
    nonmember_inputs: Sequence[torch.Tensor],
    epochs: int = 30,
    lr: float = 1e-3,
    generator: Optional[torch.Generator] = None,
    batch_size: int = 64,
    weight_decay: float = 0.0,
) -> nn.Module:
    """Train `model_nn(*inputs) -> member logit` on members (1) vs non-members (0).

    member_inputs / nonmember_inputs: tuples of tensors, the model's positional arguments,
    first dimension = examples. Class-balanced BCE, Adam, shuffled by `generator`.
    Returns the model in eval mode.
    """
    if len(member_inputs) != len(nonmember_inputs):
        raise ValueError(
            f"member_inputs has {len(member_inputs)} tensors, nonmember_inputs {len(nonmember_inputs)}; "
            "both must be the model's positional inputs"
        )
    n1, n0 = len(member_inputs[0]), len(nonmember_inputs[0])
    if n1 == 0 or n0 == 0:
        raise ValueError(f"need members and non-members to train an attack, got {n1} and {n0}")
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(
            f"need epochs >= 0, lr > 0, batch_size >= 1; got {epochs}, {lr}, {batch_size}"
        )
    xs = [torch.cat([m, n]).detach() for m, n in zip(member_inputs, nonmember_inputs, strict=True)]
    for t in xs:
        if not torch.isfinite(t).all():
            raise ValueError("attack training inputs contain NaN/inf")
    target = torch.cat([torch.ones(n1), torch.zeros(n0)])
    weight = torch.cat(
        [torch.full((n1,), 0.5 * (n1 + n0) / n1), torch.full((n0,), 0.5 * (n1 + n0) / n0)]
    )
    fit_normalization = getattr(model_nn, "fit_normalization", None)
    if callable(fit_normalization):  # input statistics from members and non-members alike
        fit_normalization(*xs)
    fast = _BlackBoxSteps.of(model_nn, xs)
    params = [fast.flat] if fast is not None else list(model_nn.parameters())
    opt = _adam(params, lr=lr, weight_decay=weight_decay)
    model_nn.train()
    n = n1 + n0
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if fast is not None:
                fast.set_grads(idx, target[idx], weight[idx])
            else:
                logit = model_nn(*[t[idx] for t in xs])
                loss = F.binary_cross_entropy_with_logits(logit, target[idx], weight=weight[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
    model_nn.eval()
    return model_nn


class _BlackBoxSteps:
    """Forward and backward of a `BlackBoxAttackModel` (ReLU MLPs, no dropout) without autograd.

    The attack model is small (batch 128: ~0.5 ms of matrix products a step), so autograd's
    bookkeeping and the per-batch feature computation cost about as much again. Here the
    normalized prediction features are computed once per training call (they depend on the
    inputs and the fixed normalization only), and each step runs the same products as autograd
    (addmm forward; grad W = dz^T a, grad b = sum dz, grad a = dz W), writing the gradients of
    the class-weighted mean BCE into `.grad`. The parameters and their gradients become views of
    one flat tensor (`flat`), so the optimizer steps one tensor: Adam's per-tensor bookkeeping
    cost ~5x its fused kernel for the ~16 small tensors. Equal to the autograd step up to float
    rounding (a unit test compares them).
    """

    def __init__(self, model: BlackBoxAttackModel, feats: torch.Tensor, onehot: torch.Tensor):
        self.feats, self.onehot = feats, onehot
        self.pred = [m for m in model.prediction if isinstance(m, nn.Linear)]
        self.label = (
            [m for m in model.label if isinstance(m, nn.Linear)] if model.use_label_branch else []
        )
        self.merged = [m for m in model.merged if isinstance(m, nn.Linear)]
        params = list(model.parameters())
        self.flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.flat.grad = torch.zeros_like(self.flat)
        offset = 0
        for p in params:
            k = p.numel()
            p.data = self.flat.data[offset : offset + k].view_as(p)
            p.grad = self.flat.grad[offset : offset + k].view_as(p)
            offset += k

    @classmethod
    def of(cls, model: nn.Module, xs: Sequence[torch.Tensor]) -> Optional[_BlackBoxSteps]:
        """The fast steps for exactly a `BlackBoxAttackModel` of Linear+ReLU branches, else None."""
        if type(model) is not BlackBoxAttackModel or len(xs) != 2:
            return None
        branches = [model.prediction, model.merged] + (
            [model.label] if model.use_label_branch else []
        )
        if any(type(m) not in (nn.Linear, nn.ReLU) for b in branches for m in b):
            return None
        probs, onehot = xs
        with torch.no_grad():
            model.branches(probs[:1], onehot[:1])  # raises on bad shapes, as the forward would
            feats = (prediction_features(probs, onehot) - model.feat_mean) / model.feat_std
        return cls(model, feats, onehot)

    @staticmethod
    def _forward(layers: list[nn.Linear], h: torch.Tensor, last_relu: bool) -> list[torch.Tensor]:
        """Inputs of every layer, then the output: [h, a1, ..., out]."""
        acts = [h]
        for j, lin in enumerate(layers):
            z = torch.addmm(lin.bias, acts[-1], lin.weight.t())
            acts.append(torch.relu(z) if last_relu or j < len(layers) - 1 else z)
        return acts

    @staticmethod
    def _backward(
        layers: list[nn.Linear], acts: list[torch.Tensor], dz: torch.Tensor, need_input: bool
    ) -> Optional[torch.Tensor]:
        """Set the layers' grads from dL/d(last pre-activation); returns dL/d(input) if needed."""
        for j in range(len(layers) - 1, -1, -1):
            lin = layers[j]
            assert lin.weight.grad is not None and lin.bias.grad is not None  # views of flat.grad
            torch.mm(dz.t(), acts[j], out=lin.weight.grad)
            torch.sum(dz, 0, out=lin.bias.grad)
            if j == 0 and not need_input:
                return None
            da = dz.mm(lin.weight)
            if j == 0:
                return da
            dz = torch.ops.aten.threshold_backward(da, acts[j], 0.0)
        return None

    @torch.no_grad()
    def set_grads(self, idx: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> None:
        pa = self._forward(self.pred, self.feats[idx], True)
        parts = [pa[-1]]
        la: list[torch.Tensor] = []
        if self.label:
            la = self._forward(self.label, self.onehot[idx], True)
            parts.append(la[-1])
        ma = self._forward(self.merged, torch.cat(parts, 1), False)
        logit = ma[-1]  # (b, 1)
        # d/dlogit of mean(w * BCE-with-logits) = w * (sigmoid - target) / b
        dz = ((torch.sigmoid(logit.squeeze(1)) - target) * weight / len(idx)).unsqueeze(1)
        dm = self._backward(self.merged, ma, dz, True)
        assert dm is not None
        w_pred = pa[-1].shape[1]
        self._backward(
            self.pred, pa, torch.ops.aten.threshold_backward(dm[:, :w_pred], pa[-1], 0.0), False
        )
        if self.label:
            self._backward(
                self.label,
                la,
                torch.ops.aten.threshold_backward(dm[:, w_pred:], la[-1], 0.0),
                False,
            )


def _adam(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam with the fused kernel where the parameters' device has one.

    The attack models have ~25 small tensors; the default per-tensor Adam loop on CPU cost
    more than the forward pass (0.35 vs 0.08 ms a step). Same update rule; results differ
    from the unfused loop only by float rounding.
    """
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):  # device or dtype without a fused kernel
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


@contextlib.contextmanager
def _seeded(seed: int):
    """Weight init from `seed` without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class NNBlackBoxAttack:
    """Nasr CCS'18 black-box attack trained on the target's known members vs non-members."""

    name = "nn_blackbox"
    requires: tuple[str, ...] = ("known_members", "known_nonmembers")
    wants: tuple[str, ...] = ()
    needs_grads = False

    def __init__(
        self,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 64,
        weight_decay: float = 1e-4,
        use_label_branch: bool = True,
        width_scale: float = 0.25,
        seed: int = 0,
    ):
        if epochs < 1 or lr <= 0 or batch_size < 1 or width_scale <= 0:
            raise ValueError(
                f"need epochs >= 1, lr > 0, batch_size >= 1, width_scale > 0; "
                f"got {epochs}, {lr}, {batch_size}, {width_scale}"
            )
        self.epochs, self.lr, self.batch_size = epochs, lr, batch_size
        self.weight_decay, self.use_label_branch = weight_decay, use_label_branch
        self.width_scale, self.seed = width_scale, seed
        self.model_: Optional[nn.Module] = None

    def _w(self, widths: Sequence[int]) -> list[int]:
        return [max(4, round(w * self.width_scale)) for w in widths]

    def build(self, s: Signals) -> nn.Module:
        return BlackBoxAttackModel(
            s.n_classes,
            self._w((1024, 512, 64)),
            self._w((512, 64)),
            self._w((256, 64)),
            use_label_branch=self.use_label_branch,
        )

    def tensors(self, s: Signals) -> tuple[torch.Tensor, ...]:
        return blackbox_tensors(s)

    def fit(self, inputs: AttackInputs) -> NNBlackBoxAttack:
        require(self.name, inputs, self.requires)
        assert inputs.known_members is not None and inputs.known_nonmembers is not None
        with _seeded(self.seed):
            model = self.build(inputs.known_members)
        self.model_ = train_attack_model(
            model,
            self.tensors(inputs.known_members),
            self.tensors(inputs.known_nonmembers),
            epochs=self.epochs,
            lr=self.lr,
            generator=torch.Generator().manual_seed(self.seed),
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
        )
        return self

    @torch.no_grad()
    def score_signals(self, s: Signals) -> np.ndarray:
        if self.model_ is None:
            raise ValueError(f"attack {self.name!r} must be fitted before scoring")
        self.model_.eval()
        return self.model_(*self.tensors(s)).double().numpy()

    def score(self, inputs: AttackInputs) -> np.ndarray:
        return self.score_signals(inputs.target)


class NNWhiteBoxAttack(NNBlackBoxAttack):
    """Nasr S&P'19 white-box attack: adds the loss and last-layer gradient branches."""

    name = "nn_whitebox"
    needs_grads = True  # target and known signals with last-layer gradients

    def __init__(self, n_filters: int = 32, **kwargs):
        super().__init__(**kwargs)
        if n_filters < 1:
            raise ValueError(f"n_filters must be >= 1, got {n_filters}")
        self.n_filters = n_filters

    def build(self, s: Signals) -> nn.Module:
        if s.grads is None:
            whitebox_tensors(s)  # raises the explanation
        assert s.grads is not None
        return WhiteBoxAttackModel(
            s.n_classes,
            s.grads.shape[2],
            self.n_filters,
            self._w((1024, 512, 64)),
            self._w((512, 64)),
            self._w((256, 64)),
            use_label_branch=self.use_label_branch,
        )

    def tensors(self, s: Signals) -> tuple[torch.Tensor, ...]:
        return whitebox_tensors(s)

    def fit(self, inputs: AttackInputs) -> NNWhiteBoxAttack:
        require(self.name, inputs, self.requires)
        for which in ("target", "known_members", "known_nonmembers"):
            if getattr(inputs, which).grads is None:
                raise MissingInputError(
                    f"attack 'nn_whitebox' needs AttackInputs.{which} with last-layer gradients "
                    "(compute_signals(..., with_grads=True))"
                )
        super().fit(inputs)
        return self
