"""Stage 3 — compress: dynamic sparse training with SafeCompress's test-driven candidate selection.

Follows Zhu et al. (TSE 2024 / ASE 2022). Plain DST (SET-style magnitude prune,
random regrow; Mocanu et al. 2018, Evci et al. 2020) runs with one candidate and
no safety test. SafeCompress makes N candidates at every mask update, each with
its own prune/grow strategy and regrow seed, trains each for a short probe (so
candidates that share a prune rule stop computing the same function), runs the
performance test (validation accuracy) and the safety test (the simulated
attacker's AUC on a held-out slice of known members vs validation non-members)
and continues from the best by the selection rule. Every candidate's numbers are
recorded, per update, in `candidates.csv`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

import sparse
from attacks.metrics import roc_auc
from pipeline import tracking
from pipeline.cache import cache_key
from pipeline.config import CompressConfig, TrainConfig, to_schema, validate_compress
from pipeline.context import DataBundle, build_model, data_spec, get_cache, load_data, model_spec, train_recipe
from pipeline.seeds import generator
from pipeline.stages import teacher as teacher_stage
from pipeline.training import (
    NonFiniteLossError,
    batch_indices,
    evaluate,
    make_optimizer,
    predict_logits,
    set_lr,
    steps_per_epoch,
)

log = logging.getLogger(__name__)

VERSION = 1
EXPORT_FILE = "model.sc"


@dataclass(frozen=True)
class CompressResult:
    key: str
    path: Path  # cache entry: model.sc (compressed export), candidates.csv, metrics.json
    cache_hit: bool
    metrics: dict[str, float]  # accuracy (val), test_accuracy, train_accuracy, density, model_size_bytes, ...

    @property
    def export_path(self) -> Path:
        return self.path / EXPORT_FILE

    @property
    def candidates_path(self) -> Path:
        return self.path / "candidates.csv"


def compress_config(cfg: DictConfig) -> CompressConfig:
    c = to_schema(CompressConfig, cfg.compress)
    validate_compress(c)
    return c


def recipe_for(cfg: DictConfig, c: CompressConfig) -> TrainConfig:
    recipe = train_recipe(cfg)
    return replace(recipe, epochs=c.epochs) if c.epochs is not None else recipe


def spec(cfg: DictConfig) -> dict[str, Any]:
    c = compress_config(cfg)
    return {"compress": asdict(c), "model": model_spec(cfg), "train": asdict(recipe_for(cfg, c))}


def run(cfg: DictConfig, teacher: teacher_stage.TeacherResult | None = None) -> CompressResult:
    c = compress_config(cfg)
    data = load_data(cfg)
    teacher = teacher or teacher_stage.run(cfg)
    the_spec = spec(cfg)
    key = cache_key("compress", VERSION, the_spec, {"data": data.key, "teacher": teacher.key})

    def build(out: Path) -> None:
        if c.method == "dense":
            model = teacher_stage.load(cfg, teacher)
            history: list[dict[str, float]] = []
            table = pd.DataFrame()
            masks = None
        else:
            model, masks, history, table = train_sparse(cfg, c, data)
        size = sparse.save_export(model, out / EXPORT_FILE, masks=masks)
        metrics = {
            **_final_metrics(model, data),
            "density": masks.density() if masks is not None else 1.0,
            "model_size_bytes": float(size),
            "dense_size_bytes": float(sparse.dense_size_bytes(model)),
            "n_updates": float(table["update"].nunique()) if len(table) else 0.0,
        }
        table.to_csv(out / "candidates.csv", index=False)
        (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "history": history}, indent=1))

    entry = get_cache(cfg).get_or_create(
        "compress", key, {**the_spec, "data": data_spec(cfg), "teacher": teacher.key}, build
    )
    stored = json.loads((entry.path / "metrics.json").read_text())
    result = CompressResult(key, entry.path, entry.hit, stored["metrics"])
    _log_tracking(result, stored["history"])
    log.info(
        "compress %s (%s, %s): val acc %.3f, test acc %.3f, density %.4f, %d bytes",
        c.method,
        key,
        "cached" if entry.hit else "trained",
        result.metrics["accuracy"],
        result.metrics["test_accuracy"],
        result.metrics["density"],
        int(result.metrics["model_size_bytes"]),
    )
    return result


def load(cfg: DictConfig, result: CompressResult) -> nn.Module:
    """The compressed model, rebuilt from its export (proves the export round-trips)."""
    data = load_data(cfg)
    model = build_model(cfg, data, "load")
    model = sparse.load_export(result.export_path, model)
    model.eval()
    return model


def _final_metrics(model: nn.Module, data: DataBundle) -> dict[str, float]:
    out = {}
    for part, name in (("val", "accuracy"), ("test", "test_accuracy"), ("train", "train_accuracy")):
        loss, acc = evaluate(model, *data.part(part))
        out[name] = acc
        out[f"{part}_loss"] = loss
    return out


def _log_tracking(result: CompressResult, history: list[dict[str, float]]) -> None:
    if not tracking.active():
        return
    for h in history:
        tracking.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]), prefix="compress_")
    if result.candidates_path.exists() and result.candidates_path.stat().st_size > 1:
        table = pd.read_csv(result.candidates_path)
        for (u, i), row in table.set_index(["update", "candidate"]).iterrows():
            tracking.log_metrics(
                {
                    f"candidate_{i}_accuracy": row["accuracy"],
                    f"candidate_{i}_risk": row["risk"],
                    f"candidate_{i}_score": row["score"],
                },
                step=int(u),
            )
        chosen = table[table["chosen"]]
        for _, row in chosen.iterrows():
            tracking.log_metrics({"chosen_candidate": row["candidate"]}, step=int(row["update"]))
        tracking.log_artifact(result.candidates_path)


# ----------------------------------------------------------------------------- the training loop


@dataclass
class _State:
    """One trajectory: model, its optimizer and its masks."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    masks: sparse.MaskSet

    def fork(self, recipe: TrainConfig) -> _State:
        model = copy.deepcopy(self.model)
        optimizer = make_optimizer(model.parameters(), recipe)
        optimizer.load_state_dict(self.optimizer.state_dict())
        return _State(model, optimizer, self.masks.clone())


