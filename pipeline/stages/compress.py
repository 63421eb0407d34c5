"""Stage 3 — compress: dynamic sparse training with SafeCompress's test-driven candidate selection.

Follows Zhu et al. (TSE 2024 / ASE 2022). At every mask update the SafeCompress
loop (1) trains the simulated attacker(s) against the current model on known
members vs reference non-members (Nasr et al. CCS'18 protocol), (2) makes N
candidates from the same weights, each with its own prune/grow strategy and
regrow seed, (3) trains each for a short probe (`probe_steps`; batched across
candidates), (4) runs the performance test (validation accuracy) and the safety
test (the attacker's AUC on a held-out slice of members vs non-members) and
(5) continues from the candidate chosen by the selection rule
(`pipeline.selection`). Every candidate's numbers are recorded per update in
`candidates.csv`.

Cost (issue 6: at most ~1.5x plain DST at equal epochs): the N candidates are
allocated once and overwritten per update; for MLPs they live in one grouped
tensor per layer, and a sparse model's probe and tests touch only the active
weights (block-diagonal CSR over the candidates); candidates sharing a prune
criterion share its ranking (`sparse.prune_and_grow_many`), and the black-box
attacker trains without autograd (`attacks.nn`). `benchmarks/bench_compress.py`
measures the ratio.

Baselines run through the same stage and tracking: `dense` (the teacher),
`oneshot` (magnitude prune the teacher + fine-tune), `gmp` (gradual magnitude
pruning, Zhu & Gupta 2017), `dst` (SET/RigL, one candidate, no safety test),
`dst_adv` (DST + adversarial regularization) and `dpsgd` (Opacus DP-SGD).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

import sparse
from attacks.inputs import AttackInputs
from attacks.metrics import roc_auc
from attacks.nn import NNBlackBoxAttack, NNWhiteBoxAttack, train_attack_model
from attacks.signals import Signals, compute_signals
from pipeline import interrupt, tracking
from pipeline.adversarial import Adversary, last_layer_inputs
from pipeline.batched import GroupedMLP, can_batch
from pipeline.cache import cache_key
from pipeline.config import CompressConfig, TrainConfig, to_schema, validate_compress
from pipeline.context import (
    DataBundle,
    build_model,
    data_spec,
    get_cache,
    load_data,
    model_spec,
    train_recipe,
)
from pipeline.progress import Progress, warn_once
from pipeline.seeds import derive_seed, generator
from pipeline.selection import (
    CandidateTests,
    accuracy_standard_error,
    auc_standard_error,
    resolution,
    select,
)
from pipeline.stages import teacher as teacher_stage
from pipeline.training import (
    DivergenceCheck,
    NonFiniteLossError,
    batch_indices,
    chance_accuracy,
    evaluate,
    make_optimizer,
    model_device,
    set_lr,
    steps_per_epoch,
)

log = logging.getLogger(__name__)

VERSION = 2
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


def key(cfg: DictConfig, data_key: str, teacher_key: str) -> str:
    """The compressed model's cache key: its spec and the keys of the data and the teacher."""
    return cache_key("compress", VERSION, spec(cfg), {"data": data_key, "teacher": teacher_key})


def run(cfg: DictConfig, teacher: teacher_stage.TeacherResult | None = None) -> CompressResult:
    c = compress_config(cfg)
    data = load_data(cfg)
    teacher = teacher or teacher_stage.run(cfg)
    the_spec = spec(cfg)
    k = key(cfg, data.key, teacher.key)

    def build(out: Path) -> None:
        model, masks, history, table = METHODS[c.method](cfg, c, data, teacher)
        size = sparse.save_export(model, out / EXPORT_FILE, masks=masks)
        metrics = {
            **_final_metrics(model, data),
            "density": masks.density() if masks is not None else 1.0,
            "model_size_bytes": float(size),
            "dense_size_bytes": float(sparse.dense_size_bytes(model)),
            "n_updates": float(table["update"].nunique()) if len(table) else 0.0,
        }
        if len(table) and "chosen" in table:
            chosen = table[table["chosen"]]
            for strategy, count in chosen["strategy"].value_counts().items():
                metrics[f"wins_{strategy}"] = float(count)
        table.to_csv(out / "candidates.csv", index=False)
        (out / "metrics.json").write_text(json.dumps({"metrics": metrics, "history": history}, indent=1))

    t0 = time.perf_counter()
    entry = get_cache(cfg).get_or_create(
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


def _log_tracking(result: CompressResult, history: list[dict[str, float]], table: pd.DataFrame | None) -> None:
    if not tracking.active():
        return
    for h in history:
        tracking.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=int(h["epoch"]), prefix="compress_")
    if table is not None:
        if "accuracy" in table and table["accuracy"].notna().any():
            for (u, i), row in table.set_index(["update", "candidate"]).iterrows():
                tracking.log_metrics(
                    {f"candidate_{i}_accuracy": row["accuracy"], f"candidate_{i}_risk": row["risk"],
                     f"candidate_{i}_score": row["score"]},
                    step=int(u),
                )
            for _, row in table[table["chosen"]].iterrows():
                tracking.log_metrics({"chosen_candidate": row["candidate"]}, step=int(row["update"]))
        tracking.log_artifact(result.candidates_path)
    tracking.log_metrics({k: v for k, v in result.metrics.items() if k.startswith(("wins_", "safety_"))})


# ----------------------------------------------------------------------------- state and steps


