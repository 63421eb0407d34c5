"""Mask updates with exact counts: prune-and-grow at fixed density (resize: `sparse.resize`).

One job: change which weights are active. ``prune_and_grow`` is the drop/regrow step of dynamic
sparse training (SET, Mocanu et al. 2018; RigL, Evci et al. 2020; ITOP, Liu et al. 2021) used by
SafeCompress (Zhu et al., TSE 2024) at every mask update. Unlike the official ITOP code (Bernoulli
regrowth, so density drifts), every layer drops and regrows exactly the same number of weights;
a weight dropped in an update cannot be regrown in that same update; regrown weights start at zero
with zeroed optimizer state; ties are broken by a permutation drawn from the given generator.
``sparse.resize.resize`` moves the mask to another global density with the same pieces.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sparse.init import default_generator
from sparse.masks import MaskSet
from sparse.scores import (
    LayerInputs,
    check_criteria,
    criterion_needs,
    grow_scores,
    prune_scores,
)

MOMENTUM_STATE_KEYS = ("momentum_buffer", "exp_avg")


def check_drop_fraction(drop_fraction: float) -> float:
    f = float(drop_fraction)
    if math.isnan(f) or not (0.0 <= f < 1.0):
        raise ValueError(f"drop_fraction (regrowth ratio) must be in [0, 1), got {drop_fraction!r}")
    return f


@dataclass
class _Ranking:
    """The ``k`` best of some candidates' scores, up to the order of ties at the k-th score.

    Computed without a generator, so candidates that share scores share it (``prune_and_grow_many``);
    ``_pick`` then draws the tie-breaking permutation from each candidate's own generator.
    """

    m: int  # number of candidates: the length of the tie-breaking permutation
    final: torch.Tensor | None  # flat indices of the k chosen when ties cannot change them; else:
    better: torch.Tensor | None = None  # score-vector positions strictly better than the k-th
    tied: torch.Tensor | None = None  # bool over the score vector: equal to the k-th score
    need: int = 0  # how many of the tied to take
    where: torch.Tensor | None = None  # flat index of each score (None: the whole layer)
    base: torch.Tensor | None = None  # positions the permutation orders (a copy: masks change)


def _rank(
    scores: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    lowest: bool,
    layer: str,
) -> _Ranking:
    """The ``k`` lowest (or highest) ``scores`` among ``candidates`` (see ``_select``)."""
    c = candidates.reshape(-1)
    m = int(c.sum())
    if k > m:
        raise ValueError(f"layer {layer!r}: asked for {k} of {m} candidates")
    flat = scores.reshape(-1)
    if 2 * m < flat.numel():  # few candidates (e.g. the active weights): work on them alone
        where: torch.Tensor | None = c.nonzero().squeeze(1)  # (m,) flat index of each candidate
        s = flat[where]
        finite = bool(torch.isfinite(s).all())
    else:  # many: mask the rest with the worst score, so they rank after every candidate
        where = None
        not_c = ~c
        finite = bool(torch.isfinite(flat).all()) or bool((torch.isfinite(flat) | not_c).all())
        s = flat.masked_fill(not_c, math.inf if lowest else -math.inf)
    if not finite:
        raise ValueError(f"layer {layer!r}: scores contain NaN/inf (check weights and gradients)")
    if k == 0 or k == m:
        return _Ranking(m, c.nonzero().squeeze(1)[:k])
    if 16 * k <= s.numel():  # few to take: a partial top-k is ~2-8x faster than kthvalue
        vals, idx = torch.topk(s, k, largest=not lowest, sorted=False)
        kth = vals.max() if lowest else vals.min()
        tied = s == kth  # the k-th value is a candidate's (finite) score: no non-candidate ties it
        if int(tied.sum()) == int((vals == kth).sum()):  # every tie is among the k taken
            return _Ranking(m, idx if where is None else where[idx])
        better = idx[vals != kth]
    else:
        kth = torch.kthvalue(s, k if lowest else s.numel() - k + 1).values
        better = (s < kth if lowest else s > kth).nonzero().squeeze(1)
        tied = s == kth
        if int(tied.sum()) == k - better.numel():
            chosen = torch.cat([better, tied.nonzero().squeeze(1)])
            return _Ranking(m, chosen if where is None else where[chosen])
    base = torch.arange(m, device=s.device) if where is not None else c.nonzero().squeeze(1)
    return _Ranking(m, None, better, tied, k - better.numel(), where, base)


def _pick(r: _Ranking, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Flat indices of a ranking's k chosen; ties straddling the k-th place are taken in the order
    of a permutation drawn from ``g`` (drawn even when no tie needs it, so ``g`` always advances
    the same way)."""
    perm = torch.randperm(r.m, generator=g).to(device)
    if r.final is not None:
        return r.final
    assert r.better is not None and r.tied is not None and r.base is not None
    shuffled = r.base[perm]
    chosen = torch.cat([r.better, shuffled[r.tied[shuffled].nonzero().squeeze(1)[: r.need]]])
    return chosen if r.where is None else r.where[chosen]


