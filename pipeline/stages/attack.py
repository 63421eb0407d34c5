"""Stage 4 — attack: audit the compressed model with the configured membership-inference attacks.

Evaluations share the same attacks and reference models:
- `select`: search members vs half of `val` (`val_eval`). Its numbers are the
  search objectives (`attack_auc`, `attack_tpr_*`): the search never selects on
  test, nor on the reported audit's members (`search_members` and `audit_members`
  are disjoint parts of `train`, `training.data.make_splits`).
- `audit`: audit members vs `test` non-members, the reported audit (`audit_*`).
- `canary` (when `dataset.canaries > 0`): planted mislabeled examples, each a
  member with probability 1/2 — the privacy of the most vulnerable points
  (Aerni, Zhang & Tramèr 2024), reported as `canary_*`.
Audit and search members are members of `train` no attacker was fitted on. Trained
attacks (NN black-/white-box) know some of the in-loop attacker's members
(`known_members`) and the other half of `val` (`val_ref`) as non-members (Nasr
et al. CCS'18 protocol). Reference (shadow) models trained on `population` only
never saw an audit point, so LiRA runs offline; with `shadows.pool=with_candidates` every
audit point is IN for half the references (`ShadowsResult.reference_in`), which online LiRA
needs. Shokri's attack reads the shadows on their own population points, RMIA compares
against population points (and calibrates its offline a on them). On image data sets with a
training augmentation, attacks that want augmented queries (LiRA) also get every model on
transformed audit points (`attack.query_views`: the mirror, or the mirror and shifts;
`attacks.views`); tabular and text sets have none.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

import attacks
from attacks import registry as attack_registry
from attacks.signals import compute_signals
from attacks.views import query_views
from pipeline.analysis import audit_scores
from pipeline.cache import cache_key
from pipeline.compress_jobs import load_compressed
from pipeline.config import AttackConfig, to_schema
from pipeline.context import DataBundle, RunContext, load_model, plain
from pipeline.results import AttackResult, CompressResult, ShadowsResult
from pipeline.tracking import plumbing as tracking
from pipeline.validation import validate_attack
from training import progress
from training.seeds import derive_seed

log = logging.getLogger(__name__)

VERSION = 4  # 4: per-example scores table (scores.csv/.parquet); 3: select audits search members (issue 18)
METRIC_KEYS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "balanced_accuracy", "advantage")


def attack_config(cfg: DictConfig) -> AttackConfig:
    a = to_schema(AttackConfig, cfg.attack)
    validate_attack(a)
    return a


def _needs(a: AttackConfig) -> tuple[frozenset[str], bool]:
    """The inputs the audit's attacks require or want, and whether they need gradients (registry)."""
    return attack_registry.needs(dict(a.audit))


def references(cfg: DictConfig) -> tuple[str, ...]:
    """The reference models this audit needs: () or some of ("matched", "dense"), in the order to make them."""
    a = attack_config(cfg)
    if not _needs(a)[0] & attack_registry.REFERENCE_INPUTS:
        return ()
    return {"dense": ("dense",), "matched": ("matched",), "both": ("matched", "dense")}[a.reference]


