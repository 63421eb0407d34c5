"""The config-facing edge of `training.compress`: a `CompressJob` and a spec from the run context.

Called at a stage's entry (the compress stage; the matched reference models of the
shadows stage); below it, methods see only the typed job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

import sparse
from pipeline.config import CompressConfig, to_schema
from pipeline.context import (
    DataBundle,
    RunContext,
    build_model,
    load_model,
    model_spec,
    train_recipe,
)
from training.compress.method import CompressJob, compress_recipe, compress_spec


def compress_config(cfg: DictConfig) -> CompressConfig:
    return to_schema(CompressConfig, cfg.compress)  # checked by the entry point's validate (run_stage)


def spec(cfg: DictConfig) -> dict[str, Any]:
    """The compressed model's declared config fields (its cache key's spec)."""
    return compress_spec(compress_config(cfg), model_spec(cfg), train_recipe(cfg))


def job(ctx: RunContext, data: DataBundle, dense_path: Path, seed: int | None = None) -> CompressJob:
    """The job of the run's `compress` group on `data`, from root `seed` (default: the run's),
    starting where the method starts from a dense model from the weights at `dense_path`."""
    c = compress_config(ctx.cfg)
    seed = ctx.seed if seed is None else seed
    return CompressJob(
        c=c,
        recipe=compress_recipe(train_recipe(ctx.cfg), c),
        data=data,
        seed=seed,
        new_model=lambda *path: build_model(ctx, data, *path, seed=seed),
        dense_model=lambda: load_model(ctx, data, dense_path),
        batched_probes=ctx.runtime.batched_probes,
        progress=ctx.progress,
    )


def load_compressed(ctx: RunContext, data: DataBundle, export_path: Path) -> nn.Module:
    """A compressed model rebuilt from its export (proves the export round-trips)."""
    model = build_model(ctx, data, "load")
    model = sparse.load_export(export_path, model)
    model.eval()
    return model