def _select(
    scores: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    g: torch.Generator,
    lowest: bool,
    layer: str,
) -> torch.Tensor:
    """Flat indices (a set, in no particular order) of the ``k`` lowest (or highest) scores among
    ``candidates``.

    Equal scores are ordered by a generator permutation of the candidates, so ties are broken at
    random but reproducibly under ``g``; distinct scores keep their exact order. The result is
    the set a stable sort of the shuffled scores would put first, found without a sort (O(n); a
    full sort was ~10x slower on a 256x256 layer): one ``topk`` when k is small next to the
    scores, else one ``kthvalue``, gives every score strictly better than the k-th, then the
    ties at the k-th value in shuffled order. The permutation is drawn even when no tie needs
    it, so ``g`` advances as it always did.
    """
    return _pick(_rank(scores, candidates, k, lowest, layer), g, candidates.device)


def _momentum_from(
    name: str,
    p: nn.Parameter,
    optimizer: torch.optim.Optimizer | None,
    momenta: Mapping[str, torch.Tensor] | None,
) -> torch.Tensor | None:
    if momenta is not None and name in momenta:
        return momenta[name]
    if optimizer is not None:
        state = optimizer.state.get(p, {})
        for key in MOMENTUM_STATE_KEYS:
            v = state.get(key)
            if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape):
                return v
    return None


def _inputs(
    masks: MaskSet,
    model: nn.Module,
    needs: set[str],
    generator: torch.Generator,
    grads: Mapping[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer | None,
    fired: Mapping[str, torch.Tensor] | None,
    momenta: Mapping[str, torch.Tensor] | None,
    criteria: str,
) -> dict[str, LayerInputs]:
    """Per-layer criterion inputs; raises before anything changes if one is missing or misshaped."""
    out = {}
    for name, p, m in masks._pairs(model):
        g = grads.get(name) if grads is not None else None
        mom = _momentum_from(name, p, optimizer, momenta)
        f = fired.get(name) if fired is not None else masks.fired.get(name)
        for what, t in (("grads", g), ("momentum", mom), ("fired", f)):
            if what not in needs:
                continue
            if t is None:
                hint = {
                    "grads": "pass grads={name: dense gradient} (taken before masks.apply_to_grads)",
                    "momentum": "pass an optimizer with momentum (SGD momentum>0, Adam) after a step, "
                    "or momenta={name: tensor}",
                    "fired": "pass fired={name: bool tensor}",
                }[what]
                raise ValueError(f"{criteria} needs {what} for layer {name!r}: {hint}")
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"{what} for layer {name!r} has shape {tuple(t.shape)}, weight has {tuple(p.shape)}"
                )
        out[name] = LayerInputs(
            name=name,
            weight=p,
            mask=m,
            generator=generator,
            grad=g.to(p.device) if g is not None else None,
            momentum=mom.to(p.device) if mom is not None else None,
            fired=f.to(p.device) if f is not None else None,
        )
    return out


@torch.no_grad()
def _zero_state(
    optimizer: torch.optim.Optimizer | None, p: nn.Parameter, where: torch.Tensor
) -> None:
    if optimizer is None:
        return
    for v in optimizer.state.get(p, {}).values():
        if isinstance(v, torch.Tensor) and tuple(v.shape) == tuple(p.shape):
            v.masked_fill_(where.to(v.device), 0)


@torch.no_grad()
def _commit(
    masks: MaskSet,
    name: str,
    p: nn.Parameter,
    drop_idx: torch.Tensor | None,
    grow_idx: torch.Tensor | None,
    optimizer: torch.optim.Optimizer | None,
    fired: Mapping[str, torch.Tensor] | None,
) -> None:
    """Write the new mask in place; regrown weights and all inactive state are zeroed."""
    m = masks.masks[name]
    flat = m.reshape(-1).clone()
    if drop_idx is not None:
        flat[drop_idx] = False
    grown = torch.zeros_like(flat)
    if grow_idx is not None:
        flat[grow_idx] = True
        grown[grow_idx] = True
    m.copy_(flat.view(m.shape))
    zeroed = grown.view(m.shape) | ~m
    p.masked_fill_(zeroed, 0)
    _zero_state(optimizer, p, zeroed)
    for record in (masks.fired.get(name), fired.get(name) if fired is not None else None):
        if record is not None:
            record |= m.to(record.device)


