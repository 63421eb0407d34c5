"""Prune and grow criteria as per-weight scores (higher = keep / grow first), with registries.

One job: turn a layer's weight, mask, gradient, momentum and history into a score tensor. Following
google-research/rigl, every criterion is a score and selection is a separate top-k step
(``sparse.update``). Criteria and their papers:

prune (drop the lowest scores among active weights)
  ``magnitude``  |w| (Han et al. 2015; SET/RigL/ITOP default).
  ``set``        SET (Mocanu et al., Nat. Commun. 2018) removes the smallest positive and the largest
                 negative weights, i.e. the ones closest to zero *on each side*, the same fraction
                 of each. We score a positive weight by its rank among active positives (ascending,
                 divided by their count) and a negative weight by its rank of |w| among active
                 negatives; active zeros (e.g. just regrown) score 0 and go first. Dropping the k
                 lowest then takes (up to rounding) the same fraction from both signs.
  ``taylor``     |w * g|, first-order Taylor estimate of the loss change (Molchanov et al. 2017/2019).
grow (grow the highest scores among inactive weights)
  ``random``     uniform noise from the generator (SET, ITOP default).
  ``gradient``   |g| of the dense gradient (RigL, Evci et al. 2020): largest first.
  ``momentum``   |momentum| of the dense gradient (SNFS, Dettmers & Zettlemoyer 2019).
  ``unfired``    ITOP (Liu et al. 2021): never-active weights first, random among them, then the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch


@dataclass
class LayerInputs:
    """What a criterion may read for one layer. ``mask`` is the mask before the update."""

    name: str
    weight: torch.Tensor
    mask: torch.Tensor
    generator: torch.Generator
    grad: torch.Tensor | None = None
    momentum: torch.Tensor | None = None
    fired: torch.Tensor | None = None


def _need(x: torch.Tensor | None, criterion: str, what: str, layer: str) -> torch.Tensor:
    if x is None:
        raise ValueError(
            f"criterion {criterion!r} needs {what} for layer {layer!r}, none was given"
        )
    return x


def _magnitude(li: LayerInputs) -> torch.Tensor:
    return li.weight.detach().abs().float()


def _set(li: LayerInputs) -> torch.Tensor:
    w = li.weight.detach().float()
    score = torch.zeros_like(w)
    for side, vals in ((li.mask & (w > 0), w), (li.mask & (w < 0), -w)):
        v = vals[side]
        if v.numel() == 0:
            continue
        order = torch.sort(v, stable=True).indices
        ranks = torch.empty_like(v)
        ranks[order] = torch.arange(1, v.numel() + 1, device=v.device, dtype=v.dtype) / v.numel()
        score[side] = ranks
    return score


def _taylor(li: LayerInputs) -> torch.Tensor:
    g = _need(li.grad, "taylor", "dense gradients (grads={name: grad})", li.name)
    return (li.weight.detach().float() * g.detach().float()).abs()


def _random(li: LayerInputs) -> torch.Tensor:
    return torch.rand(li.weight.shape, generator=li.generator).to(li.weight.device)


def _gradient(li: LayerInputs) -> torch.Tensor:
    g = _need(
        li.grad, "gradient", "dense gradients (grads={name: grad}, taken before masking)", li.name
    )
    return g.detach().abs().float()


def _momentum(li: LayerInputs) -> torch.Tensor:
    m = _need(
        li.momentum,
        "momentum",
        "a momentum tensor (optimizer with momentum_buffer/exp_avg state, or momenta={name: tensor})",
        li.name,
    )
    return m.detach().abs().float()


def _unfired(li: LayerInputs) -> torch.Tensor:
    fired = _need(
        li.fired, "unfired", "the 'ever active' masks (fired={name: bool tensor})", li.name
    )
    noise = torch.rand(li.weight.shape, generator=li.generator).to(li.weight.device)
    return (~fired.bool()).float() + 0.5 * noise  # unfired in [1, 1.5), fired in [0, 0.5)


PRUNE_SCORES: dict[str, Callable[[LayerInputs], torch.Tensor]] = {
    "magnitude": _magnitude,
    "set": _set,
    "taylor": _taylor,
}
GROW_SCORES: dict[str, Callable[[LayerInputs], torch.Tensor]] = {
    "random": _random,
    "gradient": _gradient,
    "momentum": _momentum,
    "unfired": _unfired,
}
PRUNE_CRITERIA = tuple(PRUNE_SCORES)
GROW_CRITERIA = tuple(GROW_SCORES)

# what each criterion reads besides the weight and mask (checked before any mask changes)
PRUNE_NEEDS: dict[str, str] = {"taylor": "grads"}
GROW_NEEDS: dict[str, str] = {"gradient": "grads", "momentum": "momentum", "unfired": "fired"}


def criterion_needs(prune: str | None, grow: str | None) -> set[str]:
    """What a prune/grow pair reads besides weights and masks: a subset of {"grads", "momentum", "fired"}."""
    out = set()
    if prune is not None and prune in PRUNE_NEEDS:
        out.add(PRUNE_NEEDS[prune])
    if grow is not None and grow in GROW_NEEDS:
        out.add(GROW_NEEDS[grow])
    return out


def check_criteria(prune: str, grow: str) -> None:
    """Raise on an unknown prune or grow criterion name, listing the valid ones."""
    if prune not in PRUNE_SCORES:
        raise ValueError(f"unknown prune criterion {prune!r}; valid: {list(PRUNE_CRITERIA)}")
    if grow not in GROW_SCORES:
        raise ValueError(f"unknown grow criterion {grow!r}; valid: {list(GROW_CRITERIA)}")


def prune_scores(criterion: str, li: LayerInputs) -> torch.Tensor:
    """Keep-scores of ``criterion`` for one layer (lowest active ones are dropped)."""
    if criterion not in PRUNE_SCORES:
        raise ValueError(f"unknown prune criterion {criterion!r}; valid: {list(PRUNE_CRITERIA)}")
    return PRUNE_SCORES[criterion](li)


def grow_scores(criterion: str, li: LayerInputs) -> torch.Tensor:
    """Grow-scores of ``criterion`` for one layer (highest inactive ones are grown)."""
    if criterion not in GROW_SCORES:
        raise ValueError(f"unknown grow criterion {criterion!r}; valid: {list(GROW_CRITERIA)}")
    return GROW_SCORES[criterion](li)


class GradientMomentum:
    """Exponential moving average of *dense* gradients, for ``grow="momentum"`` (SNFS).

    When gradients are masked before the optimizer step, the optimizer's own momentum is zero at
    every inactive weight and the momentum criterion degenerates to random growth; feed this the
    dense gradients each step and pass ``momenta=ema.momenta`` to ``prune_and_grow``.
    """

    def __init__(self, beta: float = 0.9):
        if not (0.0 <= beta < 1.0):
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.momenta: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, grads: Mapping[str, torch.Tensor]) -> None:
        for name, g in grads.items():
            m = self.momenta.get(name)
            if m is None:
                self.momenta[name] = g.detach().clone()
            else:
                m.mul_(self.beta).add_(g.detach())
