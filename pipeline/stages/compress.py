"""Stage 3 — compress: train the compressed model with the configured method, cache and track it.

The methods (SafeCompress and its baselines: dense, oneshot, gmp, dst, dst_adv, dpsgd)
live in `training.compress`, one registered object each; this stage builds the job from
the config, caches the result by the compress spec + data + teacher keys, writes the
export (`model.sc`), `candidates.csv` and `metrics.json`, and logs them. Cost of the
SafeCompress loop against plain DST: `benchmarks/bench_compress.py`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig
from torch import nn

import sparse
from pipeline import compress_jobs as from_config
from pipeline.cache import cache_key
from pipeline.context import DataBundle, RunContext, data_spec
from pipeline.results import EXPORT_FILE, CompressResult, TeacherResult
from pipeline.tracking import plumbing as tracking
from training.compress import train_compressed
from training.loops import evaluate
from training.progress import warn_once
from training.selection import resolution

log = logging.getLogger(__name__)

VERSION = 2


def key(cfg: DictConfig, data_key: str, teacher_key: str) -> str:
    """The compressed model's cache key: its spec and the keys of the data and the teacher."""
    return cache_key("compress", VERSION, from_config.spec(cfg), {"data": data_key, "teacher": teacher_key})


def run(ctx: RunContext, teacher: TeacherResult) -> CompressResult:
    """Train (or load from the cache) the compressed model of `compress`, from `teacher`."""
    cfg = ctx.cfg
    data = ctx.data
    job = from_config.job(ctx, data, teacher.model_path)
    c = job.c
    the_spec = from_config.spec(cfg)
    k = key(cfg, data.key, teacher.key)

    def build(out: Path) -> None:
        trained = train_compressed(job)
        model, masks, history, table = trained.model, trained.masks, trained.history, trained.table
        size = sparse.save_export(model, out / EXPORT_FILE, masks=masks)
        metrics = {
            **_final_metrics(model, data),
            "density": masks.density() if masks is not None else 1.0,
            "model_size_bytes": float(size),
            "dense_size_bytes": float(sparse.dense_size_bytes(model)),
            "n_updates": float(table["update"].nunique()) if len(table) and "update" in table else 0.0,
            **trained.metrics,  # e.g. DMP's defender_reference_size: data used beyond the members
        }
        if len(table) and "chosen" in table and "strategy" in table:
            chosen = table[table["chosen"]]
            for strategy, count in chosen["strategy"].value_counts().items():
                # "magnitude/random" -> "wins_magnitude-random": a "/" would open its own MLflow chart section
                metrics[f"wins_{strategy.replace('/', '-')}"] = float(count)
        table.to_csv(out / "candidates.csv", index=False)
        (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "history": history}, indent=1))

    t0 = time.perf_counter()
    entry = ctx.cache.get_or_create(
        "compress", k, {**the_spec, "data": data_spec(cfg), "teacher": teacher.key}, build
    )
    stored = json.loads((entry.path / "metrics.json").read_text())
    table = _candidates_table(entry.path)
    result = CompressResult(k, entry.path, entry.hit, {**stored["metrics"], **_safety_resolution(table)})
    _log_tracking(result, stored["history"], table)
    log.info(
        "compress %s (%s, %s in %.1f s): val acc %.3f, test acc %.3f, density %.4f, %s bytes",
        c.method,
        k,
        "cached" if entry.hit else "trained",
        time.perf_counter() - t0,
        result.metrics["accuracy"],
        result.metrics["test_accuracy"],
        result.metrics["density"],
        f"{int(result.metrics['model_size_bytes']):,}",
    )
    return result


def load(ctx: RunContext, result: CompressResult) -> nn.Module:
    """The compressed model, rebuilt from its export (proves the export round-trips)."""
    return from_config.load_compressed(ctx, ctx.data, result.export_path)


def _candidates_table(path: Path) -> pd.DataFrame | None:
    """The entry's candidates.csv (None when the method wrote an empty one)."""
    table_path = path / "candidates.csv"
    if not table_path.exists() or table_path.stat().st_size <= 1:
        return None
    return pd.read_csv(table_path)


def _safety_resolution(table: pd.DataFrame | None) -> dict[str, float]:
    """`safety_*` metrics: how often the safety test told the candidates apart (see `selection.resolution`).

    From the entry's candidates table, so entries cached before these metrics existed have them too.
    """
    if table is None:
        return {}
    summary = resolution(table)
    if summary and summary["updates"] >= 5 and summary["resolved_fraction"] == 0:
        warn_once(
            log, "the safety test never told the candidates apart",
            "the safety test told the candidates apart in none of %d mask updates (risk spread, median "
            "%.4f, never above 2 standard errors, median %.4f): the selection rule could only act on "
            "validation accuracy, so the safety test did not act on this run's privacy. Candidates that "
            "differ more (e.g. several prune/grow criteria in compress.strategies, as in "
            "conf/frontier/safecompress_mixed.yaml) or a larger safety holdout let it act.",
            int(summary["updates"]), summary["median_risk_spread"], summary["median_risk_se"],
        )
    return {f"safety_{k}": v for k, v in summary.items()}


def _final_metrics(model: nn.Module, data: DataBundle) -> dict[str, float]:
    out = {}
    for part, name in (("val", "accuracy"), ("test", "test_accuracy"), ("train", "train_accuracy")):
        loss, acc = evaluate(model, *data.part(part))
        out[name] = acc
        out[f"{part}_loss"] = loss
    return out


def _log_tracking(result: CompressResult, history: list[dict[str, float]], table: pd.DataFrame | None) -> None:
    if not tracking.active():
        return
    for h in history:
        tracking.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]), prefix="compress_")
    if table is not None:
        if "update" in table and "accuracy" in table and table["accuracy"].notna().any():
            for (u, i), row in table.set_index(["update", "candidate"]).iterrows():
                tracking.log_metrics(
                    {f"candidate_{i}_accuracy": row["accuracy"], f"candidate_{i}_risk": row["risk"],
                     f"candidate_{i}_score": row["score"]},
                    step=int(u),
                )
            for _, row in table[table["chosen"]].iterrows():
                tracking.log_metrics({"chosen_candidate": row["candidate"]}, step=int(row["update"]))
        tracking.log_artifact(result.candidates_path)
    tracking.log_metrics(
        {k: v for k, v in result.metrics.items() if k.startswith(("wins_", "safety_", "defender_"))}
    )
