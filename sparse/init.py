"""Sparse initialisation at an exact global density: ERK, uniform, random and magnitude masks.

One job: decide how many weights each layer keeps and which ones. Follows Evci et al.,
"Rigging the Lottery" (RigL, ICML 2020) for Erdős–Rényi-Kernel densities (with its dense-layer
correction) and uniform densities; magnitude masks follow Han et al. 2015 / Zhu & Gupta 2017
(keep the largest |w|). Per-layer densities become integer counts by largest-remainder rounding,
so the global number of active weights is exactly ``round(density * n_total)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from sparse.masks import MaskSet

DISTRIBUTIONS = ("erk", "uniform")
MAGNITUDE_SCOPES = ("global", "layer")


def check_density(density: float, what: str = "density") -> float:
    """Return ``density`` as float; raise unless 0 < density <= 1."""
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < d <= 1.0) or math.isnan(d):
        raise ValueError(f"{what} must be in (0, 1] (fraction of weights kept), got {density!r}")
    return d


def target_count(density: float, n_total: int) -> int:
    """The exact number of active weights for ``density``: ``round(density * n_total)`` (>= 1)."""
    d = check_density(density)
    k = int(round(d * n_total))
    if k < 1:
        raise ValueError(
            f"density {d} keeps 0 of {n_total} weights; the smallest allowed density here is {0.5 / n_total:.3g}"
        )
    return k


def _check_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    if not shapes:
        raise ValueError("shapes is empty: need at least one layer")
    out = {}
    for name, s in shapes.items():
        s = tuple(int(x) for x in s)
        if len(s) == 0 or any(x < 1 for x in s):
            raise ValueError(
                f"layer {name!r} has shape {s}; shapes must be non-empty with positive sizes"
            )
        out[name] = s
    return out


def erk_densities(
    shapes: Mapping[str, tuple[int, ...]], density: float, power_scale: float = 1.0
) -> dict[str, float]:
    """Erdős–Rényi-Kernel per-layer densities with global density ``density`` (RigL).

    Layer density ∝ (sum of dims / product of dims) ** power_scale. A layer whose share would exceed
    1 is made dense and the rest is re-solved (the largest offender first, as in RigL).
    """
    d = check_density(density)
    s = _check_shapes(shapes)
    if power_scale < 0:
        raise ValueError(f"power_scale must be >= 0, got {power_scale}")
    n = {k: math.prod(v) for k, v in s.items()}
    raw = {k: (sum(v) / n[k]) ** power_scale for k, v in s.items()}
    total = sum(n.values())
    dense: set[str] = set()
    while True:
        budget = d * total - sum(n[k] for k in dense)
        free = [k for k in s if k not in dense]
        if not free:
            break
        eps = budget / sum(raw[k] * n[k] for k in free)
        over = [k for k in free if eps * raw[k] > 1.0]
        if not over:
            break
        dense.add(max(over, key=lambda k: raw[k]))
    return {k: 1.0 if k in dense else min(1.0, eps * raw[k]) for k in s}


def uniform_densities(shapes: Mapping[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Every layer at ``density``."""
    d = check_density(density)
    return {k: d for k in _check_shapes(shapes)}


def layer_densities_for(
    shapes: Mapping[str, tuple[int, ...]], density: float, distribution: str = "erk"
) -> dict[str, float]:
    """Dispatch on ``distribution`` ("erk" | "uniform")."""
    if distribution == "erk":
        return erk_densities(shapes, density)
    if distribution == "uniform":
        return uniform_densities(shapes, density)
    raise ValueError(f"unknown distribution {distribution!r}; valid: {list(DISTRIBUTIONS)}")