def prune_and_grow(
    model: nn.Module,
    masks: MaskSet,
    drop_fraction: float,
    prune: str = "magnitude",
    grow: str = "random",
    generator: torch.Generator | None = None,
    grads: Mapping[str, torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    fired: Mapping[str, torch.Tensor] | None = None,
    momenta: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Drop ``round(drop_fraction * n_active)`` active weights per layer and grow as many.

    Drop: the lowest ``prune`` scores among active weights. Grow: the highest ``grow`` scores among
    weights inactive *before* this update (so drop and grow sets are disjoint). A layer with fewer
    inactive weights than ``n_drop`` (e.g. a dense ERK layer) swaps only as many as it can. Masks
    change in place, ``masks.apply(model)`` is done, regrown weights are 0 with zeroed optimizer
    state, and ``fired`` (plus ``masks.fired``) records every position ever active. ``momenta``
    overrides the optimizer's momentum for ``grow="momentum"`` (see ``GradientMomentum``).

    The one-candidate form of ``prune_and_grow_many`` (one implementation of the update).
    Returns ``{"n_dropped", "n_grown", "per_layer": {name: {"n_active", "n_dropped", "n_grown"}}}``.
    """
    (stats,) = prune_and_grow_many(
        [model], [masks], drop_fraction, [(prune, grow)], [generator], grads=grads, optimizers=[optimizer],
        fired=[fired], momenta=[momenta],
    )
    masks.apply(model)
    return stats


def prune_and_grow_many(
    models: Sequence[nn.Module],
    masks: Sequence[MaskSet],
    drop_fraction: float,
    criteria: Sequence[tuple[str, str]],
    generators: Sequence[torch.Generator | None],
    grads: Mapping[str, torch.Tensor] | None = None,
    optimizers: Sequence[torch.optim.Optimizer | None] | None = None,
    fired: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    momenta: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
) -> list[dict[str, Any]]:
    """``prune_and_grow`` of several candidates, candidate i with ``criteria[i] = (prune, grow)``,
    ``generators[i]``, ``optimizers[i]``, ``fired[i]`` and ``momenta[i]`` (see ``prune_and_grow``);
    ``grads`` are shared.

    The masks, weights and optimizer states end exactly as calling ``prune_and_grow`` on each
    candidate in turn would leave them. Candidates whose layer has the same mask and weights
    (e.g. SafeCompress's candidates, all forked from one state) and the same prune criterion share
    that layer's prune ranking, computed once; only the tie-breaking permutation (drawn from each
    candidate's generator, in the same order as ``prune_and_grow`` draws it) and the growth are
    per candidate. Returns one ``prune_and_grow`` stats dict per candidate.
    """
    n = len(models)
    opts = list(optimizers) if optimizers is not None else [None] * n
    fireds = list(fired) if fired is not None else [None] * n
    moms = list(momenta) if momenta is not None else [None] * n
    if not (len(masks) == len(criteria) == len(generators) == len(opts) == len(fireds) == len(moms) == n):
        raise ValueError(
            f"need one masks, criteria pair, generator, optimizer, fired and momenta per model; got {n} models, "
            f"{len(masks)} masks, {len(criteria)} criteria, {len(generators)} generators, {len(opts)} optimizers, "
            f"{len(fireds)} fired, {len(moms)} momenta"
        )
    f = check_drop_fraction(drop_fraction)
    for prune, grow in criteria:
        check_criteria(prune, grow)
    gens = [default_generator(g) for g in generators]
    inputs = [
        _inputs(
            ms,
            model,
            criterion_needs(prune, grow),
            g,
            grads,
            opt,
            fd,
            mom,
            f"prune={prune!r}/grow={grow!r}",
        )
        for model, ms, (prune, grow), g, opt, fd, mom in zip(models, masks, criteria, gens, opts, fireds, moms)
    ]
    params = [dict(model.named_parameters()) for model in models]
    per_layer: list[dict[str, dict[str, int]]] = [{} for _ in range(n)]
    for name in inputs[0]:
        shared: dict[str, tuple[torch.Tensor, torch.Tensor, _Ranking]] = {}  # prune criterion ->
        for i in range(n):  # (mask and weights before the update, their ranking)
            li = inputs[i][name]
            m = li.mask
            n_active = int(m.sum())
            n_drop = min(int(round(f * n_active)), m.numel() - n_active)
            fd = fireds[i]
            if fd is not None and name in fd:
                fd[name] |= m.to(fd[name].device)
            masks[i].fired[name] |= m.to(masks[i].fired[name].device)
            if li.fired is not None:
                li.fired = li.fired | m
            drop_idx = grow_idx = None
            if n_drop > 0:
                prune, grow = criteria[i]
                ref = shared.get(prune)
                w = li.weight.detach()
                if ref is not None and torch.equal(ref[0], m) and torch.equal(ref[1], w):
                    ranking = ref[2]
                else:
                    ranking = _rank(prune_scores(prune, li), m, n_drop, lowest=True, layer=name)
                    if i < n - 1 and prune not in shared:
                        shared[prune] = (m.clone(), w.clone(), ranking)
                g_scores = grow_scores(grow, li)
                drop_idx = _pick(ranking, gens[i], m.device)
                grow_idx = _select(g_scores, ~m, n_drop, gens[i], lowest=False, layer=name)
            _commit(masks[i], name, params[i][name], drop_idx, grow_idx, opts[i], fd)
            per_layer[i][name] = {"n_active": n_active, "n_dropped": n_drop, "n_grown": n_drop}
    out = []
    for layers in per_layer:  # no masks.apply: _commit zeroed every inactive weight already
        total = sum(v["n_dropped"] for v in layers.values())
        out.append({"n_dropped": total, "n_grown": total, "per_layer": layers})
    return out