@dataclass
class _State:
    """One trajectory: model, its optimizer and its masks (None: dense)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    masks: sparse.MaskSet | None

    def fork(self, recipe: TrainConfig) -> _State:
        model = copy.deepcopy(self.model)
        optimizer = make_optimizer(model.parameters(), recipe)
        # deep copy: load_state_dict keeps the very tensors it is given, and SGD/Adam update
        # them in place, so a shallow copy would let candidates share momentum buffers
        optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        return _State(model, optimizer, self.masks.clone() if self.masks is not None else None)

    @torch.no_grad()
    def copy_from(self, src: _State) -> None:
        """Make this state equal to `src` (same architecture and optimizer) by copying in place.

        Tensors are overwritten where they are, so a parameter or optimizer-state tensor that is a
        view of a grouped tensor (`_GroupedCandidates`) stays one.
        """
        for dst_t, src_t in zip(self.model.parameters(), src.model.parameters(), strict=True):
            dst_t.copy_(src_t)
        for dst_t, src_t in zip(self.model.buffers(), src.model.buffers(), strict=True):
            dst_t.copy_(src_t)
        if self.masks is not None and src.masks is not None:
            for name, m in src.masks.masks.items():
                self.masks.masks[name].copy_(m)
                self.masks.fired[name].copy_(src.masks.fired[name])
        for dst_p, src_p in zip(self.model.parameters(), src.model.parameters(), strict=True):
            src_state = src.optimizer.state.get(src_p)
            if not src_state:
                self.optimizer.state.pop(dst_p, None)
                continue
            dst_state = self.optimizer.state[dst_p]
            for key in [k for k in dst_state if k not in src_state]:
                del dst_state[key]
            for key, v in src_state.items():
                old = dst_state.get(key)
                if torch.is_tensor(v) and torch.is_tensor(old) and old.shape == v.shape and old.dtype == v.dtype:
                    old.copy_(v)
                else:
                    dst_state[key] = v.clone() if torch.is_tensor(v) else copy.deepcopy(v)


@dataclass
class _Losses:
    """The classifier's training loss: CE, optional distillation and adversarial penalty."""

    teacher: nn.Module | None = None
    temperature: float = 4.0
    distill_weight: float = 0.0
    adversary: Adversary | None = None
    adversary_active: bool = False
    attacker_steps: int = 1
    warmup_steps: int = 0
    members: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, state: _State, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
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


