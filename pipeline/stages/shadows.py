"""Stage 2 — shadows: K reference models, each on a random half of the attacker's data pool.

Each shadow trains with the teacher's recipe (Shokri et al. S&P'17; the reference
models of LiRA and RMIA). Shadows are cached one model at a time, so raising K
reuses the first ones; the membership matrix (K, n_pool) is derived from
the root seed and saved beside them.

The pool (`shadows.pool`): `population` (the default; no audit point is ever IN, so LiRA runs
offline), or `with_candidates`: population and every point an audit scores (audit members,
test, search members, val, canaries), as in Carlini et al.'s online LiRA, where the attacker
trains references on random halves of a pool that holds the candidates. Those are drawn in
complementary pairs (model 2j on a seeded random half, model 2j+1 on the rest), so every pool
point is IN for exactly K/2 references and OUT for K/2, and raising K keeps the first pairs.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict
from dataclasses import replace as dc_replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline import compress_jobs as compress_from_config
from pipeline.cache import cache_key
from pipeline.config import SHADOW_POOLS, SHADOW_RECIPES, ShadowsConfig, TrainConfig, to_schema
from pipeline.context import (
    DataBundle,
    RunContext,
    build_model,
    load_model,
    model_spec,
    save_model,
    train_recipe,
)
from pipeline.results import ShadowsResult
from pipeline.tracking import plumbing as tracking
from training import progress
from training.batched import can_batch, train_grouped
from training.compress import get_method, train_compressed
from training.data import Splits
from training.loops import evaluate, train
from training.seeds import derive_seed, generator

log = logging.getLogger(__name__)

VERSION = 1


def membership_row(seed: int, index: int, n_population: int, member_fraction: float) -> np.ndarray:
    """Shadow `index`'s members: a seeded random subset of `population` of the given fraction."""
    rng = np.random.default_rng(derive_seed(seed, "shadow", index, "members"))
    row = np.zeros(n_population, dtype=bool)
    row[rng.permutation(n_population)[: int(round(member_fraction * n_population))]] = True
    return row


