"""One step of sparse training: the classifier's loss and the masked optimizer step.

The loss is cross-entropy on the members' hard labels, or RelaxLoss in its place (Chen et
al. ICLR 2022, `training.compress.relaxloss`), optionally with distillation from the teacher
(Hinton et al. 2015) and the adversarial penalty of Nasr et al. (CCS'18,
`training.adversarial`). Every method of the sparse loop trains through this step, so each
defence here applies to all of them. `Defences` holds one loss per candidate strategy
(`compress.strategies` may differ in defence strength) and which of them trains now. The
step masks gradients, weights and optimizer state, so inactive weights stay exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.adversarial import Adversary, last_layer_inputs
from training.compress.relaxloss import relaxed_loss
from training.loops import NonFiniteLossError, TrainState, batch_indices, model_device
from training.recipes import StrategyConfig


@dataclass
class Losses:
    """The classifier's training loss: CE (or RelaxLoss), optional distillation and adversarial penalty."""

    teacher: nn.Module | None = None
    temperature: float = 4.0
    distill_weight: float = 0.0
    adversary: Adversary | None = None
    adversary_active: bool = False
    attacker_steps: int = 1
    warmup_steps: int = 0
    members: tuple[torch.Tensor, torch.Tensor] | None = None
    relax_alpha: float = 0.0  # RelaxLoss's target loss; 0: plain cross-entropy
    relax_upper: float = 1.0
    epoch: int = 0  # the training epoch of the step (RelaxLoss alternates by its parity)

    def hard_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss on hard labels: cross-entropy, or RelaxLoss when `relax_alpha` > 0."""
        if self.relax_alpha > 0:
            return relaxed_loss(logits, y, self.relax_alpha, self.relax_upper, self.epoch)
        return F.cross_entropy(logits, y)

    @property
    def is_plain(self) -> bool:
        """Plain cross-entropy (what the grouped candidate probe computes)."""
        return (self.adversary is None or not self.adversary_active) and self.teacher is None and self.relax_alpha <= 0

    def with_defence(self, s: StrategyConfig) -> Losses:
        """This loss with a strategy's defence overrides (itself when the strategy sets none)."""
        changes: dict[str, Any] = {}  # field name -> value; `replace` checks the names
        if s.distill_weight is not None:
            changes["distill_weight"] = s.distill_weight
        if s.distill_temperature is not None:
            changes["temperature"] = s.distill_temperature
        if s.relaxloss_alpha is not None:
            changes["relax_alpha"] = s.relaxloss_alpha
        return replace(self, **changes) if changes else self

    def __call__(self, state: TrainState, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = state.model
        if self.adversary is not None and self.adversary_active:
            if not self.adversary.is_warm and self.members is not None:
                self.adversary.warm_up(model, *self.members, steps=self.warmup_steps)
            for _ in range(self.attacker_steps):
                self.adversary.attacker_step(model, x, y)
            model.train()
            inputs = last_layer_inputs(model, x, y)
            logits = inputs[0]
            loss = self.hard_loss(logits, y) + self.adversary.penalty(inputs)
        else:
            logits = model(x)
            loss = self.hard_loss(logits, y)
        if self.teacher is not None and self.distill_weight > 0:
            with torch.no_grad():
                t_logits = self.teacher(x)
            T = self.temperature
            kd = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
            loss = (1 - self.distill_weight) * loss + self.distill_weight * kd
        return loss


@dataclass
class Defences:
    """The loss of each candidate strategy (`arms[i]` for `compress.strategies[i]`) and the one
    the model trains with between mask updates: strategy 0's until SafeCompress's selection
    picks a candidate, then the chosen candidate's (`choose`)."""

    arms: list[Losses]
    current: int = 0
    uniform: bool = field(init=False)

    def __post_init__(self) -> None:
        self.uniform = all(a is self.arms[0] for a in self.arms)

    @classmethod
    def of(cls, base: Losses, strategies: list[StrategyConfig]) -> Defences:
        return cls([base.with_defence(s) for s in strategies])

    @property
    def active(self) -> Losses:
        return self.arms[self.current]

    def arm(self, candidate: int) -> Losses:
        """The loss candidate `candidate` probes with (its strategy's, `strategies[i % len]`)."""
        return self.arms[candidate % len(self.arms)]

    def choose(self, candidate: int) -> None:
        self.current = candidate % len(self.arms)

    def at(self, epoch: int, adversary_active: bool) -> None:
        """Tell every loss the step's epoch and whether the adversary plays yet."""
        for a in self.arms:
            a.epoch, a.adversary_active = epoch, adversary_active


def endless_batches(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches, epoch after epoch, from one generator."""
    while True:
        yield from batch_indices(n, batch_size, g)


def _grad(params: dict[str, nn.Parameter], name: str) -> torch.Tensor:
    """`name`'s gradient after backward; a masked layer the loss did not reach is an error, not a crash."""
    g = params[name].grad
    if g is None:
        raise RuntimeError(f"masked parameter {name!r} got no gradient: the loss does not depend on it "
                           "(is the layer used in forward?)")
    return g


def masked_step(
    state: TrainState, x: torch.Tensor, y: torch.Tensor, losses: Losses, keep_grads: bool = False
) -> tuple[float, dict[str, torch.Tensor] | None]:
    """One optimizer step; masks applied to gradients, weights and optimizer state."""
    model, opt, masks = state.model, state.optimizer, state.masks
    model.train()
    device = model_device(model)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    opt.zero_grad(set_to_none=True)
    loss = losses(state, x, y)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"training loss is {loss.item()}; lower train.lr")
    loss.backward()
    grads = None
    if masks is not None:
        if keep_grads:  # dense gradients, before masking: gradient-based growth reads them
            params = dict(model.named_parameters())
            grads = {n: _grad(params, n).detach().clone() for n in masks.masks}
        masks.apply_to_grads(model)
    opt.step()
    if masks is not None:
        masks.apply(model)
        masks.apply_to_optimizer(opt, model)
    return float(loss.item()), grads