def _batches(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    while True:
        yield from batch_indices(n, batch_size, g)


def _masked_step(
    state: _State, x: torch.Tensor, y: torch.Tensor, losses: _Losses, keep_grads: bool = False
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


# ----------------------------------------------------------------------------- safety test


class SafetyTest:
    """The simulated attacker(s) of one mask update and the risk they assign to a candidate.

    Known members and val non-members are each split in two: the attacker is
    fitted on the first parts against the current model, the risk is its AUC on
    the held-out parts against each candidate (equal numbers of members and
    non-members, so the AUC's standard error follows Hanley & McNeil).
    """

    def __init__(self, data: DataBundle, c: CompressConfig, seed: int):
        rng = np.random.default_rng(derive_seed(seed, "safety_slices"))
        known = rng.permutation(data.splits.known_members)
        val = rng.permutation(data.splits.val)
        n = min(len(known), len(val))
        n_hold = max(2, int(round(c.safety.holdout_fraction * n)))
        n_fit = max(2, n - n_hold)

        def part(idx):
            t = torch.from_numpy(np.sort(idx))
            return data.dataset.x[t], data.dataset.y[t]

        self.fit_m, self.fit_n = part(known[n_hold : n_hold + n_fit]), part(val[n_hold : n_hold + n_fit])
        self.hold_m, self.hold_n = part(known[:n_hold]), part(val[:n_hold])
        self.n_hold = n_hold
        self.c = c
        self.seed = seed
        members = {"mmia": c.safety.mmia_members}.get(c.variant, [c.variant])
        self.members = list(members)
        self.attackers: dict[str, Any] = {}

    @property
    def needs_grads(self) -> bool:
        return "wmia" in self.members

    def fit(self, model: nn.Module, update: int) -> None:
        """Train the NN attacker(s) against the current model (metric attacks need no fitting).

        The first update trains each attacker from scratch for `attacker_epochs`; later
        updates warm-start it and train `attacker_refresh_epochs` more against the
        current model (the model moves little between two mask updates).
        """
        for name in self.members:
            if name == "metric":
                continue
            wg = name == "wmia"
            m = compute_signals(model, *self.fit_m, with_grads=wg)
            n = compute_signals(model, *self.fit_n, with_grads=wg)
            if name in self.attackers and self.c.safety.attacker_refresh_epochs > 0:
                a = self.attackers[name]
                train_attack_model(
                    a.model_, a.tensors(m), a.tensors(n), epochs=self.c.safety.attacker_refresh_epochs,
                    lr=self.c.safety.attacker_lr, batch_size=a.batch_size, weight_decay=a.weight_decay,
                    generator=torch.Generator().manual_seed(derive_seed(self.seed, "attacker", name, update) % (2**31)),
                )
                continue
            cls = NNWhiteBoxAttack if name == "wmia" else NNBlackBoxAttack
            attack = cls(
                epochs=self.c.safety.attacker_epochs,
                lr=self.c.safety.attacker_lr,
                width_scale=self.c.safety.width_scale,
                batch_size=128,
                seed=derive_seed(self.seed, "attacker", name, update) % (2**31),
            )
            self.attackers[name] = attack.fit(AttackInputs(target=m, known_members=m, known_nonmembers=n))

    def risk(self, model: nn.Module) -> float:
        """The attackers' AUC on the held-out slice (max or mean over MMIA members)."""
        wg = self.needs_grads
        m = compute_signals(model, *self.hold_m, with_grads=wg)
        n = compute_signals(model, *self.hold_n, with_grads=wg)
        return float(self._risks([m], [n])[0])

    @property
    def holdout_x(self) -> torch.Tensor:
        """Held-out members then non-members, the inputs `risks_from_logits` expects logits of."""
        return torch.cat([self.hold_m[0], self.hold_n[0]])

    def risks_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        """`risk` of K models from their logits on `holdout_x`, (K, 2 n_hold, C) -> (K,).

        Needs no gradient signals (any variant but wmia/mmia with wmia).
        """
        if self.needs_grads:
            raise ValueError("the white-box attacker needs last-layer gradients; use risk(model)")
        n_m = len(self.hold_m[1])
        ym, yn = self.hold_m[1].numpy().astype(np.int64), self.hold_n[1].numpy().astype(np.int64)
        lg = logits.float().numpy()
        return self._risks([Signals(z[:n_m], ym) for z in lg], [Signals(z[n_m:], yn) for z in lg])

    def _risks(self, ms: list[Signals], ns: list[Signals]) -> np.ndarray:
        """AUC per model k of members `ms[k]` vs non-members `ns[k]` (NaN on non-finite scores).

        The NN attackers score all K models in one forward pass (rows are independent).
        """
        n_k = len(ms)
        labels = np.r_[np.ones(len(ms[0]), int), np.zeros(len(ns[0]), int)]
        aucs = np.full((len(self.members), n_k), np.nan)
        for j, name in enumerate(self.members):
            if name == "metric":
                scores = [np.r_[-m.loss, -n.loss] for m, n in zip(ms, ns)]
            else:
                parts = [s for m, n in zip(ms, ns) for s in (m, n)]
                every = self.attackers[name].score_signals(_concat_signals(parts))
                scores = np.split(every, np.cumsum([len(m) + len(n) for m, n in zip(ms, ns)])[:-1])
            for k, sc in enumerate(scores):
                if np.isfinite(sc).all():
                    aucs[j, k] = roc_auc(sc, labels)
        bad = np.isnan(aucs).any(0)
        out = aucs.max(0) if self.c.safety.mmia_combine == "max" else aucs.mean(0)
        return np.where(bad, np.nan, out)


def _concat_signals(parts: list[Signals]) -> Signals:
    grads = [p.grads for p in parts]
    return Signals(
        logits=np.concatenate([p.logits for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        grads=np.concatenate(grads) if all(g is not None for g in grads) else None,
    )


# ----------------------------------------------------------------------------- methods


def _dense(cfg, c, data, teacher):
    return teacher_stage.load(cfg, teacher), None, [], pd.DataFrame()


def _strategy_name(prune: str, grow: str) -> str:
    return f"{prune}/{grow}"


def _initial_state(cfg, c: CompressConfig, data: DataBundle, teacher, recipe, d0: float) -> _State:
    seed = int(cfg.seed)
    if c.init == "teacher" or c.method in ("oneshot", "gmp"):
        model = teacher_stage.load(cfg, teacher)
        masks = sparse.magnitude_masks(model, d0, scope="layer") if d0 < 1.0 else _full_masks(model)
    else:
        model = build_model(cfg, data, "compress")
        masks = sparse.random_masks(model, d0, c.init, generator(seed, "compress", "mask"))
        rescale_to_sparse_fan_in(model, masks)
    masks.apply(model)
    return _State(model, make_optimizer(model.parameters(), recipe), masks)


@torch.no_grad()
def rescale_to_sparse_fan_in(model: nn.Module, masks: sparse.MaskSet) -> None:
    """Scale each layer's kept initial weights by 1/sqrt(layer density).

    A dense init drawn for fan-in n leaves a layer at density d with effective
    fan-in d·n, shrinking activations by sqrt(d) per layer; without normalization
    layers a 5%-dense MLP then starts near a constant output and trains slowly.
    Rescaling restores the dense init's variance (sparsity-aware init, Evci et
    al., "Gradient Flow in Sparse Neural Networks", AAAI 2022).
    """
    params = dict(model.named_parameters())
    for name, mask in masks.masks.items():
        d = float(mask.float().mean())
        if d > 0:
            params[name].mul_(1.0 / math.sqrt(d))


def _full_masks(model: nn.Module) -> sparse.MaskSet:
    params = dict(model.named_parameters())
    return sparse.MaskSet({n: torch.ones_like(params[n], dtype=torch.bool) for n in sparse.MaskSet.prunable_names(model)})


def _train_loop(cfg, c: CompressConfig, data: DataBundle, teacher):
    """The sparse training loop shared by oneshot, gmp, dst, dst_adv and safecompress."""
    seed = int(cfg.seed)
    recipe = recipe_for(cfg, c)
    x, y = data.part("train")
    xv, yv = data.part("val")
    ds = c.density_schedule
    if c.method == "oneshot":
        d0, schedule_kind = c.density, "constant"
    elif c.method == "gmp":
        d0, schedule_kind = ds.start, ds.kind
    else:
        d0, schedule_kind = sparse.density_at(ds.kind, 0.0, ds.start, c.density, ds.begin, ds.end), ds.kind
    state = _initial_state(cfg, c, data, teacher, recipe, d0)
    spe = steps_per_epoch(len(y), recipe.batch_size)
    total = recipe.epochs * spe
    last_update_step = int(c.stop_fraction * total)
    batches = _batches(len(y), recipe.batch_size, generator(seed, "compress", "batches"))
    regrow = c.method in ("dst", "dst_adv", "safecompress")
    use_candidates = c.method == "safecompress" and c.n_candidates > 1
    safety = SafetyTest(data, c, seed) if use_candidates else None
    needs_grads = any(s.grow in ("gradient",) or s.prune == "taylor" for s in c.strategies)
    losses = _Losses()
    if c.distill.enabled:
        losses.teacher = teacher_stage.load(cfg, teacher)
        losses.temperature, losses.distill_weight = c.distill.temperature, c.distill.weight
    use_adv = c.adversarial.enabled or c.method == "dst_adv"
    if use_adv:
        feats = state.model.features(x[:1].to(model_device(state.model))).shape[1]
        rng = np.random.default_rng(derive_seed(seed, "adversary_reference"))
        ref = torch.from_numpy(np.sort(rng.permutation(data.splits.val)[: max(2, len(data.splits.val) // 2)]))
        losses.adversary = Adversary(
            c.adversarial.kind, data.dataset.n_classes, feats, data.dataset.x[ref], data.dataset.y[ref],
            lam=c.adversarial.lam, lr=c.adversarial.lr, width_scale=c.adversarial.width_scale,
            seed=derive_seed(seed, "adversary") % (2**31),
        )
        losses.attacker_steps = c.adversarial.attacker_steps
        losses.warmup_steps = c.adversarial.attacker_warmup_steps
        losses.members = (x, y)
    warmup_step = int(c.adversarial.warmup_fraction * total)
    batched_probes = bool(cfg.runtime.get("batched_probes", True))
    aug_gen = generator(seed, "compress", "augment")  # probes train on un-augmented batches
    rows: list[dict[str, Any]] = []
    history: list[dict[str, float]] = []
    step, update, epoch_losses = 0, 0, []
    last_grads = None
    pool: _CandidatePool | None = None  # allocated at the first mask update
    start_acc = evaluate(state.model, xv, yv)[1] if (c.init == "teacher" or c.method in ("oneshot", "gmp")) else None
    diverged = DivergenceCheck(data.dataset.n_classes, f"compress[{c.method}]", chance_accuracy(yv, data.dataset.n_classes), start_acc)
    bar = Progress(total, f"compress[{c.method}]", "step", bool(cfg.runtime.progress), leave=False)
    while step < total:
        interrupt.check()
        idx = next(batches)
        set_lr(state.optimizer, recipe, step, total)
        losses.adversary_active = use_adv and step >= warmup_step
        is_update = (
            c.method != "oneshot"
            and (step + 1) % c.update_every == 0
            and (step + 1) <= last_update_step
            and (step + 1) < total
        )
        xb = data.dataset.augment(x[idx], aug_gen) if data.dataset.augment is not None else x[idx]
        loss, grads = _masked_step(state, xb, y[idx], losses, keep_grads=needs_grads and is_update)
        last_grads = grads if grads is not None else last_grads
        diverged.step(loss)
        epoch_losses.append(loss)
        step += 1
        bar.update(1)
        if is_update:
            update += 1
            progress = step / total
            assert state.masks is not None
            target = sparse.density_at(schedule_kind, progress, ds.start, c.density, ds.begin, ds.end)
            if abs(target - state.masks.density()) * state.masks.n_total() >= 1:
                sparse.resize(
                    state.model, state.masks, target, prune="magnitude", grow="random",
                    generator=generator(seed, "resize", update),
                )
                state.masks.apply_to_optimizer(state.optimizer, state.model)
            if not regrow:
                continue
            ratio = sparse.regrowth_ratio_at(
                c.regrowth.kind, min(step / max(last_update_step, 1), 1.0), c.regrowth.start, c.regrowth.end
            )
            if use_candidates:
                assert safety is not None
                if pool is None:
                    pool = _CandidatePool(state, c.n_candidates, recipe, batched_probes)
                new_rows, used = _candidates(
                    cfg, c, recipe, state, ratio, update, last_grads, batches, x, y, xv, yv, safety, step, total,
                    losses, pool,
                )
                rows.extend(new_rows)
                step += used
                bar.update(used)
            else:
                strat = c.strategies[0]
                sparse.prune_and_grow(
                    state.model, state.masks, ratio, strat.prune, strat.grow,
                    generator=generator(seed, "update", update, "candidate", 0),
                    grads=last_grads, optimizer=state.optimizer,
                )
                rows.append(
                    {"update": update, "step": step, "candidate": 0, "strategy": _strategy_name(strat.prune, strat.grow),
                     "regrowth_ratio": ratio, "accuracy": math.nan, "risk": math.nan, "score": math.nan,
                     "status": "ok", "chosen": True, "reason": "single candidate (no safety test)"}
                )
        if step % spe == 0 or step >= total:
            _, val_acc = evaluate(state.model, xv, yv)
            assert state.masks is not None
            history.append(
                {"epoch": len(history), "loss": float(np.mean(epoch_losses)), "val_accuracy": val_acc,
                 "density": state.masks.density()}
            )
            diverged.epoch(len(history) - 1, history[-1]["loss"], val_acc)
            epoch_losses = []
    bar.close()
    assert state.masks is not None
    if abs(state.masks.density() - c.density) * state.masks.n_total() >= 1:
        # a schedule whose window ends after the last mask update: finish it with a magnitude prune
        sparse.resize(state.model, state.masks, c.density, prune="magnitude", grow="random",
                      generator=generator(seed, "resize", "final"))
    state.masks.apply(state.model)
    return state.model, state.masks, history, pd.DataFrame(rows)


def _candidates(
    cfg, c: CompressConfig, recipe, state: _State, ratio, update, grads, batches, x, y, xv, yv,
    safety: SafetyTest, step, total, losses: _Losses, pool: _CandidatePool,
) -> tuple[list[dict[str, Any]], int]:
    """Make N candidates, probe, test and select one; `state` becomes the winner (in place).

    Returns the table rows and the number of probe steps taken.
    """
    seed = int(cfg.seed)
    safety.fit(state.model, update)
    probe_batches = [next(batches) for _ in range(c.probe_steps)]
    cands = pool.fork(state)
    criteria = [(s.prune, s.grow) for s in (c.strategies[i % len(c.strategies)] for i in range(len(cands)))]
    strategies = [_strategy_name(*crit) for crit in criteria]
    # equal to prune_and_grow on each candidate; candidates sharing a prune criterion share its ranking
    sparse.prune_and_grow_many(
        [cand.model for cand in cands], [cand.masks for cand in cands], ratio, criteria,
        [generator(seed, "update", update, "candidate", i) for i in range(len(cands))],
        grads=grads, optimizers=[cand.optimizer for cand in cands],
    )
    status = ["ok"] * c.n_candidates
    plain_loss = losses.adversary is None or not losses.adversary_active
    if pool.grouped is not None and plain_loss and losses.teacher is None:
        ok = pool.grouped.probe(probe_batches, x, y, recipe, step, total)
        status = ["ok" if o else "rejected: non-finite loss" for o in ok]
    else:
        for i, cand in enumerate(cands):
            try:
                for j, idx in enumerate(probe_batches):
                    set_lr(cand.optimizer, recipe, step + j, total)
                    _masked_step(cand, x[idx], y[idx], losses)
            except NonFiniteLossError:
                status[i] = "rejected: non-finite loss"
    acc = np.full(c.n_candidates, np.nan)
    risk = np.full(c.n_candidates, np.nan)
    if pool.grouped is not None and not safety.needs_grads:
        # one grouped forward pass for every candidate's performance and safety test
        logits = pool.grouped.logits(torch.cat([xv, safety.holdout_x]))  # (K, n_val + 2 n_hold, C)
        acc[:] = (logits[:, : len(yv)].argmax(2) == yv).float().mean(1).numpy()
        risk[:] = safety.risks_from_logits(logits[:, len(yv) :])
    else:
        for i, cand in enumerate(cands):
            if status[i] == "ok":
                _, acc[i] = evaluate(cand.model, xv, yv)
                risk[i] = safety.risk(cand.model)
    for i in range(c.n_candidates):
        if status[i] != "ok":
            acc[i] = risk[i] = np.nan
        elif not (math.isfinite(acc[i]) and math.isfinite(risk[i])):
            status[i] = "rejected: non-finite test result"
    tests = CandidateTests(
        acc, risk,
        np.array([accuracy_standard_error(a, len(yv)) for a in acc]),
        np.array([auc_standard_error(r, safety.n_hold, safety.n_hold) for r in risk]),
    )
    if not tests.valid.any():
        raise NonFiniteLossError(
            f"all {c.n_candidates} candidates at mask update {update} were rejected "
            "(non-finite loss or test result); lower train.lr"
        )
    sel = c.selection
    choice = select(sel.rule, tests, lam=sel.lam, delta=sel.delta, noise_floor=sel.noise_floor, z=sel.z)
    rows = [
        {"update": update, "step": step, "candidate": i, "strategy": strategies[i], "regrowth_ratio": ratio,
         "accuracy": acc[i], "risk": risk[i], "accuracy_se": tests.accuracy_se[i], "risk_se": tests.risk_se[i],
         "score": choice.scores[i], "status": status[i], "chosen": i == choice.index,
         "reason": choice.reason if i == choice.index else ""}
        for i in range(c.n_candidates)
    ]
    state.copy_from(cands[choice.index])
    return rows, c.probe_steps


class _CandidatePool:
    """The N candidates of every mask update, allocated once and overwritten by each `fork`.

    A deep copy of model and optimizer per candidate per update cost about as much as the probe
    itself; `fork` copies the current state into the same tensors instead. With `batched` and an
    MLP trained by SGD/Adam, the candidates live in one `_GroupedCandidates` (weights and optimizer
    state are views of grouped tensors), so the batched probe trains them where they are.
    """

    def __init__(self, like: _State, n: int, recipe: TrainConfig, batched: bool):
        self.grouped: _GroupedCandidates | None = None
        if batched and _can_probe_batched([like], recipe):
            self.grouped = _GroupedCandidates(like, n, recipe)
            self.states = self.grouped.states
        else:
            self.states = [like.fork(recipe) for _ in range(n)]

    def fork(self, state: _State) -> list[_State]:
        if self.grouped is not None:
            return self.grouped.fork(state)
        for cand in self.states:
            cand.copy_from(state)
        return self.states


# ----------------------------------------------------------------------------- batched probes


def _can_probe_batched(cands: list[_State], recipe: TrainConfig) -> bool:
    return recipe.optimizer in ("sgd", "adam") and can_batch([c.model for c in cands])


class _GroupedCandidates:
    """K MLP candidates stored in one `GroupedMLP`: candidate k's layer i weight is a view of slot k.

    Each candidate is an ordinary `_State` (its own model, optimizer and masks, usable by
    `prune_and_grow`, `evaluate` or a sequential probe), but its Linear weights and biases, and the
    weight-shaped tensors of its optimizer state, are views of the grouped parameters and of the
    grouped optimizer's state. `probe` trains all K at once (summed loss, elementwise optimizer),
    which equals probing each alone up to floating-point rounding; a unit test checks it.
    """

    def __init__(self, like: _State, k: int, recipe: TrainConfig):
        models = [copy.deepcopy(like.model) for _ in range(k)]
        self.group = GroupedMLP(models)
        self.names = _linear_names(models[0])
        # (grouped param, its K candidate params, transposed?) per grouped param
        self.slots: list[tuple[nn.Parameter, list[nn.Parameter], bool]] = []
        per_model = []
        for k_i, model in enumerate(models):
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            views = []
            for i, lin in enumerate(linears):
                lin.weight = nn.Parameter(self.group.weights[i].detach()[k_i].t())  # (out, in) view
                lin.bias = nn.Parameter(self.group.biases[i].detach()[k_i])
                views.append((lin.weight, lin.bias))
            per_model.append(views)
        for i in range(len(self.names)):
            self.slots.append((self.group.weights[i], [v[i][0] for v in per_model], True))
            self.slots.append((self.group.biases[i], [v[i][1] for v in per_model], False))
        self.optimizer = _fused(make_optimizer(self.group.parameters(), recipe))
        self.sparse: _SparseProbe | None = None  # the last sparse probe, while the masks hold
        assert like.masks is not None, "grouped candidates are sparse"
        # masks and fired records: candidate k's are views of slot k of stacked (K, out, in) tensors
        self.mask_stacks = {n: torch.stack([m] * k) for n, m in like.masks.masks.items()}
        self.fired_stacks = {n: torch.stack([f] * k) for n, f in like.masks.fired.items()}
        self.states = []
        for k_i, m in enumerate(models):
            masks = like.masks.clone()
            masks.masks = {n: t[k_i] for n, t in self.mask_stacks.items()}
            masks.fired = {n: t[k_i] for n, t in self.fired_stacks.items()}
            self.states.append(_State(m, make_optimizer(m.parameters(), recipe), masks))

    @torch.no_grad()
    def fork(self, src: _State) -> list[_State]:
        """Every candidate := `src` (same MLP architecture), one broadcast copy per tensor."""
        assert src.masks is not None
        self.sparse = None  # its structure follows the masks, which change now
        linears = [m for m in src.model.modules() if isinstance(m, nn.Linear)]
        src_params = [p for lin in linears for p in (lin.weight, lin.bias)]  # the order of `slots`
        for (gp, params, transpose), sp in zip(self.slots, src_params, strict=True):
            gp.copy_(self._broadcast(sp, gp, transpose))
            src_state = src.optimizer.state.get(sp)
            cand_states = [st.optimizer.state[p] for st, p in zip(self.states, params)]
            gstate = self.optimizer.state[gp]
            for key in [key for key in gstate if not src_state or key not in src_state]:
                del gstate[key]
            for cst in cand_states:
                for key in [key for key in cst if not src_state or key not in src_state]:
                    del cst[key]
            for key, v in (src_state or {}).items():
                if torch.is_tensor(v) and v.shape == sp.shape and v.dim() > 0:
                    buf = gstate.get(key)
                    if not (torch.is_tensor(buf) and buf.shape == gp.shape):
                        buf = gstate[key] = torch.zeros_like(gp)
                    buf.copy_(self._broadcast(v, buf, transpose))
                    for k, cst in enumerate(cand_states):
                        old = cst.get(key)
                        if not (torch.is_tensor(old) and old.data_ptr() == self._slot(buf, k, transpose).data_ptr()):
                            cst[key] = self._slot(buf, k, transpose)
                else:
                    gstate[key] = v.clone() if torch.is_tensor(v) else v
                    for cst in cand_states:
                        cst[key] = v.clone() if torch.is_tensor(v) else v
        for n, stack in self.mask_stacks.items():
            stack.copy_(src.masks.masks[n].unsqueeze(0).expand_as(stack))
            self.fired_stacks[n].copy_(src.masks.fired[n].unsqueeze(0).expand_as(stack))
        return self.states

    @staticmethod
    def _broadcast(t: torch.Tensor, like: torch.Tensor, transpose: bool) -> torch.Tensor:
        return (t.t() if transpose else t).unsqueeze(0).expand_as(like)

    def _slot(self, gt: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
        return gt[k].t() if transpose else gt[k]

    @torch.no_grad()
    def _gather_optimizer_state(self) -> None:
        """Point the grouped optimizer's state at the candidates' (weight-shaped tensors shared)."""
        for gp, params, transpose in self.slots:
            states = [st.optimizer.state.get(p, {}) for st, p in zip(self.states, params)]
            if not states[0]:
                self.optimizer.state.pop(gp, None)
                continue
            gstate = self.optimizer.state[gp]
            for key, v in states[0].items():
                if torch.is_tensor(v) and v.dim() > 0:
                    buf = gstate.get(key)
                    if not (torch.is_tensor(buf) and buf.shape == gp.shape):
                        buf = gstate[key] = torch.zeros_like(gp)
                    for k, st in enumerate(states):
                        view = self._slot(buf, k, transpose)
                        if st[key].data_ptr() != view.data_ptr():
                            view.copy_(st[key])
                            st[key] = view
                else:  # scalars (Adam's step) are equal across candidates forked from one state
                    gstate[key] = v.clone() if torch.is_tensor(v) else v

    @torch.no_grad()
    def _scatter_optimizer_state(self) -> None:
        for gp, params, transpose in self.slots:
            gstate = self.optimizer.state.get(gp, {})
            for k, (st, p) in enumerate(zip(self.states, params)):
                cstate = st.optimizer.state[p]
                for key, v in gstate.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        view = self._slot(v, k, transpose)
                        old = cstate.get(key)
                        if not (torch.is_tensor(old) and old.data_ptr() == view.data_ptr()):
                            cstate[key] = view
                    else:
                        cstate[key] = v.clone() if torch.is_tensor(v) else v

    def probe(self, batches, x, y, recipe: TrainConfig, step: int, total: int) -> list[bool]:
        """Train every candidate on `batches`; returns which kept a finite loss.

        With a layer sparser than `_CSR_DENSITY` and a known activation, `_SparseProbe` trains
        the candidates' active weights only (CSR kernels, ~2x faster at 5% density); otherwise
        one grouped dense step trains all K. Both equal probing each candidate alone with
        `_masked_step`, up to float rounding.
        """
        act = _activation(self.states[0].model)
        dens = [float(self.mask_stacks[n][0].float().mean()) for n in self.names]
        if act is not False and min(dens) < _CSR_DENSITY:
            self.sparse = _SparseProbe(self, act)
            return self.sparse.run(batches, x, y, recipe, step, total)
        names, opt, grouped = self.names, self.optimizer, self.group
        masks = [self.mask_stacks[n].transpose(1, 2).float().contiguous() for n in names]  # (K, in, out)
        self._gather_optimizer_state()
        k_n = len(self.states)
        ok = torch.ones(k_n, dtype=torch.bool)
        for j, idx in enumerate(batches):
            set_lr(opt, recipe, step + j, total)
            opt.zero_grad(set_to_none=True)
            xb = x[idx].flatten(1).unsqueeze(0).expand(k_n, -1, -1)
            logits = grouped(xb)  # (K, b, C)
            per = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y[idx].repeat(k_n), reduction="none"
            ).view(k_n, -1).mean(1)
            ok &= torch.isfinite(per)
            torch.where(ok, per, torch.zeros_like(per)).sum().backward()
            for w, m in zip(grouped.weights, masks):
                w.grad.mul_(m)
            # no masking of weights and optimizer state after the step: inactive weights and
            # their state are exactly 0 when the probe starts (prune_and_grow, _masked_step), and
            # SGD/Adam map a zero gradient, zero weight and zero state to zero again
            opt.step()
        self._scatter_optimizer_state()
        return ok.tolist()

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every candidate's logits on x: (n, ...) -> (K, n, C).

        After a sparse probe, its block-diagonal CSR layers are reused (~3x faster than the
        dense product at 5% density; same logits up to float rounding).
        """
        if self.sparse is not None:
            return self.sparse.logits(x)
        return self.group(x.unsqueeze(0).expand(len(self.states), *x.shape))


_CSR_DENSITY = 0.15  # candidate layers sparser than this multiply as CSR (probe and tests)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """A CSR matrix from valid indices (built from a mask, so the invariant checks are skipped)."""
    with warnings.catch_warnings():  # torch calls CSR support "beta" on every construction
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _fused(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The same optimizer with the fused kernel (one pass per tensor; on CPU ~6x faster than the
    per-tensor loop for the grouped tensors), or the multi-tensor one where fusing is unsupported.

    Same update rule; results differ from the per-tensor loop only by float rounding.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    try:
        return type(optimizer)(params, **{**optimizer.defaults, "foreach": None, "fused": True})
    except (RuntimeError, TypeError, ValueError):
        for group in optimizer.param_groups:
            group["foreach"] = True
        return optimizer


def _activation(model: nn.Module) -> nn.Module | None | bool:
    """The MLP's hidden activation module, None without one, False when `_SparseProbe` lacks it."""
    acts = [m for m in model.modules() if type(m) in (nn.ReLU, nn.Tanh, nn.GELU)]
    others = [m for m in model.modules() if not isinstance(m, (nn.Linear, nn.Flatten, nn.Sequential))]
    if len(others) != len(acts) + 1:  # the model itself, then activations only
        return False
    return acts[0] if acts else None


class _SparseProbe:
    """The probe of `_GroupedCandidates` on active weights only, with a hand-written backward.

    Layer i of all K candidates is one block-diagonal (K out, K in) matrix whose parameters are
    the active entries (a vector in CSR order); activations are (K features, batch). Layers
    sparser than `_CSR_DENSITY` multiply as CSR, and their weight gradient is the product
    sampled at the active entries (`torch.sparse.sampled_addmm`), so nothing is computed for
    the ~95% inactive weights; denser layers multiply as batched dense blocks. The optimizer
    (same recipe, fused) steps the active entries, the biases and their state, gathered from
    and scattered back to the grouped tensors that the candidates' weights and state view.
    """

    def __init__(self, group: _GroupedCandidates, act: nn.Module | None):
        self.group, self.act = group, act
        self.k = len(group.states)
        self.layers: list[dict[str, Any]] = []
        for i, name in enumerate(group.names):
            gw = group.group.weights[i].detach()  # (K, in, out)
            gb = group.group.biases[i].detach()  # (K, out)
            masks = group.mask_stacks[name]  # (K, out, in)
            k, n_out, n_in = masks.shape
            kk, r, c = masks.nonzero().unbind(1)  # row-major: the CSR order of the block matrix
            rows, cols = kk * n_out + r, kk * n_in + c
            lay: dict[str, Any] = {
                "at": (kk * n_in + c) * n_out + r,  # the active entries of flat (K, in, out) tensors
                "kk": kk, "n_out": n_out, "n_in": n_in,
                "csr": kk.numel() < _CSR_DENSITY * masks.numel(),
                "v": nn.Parameter(gw.reshape(-1)[(kk * n_in + c) * n_out + r]),
                "b": nn.Parameter(gb.reshape(-1).clone()),  # (K out,)
            }
            if lay["csr"]:
                size = (k * n_out, k * n_in)
                lay["crow"] = _crow(rows, size[0])
                lay["col"] = cols
                lay["tperm"] = torch.argsort(cols * size[0] + rows)  # CSR order of the transpose
                lay["crow_t"] = _crow(cols, size[1])
                lay["col_t"] = rows[lay["tperm"]]
                lay["size"] = size
                lay["pattern"] = _csr(lay["crow"], cols, torch.zeros_like(lay["v"]), size)  # sampled dL/dW
            else:
                lay["flat"] = (kk * n_out + r) * n_in + c  # into a dense (K, out, in) block stack
            self.layers.append(lay)
        self.params = [p for lay in self.layers for p in (lay["v"], lay["b"])]

    def _sources(self):
        """Per parameter: its grouped tensor and where its entries sit there (None: everywhere)."""
        for i, lay in enumerate(self.layers):
            yield self.group.group.weights[i], lay["at"]
            yield self.group.group.biases[i], None

    def run(self, batches, x, y, recipe: TrainConfig, step: int, total: int) -> list[bool]:
        group = self.group
        group._gather_optimizer_state()  # the grouped optimizer's state holds every candidate's
        opt = _fused(make_optimizer(self.params, recipe))
        for p, (gp, at) in zip(self.params, self._sources()):
            gstate = group.optimizer.state.get(gp)
            if gstate:
                opt.state[p] = {
                    key: ((v.reshape(-1)[at] if at is not None else v.reshape(-1).clone())
                          if torch.is_tensor(v) and v.shape == gp.shape
                          else v.clone() if torch.is_tensor(v) else v)
                    for key, v in gstate.items()
                }
        ok = torch.ones(self.k, dtype=torch.bool)
        for j, idx in enumerate(batches):
            set_lr(opt, recipe, step + j, total)
            a0 = x[idx].flatten(1).t().repeat(self.k, 1)  # (K in, b)
            ok &= self._step(a0, y[idx])
            if not bool(ok.all()):  # rejected candidates get zero gradients (their loss is dropped)
                for lay in self.layers:
                    lay["v"].grad.masked_fill_(~ok[lay["kk"]], 0)
                    lay["b"].grad.view(self.k, -1).masked_fill_(~ok.unsqueeze(1), 0)
            opt.step()
        with torch.no_grad():
            for p, (gp, at) in zip(self.params, self._sources()):
                self._put(gp, at, p)
                gstate = group.optimizer.state[gp]
                for key, v in opt.state.get(p, {}).items():
                    if torch.is_tensor(v) and v.dim() > 0 and v.shape == p.shape:
                        if not (torch.is_tensor(gstate.get(key)) and gstate[key].shape == gp.shape):
                            gstate[key] = torch.zeros_like(gp)  # inactive entries stay 0
                        self._put(gstate[key], at, v)
                    else:
                        gstate[key] = v.clone() if torch.is_tensor(v) else v
        group._scatter_optimizer_state()
        return ok.tolist()

    @staticmethod
    def _put(dst: torch.Tensor, at: torch.Tensor | None, v: torch.Tensor) -> None:
        """Write `v` into the contiguous grouped tensor `dst` at flat positions `at` (None: all)."""
        if at is None:
            dst.view(-1).copy_(v)
        else:
            dst.view(-1).index_copy_(0, at, v.detach())

    def _weight(self, lay: dict[str, Any]) -> torch.Tensor:
        """Layer weights: the block-diagonal CSR matrix, or dense (K, out, in) blocks."""
        v = lay["v"].detach()
        if lay["csr"]:
            return _csr(lay["crow"], lay["col"], v, lay["size"])
        w = torch.zeros(self.k * lay["n_out"] * lay["n_in"], dtype=v.dtype, device=v.device)
        w[lay["flat"]] = v
        return w.view(self.k, lay["n_out"], lay["n_in"])

    def _forward(self, a0: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(K in, b) inputs -> layer inputs, pre-activations (K out, b) and weights."""
        k, b = self.k, a0.shape[1]
        acts, pre, ws = [a0], [], []
        last = len(self.layers) - 1
        for i, lay in enumerate(self.layers):
            w = self._weight(lay)
            h = acts[-1]
            bias = lay["b"].detach()
            if lay["csr"]:  # addmm: torch.sparse.mm takes a ~6x slower kernel for a few hundred columns
                z = torch.addmm(bias.unsqueeze(1), w, h)  # (K out, b)
            else:
                z = torch.baddbmm(bias.view(k, -1, 1), w, h.view(k, lay["n_in"], b)).view(-1, b)
            ws.append(w)
            pre.append(z)
            if i < last:
                acts.append(self._act(z))
        return acts, pre, ws

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every candidate's logits on x with the grouped weights: (n, ...) -> (K, n, C)."""
        for i, lay in enumerate(self.layers):  # the grouped tensors are the truth
            lay["v"].copy_(self.group.group.weights[i].reshape(-1)[lay["at"]])
            lay["b"].copy_(self.group.group.biases[i].reshape(-1))
        out = []
        for i in range(0, len(x), 128):  # chunks keep the (K features, rows) activations in cache
            xb = x[i : i + 128]
            _, pre, _ = self._forward(xb.flatten(1).t().repeat(self.k, 1))
            out.append(pre[-1].view(self.k, -1, len(xb)).transpose(1, 2))
        return torch.cat(out, 1)

    @torch.no_grad()
    def _step(self, a0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of all candidates; sets the parameters' .grad. Returns (K,) finite."""
        k, b = self.k, a0.shape[1]
        acts, pre, ws = self._forward(a0)
        last = len(self.layers) - 1
        logits = pre[-1].view(k, -1, b)  # (K, C, b); the mean cross-entropy is finite iff they are
        finite = torch.isfinite(logits).flatten(1).all(1)
        dz = torch.softmax(logits, 1)  # d(mean CE)/dlogits = (softmax - one-hot) / b
        dz[:, y, torch.arange(b, device=y.device)] -= 1.0
        dz = dz.div_(b).view(-1, b)
        for i in range(last, -1, -1):
            lay, a = self.layers[i], acts[i]
            lay["b"].grad = dz.sum(1)
            n_out, n_in = lay["n_out"], lay["n_in"]
            if lay["csr"]:  # dL/dW at the active entries only
                lay["v"].grad = torch.sparse.sampled_addmm(lay["pattern"], dz, a.t(), beta=0.0).values()
            else:
                g = torch.bmm(dz.view(k, n_out, b), a.view(k, n_in, b).transpose(1, 2))  # (K, out, in)
                lay["v"].grad = g.reshape(-1)[lay["flat"]]
            if i > 0:
                if lay["csr"]:
                    wt = _csr(lay["crow_t"], lay["col_t"], lay["v"].detach()[lay["tperm"]], lay["size"][::-1])
                    da = torch.sparse.mm(wt, dz)
                else:
                    da = torch.bmm(ws[i].transpose(1, 2), dz.view(k, n_out, b)).view(-1, b)
                dz = self._act_backward(da, pre[i - 1], acts[i])
        return finite

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        if self.act is None:
            return z
        if isinstance(self.act, nn.GELU):
            return F.gelu(z, approximate=self.act.approximate)
        return torch.relu(z) if isinstance(self.act, nn.ReLU) else torch.tanh(z)

    def _act_backward(self, grad: torch.Tensor, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. z of out = act(z), as autograd computes it."""
        if self.act is None:
            return grad
        if isinstance(self.act, nn.ReLU):
            return torch.ops.aten.threshold_backward(grad, out, 0.0)
        if isinstance(self.act, nn.Tanh):
            return torch.ops.aten.tanh_backward(grad, out)
        return torch.ops.aten.gelu_backward(grad, z, approximate=self.act.approximate)


def _crow(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row pointers of sorted row indices."""
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    return crow


def _linear_names(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _probe_grouped(cands: list[_State], batches, x, y, recipe: TrainConfig, step: int, total: int) -> list[bool]:
    """Probe independent candidates at once: copy them into a `_GroupedCandidates`, probe, copy back."""
    group = _GroupedCandidates(cands[0], len(cands), recipe)
    for dst, src in zip(group.states, cands):
        dst.copy_from(src)
    ok = group.probe(batches, x, y, recipe, step, total)
    for dst, src in zip(cands, group.states):
        dst.copy_from(src)
    return ok


# ----------------------------------------------------------------------------- DP-SGD


def _dpsgd(cfg, c: CompressConfig, data: DataBundle, teacher):
    """DP-SGD (Abadi et al. 2016) with Opacus at `compress.dp.epsilon`; optionally sparse (fixed ERK mask)."""
    try:
        from opacus import PrivacyEngine
    except ImportError as err:  # pragma: no cover
        raise ImportError("compress=dpsgd needs opacus: pip install 'safecompress[dp]'") from err
    seed = int(cfg.seed)
    recipe = recipe_for(cfg, c)
    x, y = data.part("train")
    model = build_model(cfg, data, "compress")
    masks = sparse.random_masks(model, c.density, "erk", generator(seed, "compress", "mask")) if c.dp.sparse else None
    if masks is not None:
        masks.apply(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=c.dp.lr, momentum=0.9)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=c.dp.batch_size, shuffle=True,
        generator=generator(seed, "dpsgd", "batches"),
    )
    delta = c.dp.delta if c.dp.delta is not None else 1.0 / len(y)
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "dpsgd", "noise") % (2**31))
        dp_model, dp_opt, dp_loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=c.dp.epsilon,
            target_delta=delta, epochs=recipe.epochs, max_grad_norm=c.dp.max_grad_norm,
        )
        history = []
        device = model_device(model)
        diverged = DivergenceCheck(data.dataset.n_classes, "DP-SGD")
        for epoch in range(recipe.epochs):
            dp_model.train()
            ls = []
            for xb, yb in dp_loader:
                interrupt.check()
                if len(yb) == 0:
                    continue
                xb, yb = xb.to(device), yb.to(device)
                dp_opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(dp_model(xb), yb)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"DP-SGD loss is {loss.item()}; lower train.lr")
                loss.backward()
                dp_opt.step()
                if masks is not None:
                    masks.apply(model)  # post-processing: keeps the DP guarantee
                ls.append(loss.item())
                diverged.step(ls[-1])
            _, val_acc = evaluate(model, *data.part("val"))
            if ls:
                diverged.epoch(epoch, float(np.mean(ls)))
            history.append({"epoch": epoch, "loss": float(np.mean(ls)) if ls else math.nan, "val_accuracy": val_acc,
                            "epsilon": float(engine.get_epsilon(delta))})
    clean = build_model(cfg, data, "compress")
    clean.load_state_dict({k.removeprefix("_module."): v for k, v in model.state_dict().items()})
    return clean, masks, history, pd.DataFrame()


METHODS = {
    "dense": _dense,
    "oneshot": _train_loop,
    "gmp": _train_loop,
    "dst": _train_loop,
    "dst_adv": _train_loop,
    "safecompress": _train_loop,
    "dpsgd": _dpsgd,
}