def pair_row(seed: int, index: int, n_pool: int) -> np.ndarray:
    """Reference `index`'s members in `with_candidates` mode: pair index // 2 draws a seeded random
    half of the pool; the even model takes it and the odd one its complement."""
    rng = np.random.default_rng(derive_seed(seed, "shadow", "pair", index // 2, "members"))
    row = np.zeros(n_pool, dtype=bool)
    row[rng.permutation(n_pool)[: n_pool // 2]] = True
    return row if index % 2 == 0 else ~row


def candidates(splits: Splits) -> np.ndarray:
    """Every point an audit scores (its `select`, `audit` and `canary` evaluations), sorted."""
    return np.unique(np.r_[splits.audit_members, splits.test, splits.search_members, splits.val, splits.canaries])


def pool(splits: Splits, which: str, seed: int) -> np.ndarray:
    """The data set indices the references draw their members from (`shadows.pool`), sorted.

    `with_candidates`: every audit candidate, filled up with seeded population points to twice
    the target's training set, so each reference (one half) trains on as many points as the
    target did, as in Carlini et al.'s protocol (target and references on equal-size halves).
    With more candidates than that, the pool is the candidates alone (logged)."""
    if which == "population":
        return np.asarray(splits.population)
    if which != "with_candidates":
        raise ValueError(f"unknown shadows.pool {which!r}; valid: {list(SHADOW_POOLS)}")
    cand = candidates(splits)
    rest = np.setdiff1d(splits.population, cand)
    n_fill = 2 * len(splits.train) - len(cand)
    if n_fill < 0:
        log.warning(
            "shadows.pool=with_candidates: %d audit candidates exceed twice the %d members; each "
            "reference trains on %d points", len(cand), len(splits.train), len(cand) // 2,
        )
    rng = np.random.default_rng(derive_seed(seed, "shadow", "pool"))
    return np.union1d(cand, rng.permutation(rest)[: max(n_fill, 0)])


def membership_rows(seed: int, shadows: ShadowsConfig, n_pool: int) -> list[np.ndarray]:
    """Every reference's (n_pool,) membership row, from the root seed."""
    if shadows.pool == "with_candidates":
        return [pair_row(seed, k, n_pool) for k in range(shadows.n_models)]
    return [membership_row(seed, k, n_pool, shadows.member_fraction) for k in range(shadows.n_models)]


def shadow_spec(cfg: DictConfig, index: int) -> dict[str, Any]:
    shadows = to_schema(ShadowsConfig, cfg.shadows)
    spec = {
        "model": model_spec(cfg),
        "train": asdict(train_recipe(cfg)),
        "member_fraction": shadows.member_fraction,
        "recipe": shadows.recipe,
        "index": index,
    }
    if shadows.pool != "population":  # the default's keys stay those of before the option
        spec["pool"] = shadows.pool
    return spec


def dense_keys(cfg: DictConfig, data_key: str) -> tuple[str, ...]:
    """The dense shadows' cache keys, one per model (raising `shadows.n_models` keeps the first ones)."""
    n_models = to_schema(ShadowsConfig, cfg.shadows).n_models
    spec = shadow_spec(cfg, 0)
    return tuple(cache_key("shadow", VERSION, {**spec, "index": k}, {"data": data_key}) for k in range(n_models))


def matched_spec(compress_spec: dict[str, Any], dense_key: str, index: int) -> dict[str, Any]:
    """A matched shadow's spec: the compress recipe (`from_config.spec`) and the dense shadow it starts
    from; for a defence with a reference set, the rule that gives the shadow its reference data."""
    spec = {"compress": compress_spec, "dense_shadow": dense_key, "index": index}
    if get_method(compress_spec["compress"]["method"]).uses_reference_set:
        spec["reference_data"] = REFERENCE_RULE
    return spec


# a matched reference of a defence that trains on reference data beyond the members (DMP) trains
# on the defender's own reference split, all of it: the attacker knows the defender's reference
# data (in DMP it may be public), so its references mimic the defence at its own data budget
REFERENCE_RULE = "defender_split"


def matched_keys(cfg: DictConfig, data_key: str, dense: tuple[str, ...]) -> tuple[str, ...]:
    """The matched shadows' cache keys, one per dense shadow (`dense`: their keys)."""
    return _matched_keys(compress_from_config.spec(cfg), data_key, dense)


def _matched_keys(c_spec: dict[str, Any], data_key: str, dense: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        cache_key("shadow_matched", VERSION, matched_spec(c_spec, dk, k), {"data": data_key})
        for k, dk in enumerate(dense)
    )


RECIPES = SHADOW_RECIPES


def run(ctx: RunContext, recipe: str | None = None, share: tuple[int, int] = (0, 1)) -> ShadowsResult:
    """The K reference models: `dense` (the teacher's recipe) or `matched` (the compress recipe).

    `share=(i, n)`: process i of n building a cold cache together (search workers) trains the
    missing dense shadows k with k % n == i first, then any missing one no other process is
    building, and waits for the rest; the models are the same whichever process trains them
    (grouped training of a subset gives each model the same bits).

    Matched references (SPEC "Statistical power": dense shadows under-state a
    compressed model's leakage) are made by running the configured compress
    method on each shadow's own data, starting from the dense shadow where the
    method starts from a teacher; they are cached per recipe (compress spec).
    """
    cfg = ctx.cfg
    shadows = to_schema(ShadowsConfig, cfg.shadows)
    recipe = recipe or shadows.recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown shadows recipe {recipe!r}; valid: {list(RECIPES)}")
    if recipe == "matched":
        c = compress_from_config.compress_config(cfg)
        return _run_matched(ctx, run(ctx, "dense"), c.method, compress_from_config.spec(cfg))
    data = ctx.data
    cache = ctx.cache
    data_pool = pool(data.splits, shadows.pool, ctx.seed)
    n_pop = len(data_pool)
    specs = [shadow_spec(cfg, k) for k in range(shadows.n_models)]
    train_cfg = train_recipe(cfg)
    keys_all = list(dense_keys(cfg, data.key))
    rows_all = membership_rows(ctx.seed, shadows, n_pop)
    index, n_parts = share
    if not 0 <= index < n_parts:
        raise ValueError(f"shadows share {share}: expected (i, n) with 0 <= i < n")

    def missing() -> list[int]:
        return [
            k for k in range(shadows.n_models)
            if cache.lookup("shadow", keys_all[k], {**specs[k], "data": data.key}) is None
        ]

    def train_and_save(k: int, out: Path) -> None:
        _save_one(data, _train(ctx, data, train_cfg, [k], rows_all, data_pool)[k], rows_all[k], out)

    t0 = time.perf_counter()
    todo = missing()
    built = 0
    # Claim the missing shadows no other process is building (a worker or another machine on
    # the same cache waits for those in get_or_create instead of training them again): this
    # process's share first, then whatever is still missing and unclaimed.
    passes = [[k for k in todo if k % n_parts == index], None] if n_parts > 1 else [todo]
    for wanted in passes:
        wanted = missing() if wanted is None else wanted
        with cache.claim("shadow", [keys_all[k] for k in wanted]) as claimed:
            mine = [k for k in wanted if keys_all[k] in claimed]
            trained = _train_missing(ctx, data, train_cfg, mine, rows_all, data_pool) if mine else {}
            for k in mine:
                cache.get_or_create(
                    "shadow", keys_all[k], {**specs[k], "data": data.key},
                    functools.partial(_save_one, data, trained[k], rows_all[k]),
                )
            built += len(mine)
    keys, paths, rows, hits = [], [], [], -built
    for k in range(shadows.n_models):
        s, key, row = specs[k], keys_all[k], rows_all[k]
        entry = cache.get_or_create(  # built above, by another process, or (its builder died) here
            "shadow", key, {**s, "data": data.key}, functools.partial(train_and_save, k),
        )
        hits += int(entry.hit)
        keys.append(key)
        paths.append(entry.path)
        rows.append(row)
    membership = np.stack(rows) if rows else np.zeros((0, n_pop), dtype=bool)
    tracking.log_metrics({"shadows_n_models": len(keys), "shadows_cache_hits": hits})
    log.info("shadows[dense]: %d models (%d from cache) in %.1f s", len(keys), hits, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    tracking.log_metrics({"shadows_train_seconds_per_model": seconds / built} if built else {})
    return ShadowsResult(tuple(keys), tuple(paths), membership, hits, data_pool)


def _train_missing(
    ctx: RunContext, data: DataBundle, recipe: TrainConfig, indices: list[int], rows: list[np.ndarray],
    data_pool: np.ndarray,
) -> dict[int, torch.nn.Module]:
    log.info("training %d shadow model(s)%s", len(indices), " (grouped)" if ctx.runtime.batched_shadows else "")
    return _train(ctx, data, recipe, indices, rows, data_pool)


def _train(
    ctx: RunContext, data: DataBundle, recipe: TrainConfig, indices: list[int], rows: list[np.ndarray],
    data_pool: np.ndarray,
) -> dict[int, torch.nn.Module]:
    """Train the shadows `indices` with `recipe`: grouped when the architecture allows, else one by one.
    Grouped training needs equal-size training sets: the models are grouped by size (a pair of
    complementary halves of an odd pool differs by one point); each model gets the same bits in
    any group."""
    models = [build_model(ctx, data, "shadow", k) for k in indices]
    parts = [torch.from_numpy(data_pool[rows[k]]) for k in indices]
    gens = [generator(ctx.seed, "shadow", k, "batches") for k in indices]
    show = ctx.progress
    if ctx.runtime.batched_shadows and len(indices) > 1 and can_batch(models) and data.dataset.augment is None:
        # all models advance together: count epochs
        sizes = sorted({len(p) for p in parts})
        desc = f"shadows[dense] {len(indices)} models together"
        with progress.Progress(recipe.epochs * len(sizes), desc, "epoch", show) as bar:
            for size in sizes:
                group = [j for j, p in enumerate(parts) if len(p) == size]
                train_grouped(
                    [models[j] for j in group],
                    [data.dataset.x[parts[j]] for j in group],
                    [data.dataset.y[parts[j]] for j in group],
                    recipe,
                    [gens[j] for j in group],
                    on_epoch=lambda _: bar.update(1),
                )
    else:
        with progress.Progress(len(indices), "shadows[dense]", "model", show) as bar:
            for model, idx, g in zip(models, parts, gens):
                train(model, data.dataset.x[idx], data.dataset.y[idx], recipe, g, augment=data.dataset.augment)
                bar.update(1)
    return dict(zip(indices, models))


def _save_one(data: DataBundle, model: torch.nn.Module, row: np.ndarray, out: Path) -> None:
    save_model(model, out / "model.pt")
    np.save(out / "members.npy", row)
    _, acc = evaluate(model, *data.part("test"))
    (out / "metrics.json").write_text(json.dumps({"test_accuracy": acc, "n_members": int(row.sum())}))


def load_models(ctx: RunContext, result: ShadowsResult) -> list[torch.nn.Module]:
    data = ctx.data
    return [load_model(ctx, data, p / "model.pt") for p in result.paths]


def _run_matched(ctx: RunContext, dense: ShadowsResult, method: str, c_spec: dict[str, Any]) -> ShadowsResult:
    """Each dense shadow's matched twin: the compress method run on that shadow's own data (its
    members train, its outsiders split into val and test), from its own seed, starting from the
    dense shadow where the method starts from a dense model (`training.compress.train_compressed`)."""
    data = ctx.data
    cache = ctx.cache
    pop = dense.pool if dense.pool is not None else data.splits.population
    all_keys = _matched_keys(c_spec, data.key, dense.keys)
    keys, paths, hits = [], [], 0
    t0 = time.perf_counter()
    # one count over the references (each is a whole compress run: its own bar stays off)
    bar = progress.Progress(len(dense.keys), f"references[{method}]", "model", ctx.progress)
    for k, (dense_key, dense_path) in enumerate(zip(dense.keys, dense.paths)):
        row = dense.membership[k]
        spec = matched_spec(c_spec, dense_key, k)
        key = all_keys[k]

        def build(out: Path, k=k, row=row, dense_path=dense_path) -> None:
            members, outsiders = pop[row], pop[~row]
            rng = np.random.default_rng(derive_seed(ctx.seed, "shadow", k, "matched_split"))
            outsiders = rng.permutation(outsiders)
            # a defence that trains on data beyond the members (DMP): the defender's reference split
            # (REFERENCE_RULE); it is disjoint from the population, so from every shadow's members
            uses_ref = get_method(method).uses_reference_set
            reference = data.splits.reference if uses_ref else np.zeros(0, dtype=np.int64)
            view = dc_replace(
                data,
                splits=Splits(
                    train=np.sort(members),
                    val=np.sort(outsiders[: len(outsiders) // 2]),
                    test=np.sort(outsiders[len(outsiders) // 2 :]),
                    population=np.zeros(0, dtype=np.int64),
                    audit_members=np.zeros(0, dtype=np.int64),
                    known_members=np.sort(members),
                    reference=np.sort(reference),
                ),
            )
            seed = derive_seed(ctx.seed, "shadow", k, "matched") % (2**31)
            job = compress_from_config.job(ctx, view, dense_path / "model.pt", seed=seed)
            save_model(train_compressed(dc_replace(job, progress=False)).model, out / "model.pt")
            np.save(out / "members.npy", row)

        entry = cache.get_or_create("shadow_matched", key, {**spec, "data": data.key}, build)
        hits += int(entry.hit)
        keys.append(key)
        paths.append(entry.path)
        bar.update(1)
    bar.close()
    log.info(
        "references[%s] (matched recipe): %d models (%d from cache) in %.1f s",
        method, len(keys), hits, time.perf_counter() - t0,
    )
    return ShadowsResult(tuple(keys), tuple(paths), dense.membership, hits, dense.pool)
