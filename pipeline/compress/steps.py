"""One step of sparse training: the classifier's loss and the masked optimizer step.

The loss is cross-entropy, optionally with distillation from the teacher (Hinton et al.
2015) and the adversarial penalty of Nasr et al. (CCS'18, `pipeline.adversarial`). The
step masks gradients, weights and optimizer state, so inactive weights stay exactly zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.adversarial import Adversary, last_layer_inputs
from pipeline.training import NonFiniteLossError, TrainState, batch_indices, model_device


@dataclass
class Losses:
    """The classifier's training loss: CE, optional distillation and adversarial penalty."""

    teacher: nn.Module | None = None
    temperature: float = 4.0
    distill_weight: float = 0.0
    adversary: Adversary | None = None
    adversary_active: bool = False
    attacker_steps: int = 1
    warmup_steps: int = 0
    members: tuple[torch.Tensor, torch.Tensor] | None = None

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
            loss = F.cross_entropy(logits, y) + self.adversary.penalty(inputs)
        else:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        if self.teacher is not None and self.distill_weight > 0:
            with torch.no_grad():
                t_logits = self.teacher(x)
            T = self.temperature
            kd = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t_logits / T, 1), reduction="batchmean") * T * T
            loss = (1 - self.distill_weight) * loss + self.distill_weight * kd
        return loss



def endless_batches(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Shuffled index batches, epoch after epoch, from one generator."""
    while True:
        yield from batch_indices(n, batch_size, g)


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
            grads = {n: params[n].grad.detach().clone() for n in masks.masks}
        masks.apply_to_grads(model)
    opt.step()
    if masks is not None:
        masks.apply(model)
        masks.apply_to_optimizer(opt, model)
    return float(loss.item()), grads
