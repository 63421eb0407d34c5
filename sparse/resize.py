"""Resize a mask to another global density with exact counts (sparsity schedules, gradual
magnitude pruning of Zhu & Gupta 2017), with the scoring, selection and commit of
`sparse.update`'s prune-and-grow: layers above their new target drop, layers below grow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sparse.init import check_density, default_generator, layer_target_counts
from sparse.masks import MaskSet
from sparse.scores import check_criteria, criterion_needs, grow_scores, prune_scores
from sparse.update import _commit, _inputs, _select


def resize(
    model: nn.Module,
    masks: MaskSet,
    density: float,
    prune: str = "magnitude",
    grow: str = "random",
    distribution: str = "erk",
    generator: torch.Generator | None = None,
    grads: Mapping[str, torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    fired: Mapping[str, torch.Tensor] | None = None,
    momenta: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Move the masks to global ``density`` exactly (``round(density * n_total)`` active weights).

    Per-layer targets come from ``distribution`` ("erk" | "uniform") at the new density; layers above
    their target drop their lowest ``prune`` scores, layers below grow their highest ``grow`` scores
    (zero-initialised, optimizer state zeroed). Returns the same stats shape as ``prune_and_grow``.
    """
    check_density(density)
    check_criteria(prune, grow)
    g = default_generator(generator)
    shapes = masks.shapes()
    targets = layer_target_counts(shapes, density, distribution)
    current = masks.layer_n_active()
    any_drop = any(current[k] > targets[k] for k in shapes)
    any_grow = any(current[k] < targets[k] for k in shapes)
    needs = criterion_needs(prune if any_drop else None, grow if any_grow else None)
    inputs = _inputs(
        masks,
        model,
        needs,
        g,
        grads,
        optimizer,
        fired,
        momenta,
        f"resize prune={prune!r}/grow={grow!r}",
    )
    params = dict(model.named_parameters())
    per_layer: dict[str, dict[str, int]] = {}
    for name, li in inputs.items():
        m = li.mask
        n_active, target = current[name], targets[name]
        drop_idx = grow_idx = None
        if n_active > target:
            drop_idx = _select(
                prune_scores(prune, li), m, n_active - target, g, lowest=True, layer=name
            )
        elif n_active < target:
            if li.fired is not None:
                li.fired = li.fired | m
            grow_idx = _select(
                grow_scores(grow, li), ~m, target - n_active, g, lowest=False, layer=name
            )
        _commit(masks, name, params[name], drop_idx, grow_idx, optimizer, fired)
        per_layer[name] = {
            "n_active": n_active,
            "n_dropped": max(n_active - target, 0),
            "n_grown": max(target - n_active, 0),
        }
    masks.apply(model)
    return {
        "n_dropped": sum(v["n_dropped"] for v in per_layer.values()),
        "n_grown": sum(v["n_grown"] for v in per_layer.values()),
        "per_layer": per_layer,
    }