def _reference_keys(
    a: AttackConfig, dense_keys: Sequence[str], matched_keys: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The reference models an audit reads, as (references, extra matched references) keys.

    Empty when no configured attack needs references; `attack.reference` picks the dense
    shadows, the matched ones, or both (matched then reported as `<attack>_matched`).
    """
    if not _needs(a)[0] & attack_registry.REFERENCE_INPUTS:
        return [], []
    if a.reference == "matched":
        return list(matched_keys), []
    if a.reference == "dense":
        return list(dense_keys), []
    return list(dense_keys), list(matched_keys)


def key(cfg: DictConfig, compress_key: str, dense_keys: Sequence[str], matched_keys: Sequence[str]) -> str:
    """The audit's cache key: the attack group, the seed, the compressed model's key and the keys
    of the reference models the audit reads (`_reference_keys`)."""
    a = attack_config(cfg)
    ref_keys, extra = _reference_keys(a, dense_keys, matched_keys)
    spec = {"attack": plain(cfg.attack), "seed": int(cfg.seed)}
    return cache_key(
        "attack", VERSION, spec, {"compress": compress_key, "shadows": ",".join(ref_keys), "matched": ",".join(extra)}
    )


def run(
    ctx: RunContext,
    compressed: CompressResult,
    shadows: ShadowsResult | None = None,
    matched: ShadowsResult | None = None,
) -> AttackResult:
    """Audit `compressed`; `shadows` (dense) and `matched` are the reference models `references(cfg)` names."""
    cfg = ctx.cfg
    a = attack_config(cfg)
    data = ctx.data
    needs = references(cfg)
    missing = [r for r, given in (("dense", shadows), ("matched", matched)) if r in needs and given is None]
    if missing:
        raise ValueError(f"attack.reference={a.reference!r} needs the {' and '.join(missing)} reference models")
    if a.reference == "matched":
        shadows = matched
    dense_keys = shadows.keys if (shadows is not None and a.reference != "matched") else ()
    all_matched = matched.keys if matched is not None else ()
    ref_keys, matched_keys = _reference_keys(a, dense_keys, all_matched)
    the_spec = {"attack": plain(cfg.attack), "seed": ctx.seed}
    k = key(cfg, compressed.key, dense_keys, all_matched)
    # keys only come from given reference models (the missing ones are refused above)
    ref_paths = shadows.model_paths if shadows is not None and ref_keys else []
    matched_paths = matched.model_paths if matched is not None and matched_keys else []

    def build(out: Path) -> None:
        model = load_compressed(ctx, data, compressed.export_path)
        refs = [load_model(ctx, data, p) for p in ref_paths]
        signals = _Context(ctx.seed, a, data, model, refs, shadows if ref_keys else None)
        if matched_keys:
            signals.matched_refs = [load_model(ctx, data, p) for p in matched_paths]
        metrics: dict[str, float] = {}
        all_scores: dict[str, np.ndarray] = {}
        per_example: dict[str, audit_scores.Evaluation] = {}
        evaluations: list[tuple[str, np.ndarray | None, np.ndarray | None]] = [
            ("select", data.splits.search_members, signals.val_eval), ("audit", data.splits.audit_members, None)]
        if len(data.splits.canaries):
            evaluations.append(("canary", None, None))
        show = ctx.progress
        for name, members, nonmembers in progress.iterate(evaluations, len(evaluations), "attack", "audit", show, False):
            audit, idx, labels = signals.evaluate(name, members, nonmembers)
            audit.to_csv(out / f"{name}.csv")
            if name == "audit":
                audit.plot_roc(out / "roc.png")
            prefix = {"select": "attack", "audit": "audit", "canary": "canary"}[name]
            metrics.update(_flatten_table(audit.table, name))
            metrics.update(_primary(audit.table, a.primary, prefix))
            for att, chosen in audit.fitted.items():
                metrics.update({f"{name}_{att}_{what}": v for what, v in chosen.items()})
            for att, sc in audit.scores.items():
                all_scores[f"{name}/{att}"] = sc
            n_in = signals.shadows.reference_in(idx).sum(axis=0) if signals.refs else np.zeros(len(idx), int)
            all_scores[f"{name}/labels"] = labels
            all_scores[f"{name}/example_index"] = idx  # kept for readers of the older files
            all_scores[f"{name}/member"] = labels.astype(bool)
            all_scores[f"{name}/pool_index"] = idx
            all_scores[f"{name}/n_references_in"] = n_in
            per_example[name] = {"pool_index": idx, "member": labels, "n_references_in": n_in, "scores": audit.scores}
        # numpy's stub also matches the **arrays against its keyword allow_pickle: bool
        np.savez_compressed(out / "scores.npz", **all_scores)  # type: ignore[arg-type]
        audit_scores.write(out, audit_scores.table(per_example))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    t0 = time.perf_counter()
    entry = ctx.cache.get_or_create(
        "attack", k, {**the_spec, "compress": compressed.key, "shadows": ref_keys}, build
    )
    metrics = json.loads((entry.path / "metrics.json").read_text())
    result = AttackResult(k, entry.path, entry.hit, metrics)
    tracking.log_metrics({k: v for k, v in metrics.items() if v is not None})
    for f in ("audit.csv", "select.csv", "canary.csv", "roc.png", "scores.npz", "scores.csv", "scores.parquet"):
        if (entry.path / f).exists():
            tracking.log_artifact(entry.path / f, "audit")
    log.info(
        "attack (%s in %.1f s): select AUC %.3f, audit AUC %.3f, audit TPR@1%%FPR %s, TPR@0.1%%FPR %s",
        "cached" if entry.hit else "computed",
        time.perf_counter() - t0,
        metrics.get("attack_auc", math.nan),
        metrics.get("audit_auc", math.nan),
        _fmt(metrics.get("audit_tpr_at_1pct_fpr")),
        _fmt(metrics.get("audit_tpr_at_0.1pct_fpr")),
    )
    return result


def _fmt(v: Any) -> str:
    return "n/a (too few non-members)" if v is None or not math.isfinite(float(v)) else f"{float(v):.3f}"


class _Context:
    """Signals shared by the evaluations of one audit: known members/non-members, population."""

    def __init__(self, seed: int, a: AttackConfig, data: DataBundle, model, refs, shadows):
        self.a, self.data, self.model, self.refs = a, data, model, refs
        self.seed = seed
        self.shadows = shadows
        wanted, self.with_grads = _needs(a)
        # augmented queries (`attack.query_views`) where the data set trains with augmentation on images
        x = data.dataset.x
        self.use_views = bool(
            refs and "target_views" in wanted and data.dataset.augment is not None and x.ndim == 4
        )
        rng = np.random.default_rng(derive_seed(self.seed, "attack", "val_halves"))
        val = rng.permutation(data.splits.val)
        half = len(val) // 2
        self.val_ref, self.val_eval = np.sort(val[:half]), np.sort(val[half:])
        self.known = None
        if "known_members" in wanted:
            km = np.sort(rng.permutation(data.splits.known_members)[: max(half, 2)])
            self.known = (self._signals(model, km, self.with_grads), self._signals(model, self.val_ref, self.with_grads))
        self.population = None
        self.shadow_train = None
        self.population_idx = np.zeros(0, dtype=np.int64)
        self.population_in: np.ndarray | None = None
        self.matched_refs: list = []
        if refs and wanted & {"population_target", "shadow_train"}:
            pop = data.splits.population
            z = np.sort(rng.permutation(len(pop))[: min(len(pop), a.n_population)])
            self.population_idx = pop[z]
            if "population_target" in wanted:
                self.population = (
                    self._signals(model, pop[z]),
                    [self._signals(r, pop[z]) for r in refs],
                )
            self.population_in = shadows.reference_in(pop[z])  # (K, m)
            if "shadow_train" in wanted:
                self.shadow_train = [(self._signals(r, pop[z]), self.population_in[k]) for k, r in enumerate(refs)]

    def _signals(self, model, idx: np.ndarray, with_grads: bool = False, view=None):
        t = torch.from_numpy(np.asarray(idx))
        x = self.data.dataset.x[t]
        return compute_signals(model, x if view is None else view(x), self.data.dataset.y[t], with_grads=with_grads)

    def _views(self, refs, idx: np.ndarray) -> dict:
        """LiRA's augmented queries (`attack.query_views`) of the target and `refs` on the points
        `idx`; none where the data set does not train with augmentation on images."""
        views = [v for _, v in query_views(self.a.query_views, self.a.query_shift)] if self.use_views else []
        if not views:
            return {}
        return {
            "target_views": [self._signals(self.model, idx, view=v) for v in views],
            "reference_views": [[self._signals(r, idx, view=v) for r in refs] for v in views],
        }

    def evaluate(self, name: str, members: np.ndarray | None, nonmembers: np.ndarray | None):
        """Run every configured attack on one evaluation; returns (AuditResult, example ids, labels)."""
        s = self.data.splits
        if name == "canary":
            m_idx, n_idx = np.sort(s.canaries[s.canary_in]), np.sort(s.canaries[~s.canary_in])
        elif members is None:
            raise ValueError(f"audit evaluation {name!r} needs its members (only 'canary' has none)")
        else:
            pool = s.test if nonmembers is None else nonmembers
            rng = np.random.default_rng(derive_seed(self.seed, "audit", name))
            n = min(len(members), len(pool))
            m_idx = np.sort(rng.permutation(members)[:n])
            n_idx = np.sort(rng.permutation(pool)[:n])
        idx = np.r_[m_idx, n_idx]
        labels = np.r_[np.ones(len(m_idx), dtype=int), np.zeros(len(n_idx), dtype=int)]
        inputs = attacks.AttackInputs(
            target=self._signals(self.model, idx, self.with_grads),
            references=[self._signals(r, idx) for r in self.refs] or None,
            reference_in=self.shadows.reference_in(idx) if self.refs else None,
            known_members=self.known[0] if self.known else None,
            known_nonmembers=self.known[1] if self.known else None,
            population_target=self.population[0] if self.population else None,
            population_references=self.population[1] if self.population else None,
            shadow_train=self.shadow_train,
            population_reference_in=self.population_in if self.population else None,
            **self._views(self.refs, idx),
        )
        boot_seed = derive_seed(self.seed, "bootstrap") % (2**31)
        audit = attacks.run_audit(inputs, dict(self.a.audit), labels, n_bootstrap=self.a.n_bootstrap, seed=boot_seed)
        if self.matched_refs:
            # the reference attacks again, with references trained by the target's own recipe
            specs = {
                f"{n}_matched": {**(p or {}), "attack": (p or {}).get("attack", n)}
                for n, p in self.a.audit.items() if _uses_references(n, p)
            }
            m_inputs = replace(
                inputs,
                references=[self._signals(r, idx) for r in self.matched_refs],
                population_references=(
                    [self._signals(r, self.population_idx) for r in self.matched_refs] if self.population else None
                ),
                **self._views(self.matched_refs, idx),
                shadow_train=None if self.shadow_train is None else [
                    (self._signals(r, self.population_idx), m) for r, (_, m) in zip(self.matched_refs, self.shadow_train)
                ],
            )
            extra = attacks.run_audit(m_inputs, specs, labels, n_bootstrap=self.a.n_bootstrap, seed=boot_seed)
            audit = replace(
                audit,
                table=pd.concat([audit.table, extra.table]),
                scores={**audit.scores, **extra.scores},
                roc={**audit.roc, **extra.roc},
                fitted={**audit.fitted, **extra.fitted},
            )
        return audit, idx, labels


def _uses_references(name: str, params: dict | None) -> bool:
    """Whether the audit entry `name` reads reference models (it is run again on matched ones)."""
    p = dict(params or {})
    fields, _ = attack_registry.needs_of(attacks.make_attack(p.pop("attack", name), **p))
    return bool(fields & attack_registry.REFERENCE_INPUTS)


def _flatten_table(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    out = {}
    for attack_name, row in table.iterrows():
        for col, v in row.items():
            try:
                out[f"{prefix}_{attack_name}_{col}"] = float(v)
            except (TypeError, ValueError):
                continue
    return out


def _primary(table: pd.DataFrame, primary: str, prefix: str) -> dict[str, float]:
    """attack_* / audit_* numbers: one attack's, or the strongest attack's per metric ("max")."""
    out = {}
    for col in METRIC_KEYS:
        if col not in table.columns:
            continue
        values = table[col].astype(float)
        v = values.max(skipna=True) if primary == "max" else values.loc[primary]
        out[f"{prefix}_{col}"] = float(v) if v is not None else math.nan
    return out
