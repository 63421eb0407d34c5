"""Stage 1 — teacher: train the dense "big" model on the target's `train` split, or take the
user's own trained model (`teacher.checkpoint`, `training.checkpoints`) in its place."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.cache import cache_key
from pipeline.context import (
    RunContext,
    build_model,
    checkpoint_path,
    data_spec,
    load_data,
    load_model,
    model_spec,
    save_model,
    train_recipe,
)
from pipeline.results import TeacherResult
from pipeline.tracking import plumbing as tracking
from training import checkpoints, progress
from training.loops import evaluate, train
from training.seeds import generator

log = logging.getLogger(__name__)

VERSION = 1


def spec(cfg: DictConfig) -> dict[str, Any]:
    """The model and its recipe; with `teacher.checkpoint`, the model and the checkpoint's SHA-256
    (nothing is trained, so the recipe does not enter)."""
    path = checkpoint_path(cfg)
    if path is not None:
        return {"model": model_spec(cfg), "checkpoint_sha256": checkpoints.sha256(path)}
    return {"model": model_spec(cfg), "train": asdict(train_recipe(cfg))}


def key(cfg: DictConfig, data_key: str | None = None) -> str:
    """The teacher's cache key: its spec and the data's key (`load_data(cfg).key` by default)."""
    data_key = load_data(cfg).key if data_key is None else data_key
    return cache_key("teacher", VERSION, spec(cfg), {"data": data_key})


def run(ctx: RunContext) -> TeacherResult:
    cfg = ctx.cfg
    data = ctx.data
    recipe = train_recipe(cfg)
    the_spec = {**spec(cfg), "data": data_spec(cfg)}
    k = key(cfg, data.key)

    def build(out: Path) -> None:
        path = checkpoint_path(cfg)
        if path is not None:  # the user's own trained model replaces teacher training
            model = build_model(ctx, data, "teacher")
            checkpoints.load_into(model, path)
            log.info("teacher: the user's checkpoint %s (SHA-256 %s), not trained", path, the_spec["checkpoint_sha256"])
            save_model(model, out / "model.pt")
            (out / "metrics.json").write_text(json.dumps({"metrics": _evaluate_all(model, data), "history": []}))
            return
        log.info("training the teacher (%d epochs on %d members)", recipe.epochs, len(data.splits.train))
        model = build_model(ctx, data, "teacher")
        x, y = data.part("train")
        with progress.Progress(recipe.epochs, "teacher", "epoch", ctx.progress) as bar:
            history = train(
                model, x, y, recipe, generator(ctx.seed, "teacher", "batches"), augment=data.dataset.augment,
                on_epoch=lambda h: bar.update(1, loss=h.loss, train_acc=h.train_accuracy),
            )
        save_model(model, out / "model.pt")
        metrics = _evaluate_all(model, data)
        (out / "metrics.json").write_text(
            json.dumps({"metrics": metrics, "history": [asdict(h) for h in history]}, indent=1)
        )

    t0 = time.perf_counter()
    entry = ctx.cache.get_or_create("teacher", k, the_spec, build)
    stored = json.loads((entry.path / "metrics.json").read_text())
    result = TeacherResult(k, entry.path, entry.hit, stored["metrics"], stored["history"])
    for h in result.history:
        tracking.log_metrics(
            {"loss": h["loss"], "train_accuracy": h["train_accuracy"]}, step=int(h["epoch"]), prefix="teacher_"
        )
    tracking.log_metrics(result.metrics, prefix="teacher_")
    log.info(
        "teacher %s (%s in %.1f s): train acc %.3f, val acc %.3f, test acc %.3f",
        k,
        "cached" if entry.hit else "trained",
        time.perf_counter() - t0,
        result.metrics["train_accuracy"],
        result.metrics["val_accuracy"],
        result.metrics["test_accuracy"],
    )
    return result


def _evaluate_all(model, data) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in ("train", "val", "test"):
        loss, acc = evaluate(model, *data.part(part))
        out[f"{part}_loss"], out[f"{part}_accuracy"] = loss, acc
    return out


def load(ctx: RunContext, result: TeacherResult):
    return load_model(ctx, ctx.data, result.model_path)