def _batches(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from batch_indices(n, batch_size, g)


def _masked_step(
    state: _State, x: torch.Tensor, y: torch.Tensor, keep_grads: bool
) -> tuple[float, dict[str, torch.Tensor] | None]:
    """One SGD step on the sparse model; returns the loss and (optionally) the dense gradients."""
    model, opt, masks = state.model, state.optimizer, state.masks
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"training loss is {loss.item()}; lower train.lr")
    loss.backward()
    grads = None
    if keep_grads:  # dense gradients, before masking: gradient-based growth reads them
        params = dict(model.named_parameters())
        grads = {n: params[n].grad.detach().clone() for n in masks.masks}
    masks.apply_to_grads(model)
    opt.step()
    masks.apply(model)
    masks.apply_to_optimizer(opt, model)
    return float(loss.item()), grads


def _safety_slices(data: DataBundle, c: CompressConfig, seed: int) -> dict[str, torch.Tensor]:
    """Held-out slices of known members and val non-members for the safety test (equal sizes)."""
    rng = np.random.default_rng(generator(seed, "safety_slices").initial_seed())
    known = rng.permutation(data.splits.known_members)
    val = rng.permutation(data.splits.val)
    n = max(2, int(round(c.safety.holdout_fraction * min(len(known), len(val)))))
    m_idx, n_idx = torch.from_numpy(known[:n]), torch.from_numpy(val[:n])
    return {
        "xm": data.dataset.x[m_idx],
        "ym": data.dataset.y[m_idx],
        "xn": data.dataset.x[n_idx],
        "yn": data.dataset.y[n_idx],
    }


def loss_attack_risk(model: nn.Module, s: dict[str, torch.Tensor]) -> float:
    """The loss attack's AUC (Yeom et al. 2018): lower loss -> member."""
    with torch.no_grad():
        lm = nn.functional.cross_entropy(predict_logits(model, s["xm"]), s["ym"], reduction="none")
        ln = nn.functional.cross_entropy(predict_logits(model, s["xn"]), s["yn"], reduction="none")
    scores = -torch.cat([lm, ln]).numpy()
    labels = np.r_[np.ones(len(lm)), np.zeros(len(ln))]
    if not np.isfinite(scores).all():
        return float("nan")
    return float(roc_auc(scores, labels))


def select_weighted(accuracy: np.ndarray, risk: np.ndarray, lam: float) -> np.ndarray:
    """SafeCompress's weighted test score: accuracy − λ·(AUC − 0.5); rejected candidates get −inf."""
    score = accuracy - lam * (risk - 0.5)
    return np.where(np.isfinite(score), score, -np.inf)