def allocate_counts(
    shapes: Mapping[str, tuple[int, ...]], densities: Mapping[str, float], n_target: int
) -> dict[str, int]:
    """Integer active counts per layer summing to exactly ``n_target``.

    Largest-remainder rounding of ``density_i * numel_i`` (ties: layer order), capped at numel; then
    every layer gets at least one active weight when ``n_target`` allows (taken from the largest).
    """
    s = _check_shapes(shapes)
    n = {k: math.prod(v) for k, v in s.items()}
    total = sum(n.values())
    if not (0 <= n_target <= total):
        raise ValueError(f"n_target must be in [0, {total}], got {n_target}")
    want = {k: min(float(densities[k]), 1.0) * n[k] for k in s}
    counts = {k: min(int(math.floor(want[k])), n[k]) for k in s}
    order = list(s)
    rem = n_target - sum(counts.values())
    # largest fractional part first; index breaks ties deterministically
    by_frac = sorted(order, key=lambda k: (-(want[k] - math.floor(want[k])), order.index(k)))
    while rem > 0:
        progressed = False
        for k in by_frac:
            if rem == 0:
                break
            if counts[k] < n[k]:
                counts[k] += 1
                rem -= 1
                progressed = True
        if not progressed:  # cannot happen while n_target <= total
            raise RuntimeError("count allocation did not converge")
    while rem < 0:
        for k in reversed(by_frac):
            if rem == 0:
                break
            if counts[k] > 0:
                counts[k] -= 1
                rem += 1
    if n_target >= len(order):
        for k in order:
            if counts[k] == 0:
                donor = max(order, key=lambda j: (counts[j], -order.index(j)))
                counts[donor] -= 1
                counts[k] += 1
    return counts


def layer_target_counts(
    shapes: Mapping[str, tuple[int, ...]], density: float, distribution: str = "erk"
) -> dict[str, int]:
    """Per-layer active counts for ``distribution`` at ``density``; they sum to round(density*total)."""
    s = _check_shapes(shapes)
    total = sum(math.prod(v) for v in s.values())
    return allocate_counts(
        s, layer_densities_for(s, density, distribution), target_count(density, total)
    )


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """``generator`` or a fresh CPU generator seeded 0 (never the global RNG)."""
    if generator is None:
        return torch.Generator().manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, got {type(generator).__name__}"
        )
    return generator


def _prunable(model: nn.Module) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    names = MaskSet.prunable_names(model)
    if not names:
        raise ValueError("model has no prunable weights (no nn.Linear / nn.Conv1d/2d/3d)")
    return {n: params[n] for n in names}


def random_masks(
    model: nn.Module,
    density: float,
    distribution: str = "erk",
    generator: torch.Generator | None = None,
) -> MaskSet:
    """Random masks with exactly ``round(density * n_total)`` active weights, spread by ``distribution``.

    ``generator=None`` uses a fixed seed-0 generator (deterministic, never the global RNG).
    """
    check_density(density)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; valid: {list(DISTRIBUTIONS)}")
    g = default_generator(generator)
    params = _prunable(model)
    counts = layer_target_counts(
        {k: tuple(p.shape) for k, p in params.items()}, density, distribution
    )
    masks = {}
    for name, p in params.items():
        flat = torch.zeros(p.numel(), dtype=torch.bool)
        flat[torch.randperm(p.numel(), generator=g)[: counts[name]]] = True
        masks[name] = flat.view(p.shape).to(p.device)
    return MaskSet(masks)


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest entries (stable: earlier index wins ties)."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        idx = torch.sort(flat, descending=True, stable=True).indices[:k]
        mask[idx] = True
    return mask.view(scores.shape)


@torch.no_grad()
def magnitude_masks(model: nn.Module, density: float, scope: str = "global") -> MaskSet:
    """Keep the largest |w|: over all prunable weights (``global``) or per layer (``layer``).

    Both keep exactly ``round(density * n_total)`` weights; ``layer`` gives each layer ``density``
    with largest-remainder rounding. Ties keep the earlier index.
    """
    check_density(density)
    if scope not in MAGNITUDE_SCOPES:
        raise ValueError(f"unknown magnitude scope {scope!r}; valid: {list(MAGNITUDE_SCOPES)}")
    params = _prunable(model)
    total = sum(p.numel() for p in params.values())
    if scope == "layer":
        counts = layer_target_counts(
            {k: tuple(p.shape) for k, p in params.items()}, density, "uniform"
        )
        return MaskSet({k: _top_k_mask(p.detach().abs(), counts[k]) for k, p in params.items()})
    k = target_count(density, total)
    flat = torch.cat([p.detach().abs().reshape(-1).float().cpu() for p in params.values()])
    keep = _top_k_mask(flat, k)
    masks, start = {}, 0
    for name, p in params.items():
        masks[name] = keep[start : start + p.numel()].view(p.shape).to(p.device)
        start += p.numel()
    return MaskSet(masks)