def train_sparse(
    cfg: DictConfig, c: CompressConfig, data: DataBundle
) -> tuple[nn.Module, sparse.MaskSet, list[dict[str, float]], pd.DataFrame]:
    seed = int(cfg.seed)
    recipe = recipe_for(cfg, c)
    x, y = data.part("train")
    xv, yv = data.part("val")
    ds = c.density_schedule
    d0 = sparse.density_at(ds.kind, 0.0, ds.start, c.density, ds.begin, ds.end)
    model = build_model(cfg, data, "compress")
    masks = sparse.random_masks(model, d0, c.init, generator(seed, "compress", "mask"))
    masks.apply(model)
    state = _State(model, make_optimizer(model.parameters(), recipe), masks)
    spe = steps_per_epoch(len(y), recipe.batch_size)
    total = recipe.epochs * spe
    last_update_step = int(c.stop_fraction * total)
    batches = _batches(len(y), recipe.batch_size, generator(seed, "compress", "batches"))
    use_safety = c.method == "safecompress" and c.n_candidates > 1
    slices = _safety_slices(data, c, seed) if use_safety else None
    needs_grads = any(
        s.grow in ("gradient",) or s.prune == "taylor" for s in c.strategies
    )
    rows: list[dict[str, Any]] = []
    history: list[dict[str, float]] = []
    step, update, epoch_losses = 0, 0, []
    bar = tqdm(total=total, desc=f"compress[{c.method}]", disable=not cfg.runtime.progress, leave=False)
    last_grads = None
    while step < total:
        idx = next(batches)
        set_lr(state.optimizer, recipe, step, total)
        is_update = (step + 1) % c.update_every == 0 and (step + 1) <= last_update_step and (step + 1) < total
        loss, grads = _masked_step(state, x[idx], y[idx], keep_grads=needs_grads and is_update)
        last_grads = grads if grads is not None else last_grads
        epoch_losses.append(loss)
        step += 1
        bar.update(1)
        if is_update:
            update += 1
            progress = step / total
            target = sparse.density_at(ds.kind, progress, ds.start, c.density, ds.begin, ds.end)
            if abs(target - state.masks.density()) * state.masks.n_total() >= 1:
                sparse.resize(state.model, state.masks, target, generator=generator(seed, "resize", update))
            ratio = sparse.regrowth_ratio_at(
                c.regrowth.kind, min(step / max(last_update_step, 1), 1.0), c.regrowth.start, c.regrowth.end
            )
            if use_safety:
                assert slices is not None
                state, new_rows, probe_used = _candidates(
                    cfg, c, recipe, state, ratio, update, last_grads, batches, x, y, xv, yv, slices, step, total
                )
                rows.extend(new_rows)
                step += probe_used
                bar.update(probe_used)
            else:
                strat = c.strategies[0]
                sparse.prune_and_grow(
                    state.model, state.masks, ratio, strat.prune, strat.grow,
                    generator=generator(seed, "update", update, "candidate", 0),
                    grads=last_grads, optimizer=state.optimizer,
                )
                rows.append(
                    {"update": update, "step": step, "candidate": 0, "prune": strat.prune, "grow": strat.grow,
                     "regrowth_ratio": ratio, "accuracy": math.nan, "risk": math.nan, "score": math.nan,
                     "status": "ok", "chosen": True}
                )
        if step % spe == 0 or step >= total:
            _, val_acc = evaluate(state.model, xv, yv)
            history.append(
                {"epoch": len(history), "loss": float(np.mean(epoch_losses)), "val_accuracy": val_acc,
                 "density": state.masks.density()}
            )
            epoch_losses = []
    bar.close()
    state.masks.apply(state.model)
    return state.model, state.masks, history, pd.DataFrame(rows)


def _candidates(
    cfg, c, recipe, state, ratio, update, grads, batches, x, y, xv, yv, slices, step, total
) -> tuple[_State, list[dict[str, Any]], int]:
    """Make N candidates, probe, test and select one; returns the winner, the table rows, probe steps."""
    seed = int(cfg.seed)
    probe_batches = [next(batches) for _ in range(c.probe_steps)]
    cands: list[_State] = []
    acc = np.full(c.n_candidates, np.nan)
    risk = np.full(c.n_candidates, np.nan)
    status = ["ok"] * c.n_candidates
    for i in range(c.n_candidates):
        strat = c.strategies[i % len(c.strategies)]
        cand = state.fork(recipe)
        sparse.prune_and_grow(
            cand.model, cand.masks, ratio, strat.prune, strat.grow,
            generator=generator(seed, "update", update, "candidate", i),
            grads=grads, optimizer=cand.optimizer,
        )
        try:
            for j, idx in enumerate(probe_batches):
                set_lr(cand.optimizer, recipe, step + j, total)
                _masked_step(cand, x[idx], y[idx], keep_grads=False)
            _, acc[i] = evaluate(cand.model, xv, yv)
            risk[i] = loss_attack_risk(cand.model, slices)
        except NonFiniteLossError:
            status[i] = "rejected: non-finite loss"
        cands.append(cand)
    score = select_weighted(acc, risk, c.selection.lam)
    if not np.isfinite(score).any():
        raise NonFiniteLossError(
            f"all {c.n_candidates} candidates at mask update {update} were rejected "
            "(non-finite loss or risk); lower train.lr"
        )
    winner = int(np.argmax(score))
    rows = [
        {"update": update, "step": step, "candidate": i, "prune": c.strategies[i % len(c.strategies)].prune,
         "grow": c.strategies[i % len(c.strategies)].grow, "regrowth_ratio": ratio,
         "accuracy": acc[i], "risk": risk[i], "score": score[i], "status": status[i], "chosen": i == winner}
        for i in range(c.n_candidates)
    ]
    return cands[winner], rows, c.probe_steps
