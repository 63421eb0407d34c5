"""Stage 4 — attack: audit the compressed model with the configured membership-inference attacks.

Two evaluations share the same attacks and reference models:
- `select`: audit members vs `val` non-members. Its numbers are the search
  objectives (`attack_auc`, `attack_tpr_*`): the search never selects on test.
- `audit`: audit members vs `test` non-members, the reported audit (`audit_*`).
Audit members are members of `train` the in-loop attacker never saw.
Reference (shadow) models never saw any audit point, so LiRA runs offline here.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

import attacks
from attacks.signals import compute_signals
from pipeline import tracking
from pipeline.cache import cache_key
from pipeline.config import AttackConfig, to_schema
from pipeline.context import DataBundle, load_data, get_cache, plain
from pipeline.seeds import derive_seed
from pipeline.stages import compress as compress_stage
from pipeline.stages import shadows as shadows_stage

log = logging.getLogger(__name__)

VERSION = 1
REFERENCE_ATTACKS = ("lira_offline", "lira_online", "rmia", "shadow")
METRIC_KEYS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "balanced_accuracy", "advantage")


@dataclass(frozen=True)
class AttackResult:
    key: str
    path: Path  # audit.csv, select.csv, roc.png, metrics.json
    cache_hit: bool
    metrics: dict[str, float]


def attack_config(cfg: DictConfig) -> AttackConfig:
    a = to_schema(AttackConfig, cfg.attack)
    valid = set(attacks.ATTACKS)
    unknown = [n for n in a.audit if n not in valid]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; valid: {sorted(valid)}")
    if a.primary != "max" and a.primary not in a.audit:
        raise ValueError(f"attack.primary={a.primary!r} must be 'max' or one of {list(a.audit)}")
    return a


def run(
    cfg: DictConfig,
    compressed: compress_stage.CompressResult | None = None,
    shadows: shadows_stage.ShadowsResult | None = None,
) -> AttackResult:
    a = attack_config(cfg)
    data = load_data(cfg)
    compressed = compressed or compress_stage.run(cfg)
    needs_refs = any(n in REFERENCE_ATTACKS for n in a.audit)
    if needs_refs and shadows is None:
        shadows = shadows_stage.run(cfg)
    ref_keys = list(shadows.keys) if (needs_refs and shadows is not None) else []
    the_spec = {"attack": plain(cfg.attack), "seed": int(cfg.seed)}
    key = cache_key("attack", VERSION, the_spec, {"compress": compressed.key, "shadows": ",".join(ref_keys)})

    def build(out: Path) -> None:
        model = compress_stage.load(cfg, compressed)
        refs = shadows_stage.load_models(cfg, shadows) if ref_keys else []
        metrics: dict[str, float] = {}
        for name, nonmember_part in (("select", "val"), ("audit", "test")):
            audit = _audit(cfg, a, data, model, refs, nonmember_part)
            audit.to_csv(out / f"{name}.csv")
            if name == "audit":
                audit.plot_roc(out / "roc.png")
            metrics.update(_flatten_table(audit.table, name))
            metrics.update(_primary(audit.table, a.primary, "attack" if name == "select" else "audit"))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    entry = get_cache(cfg).get_or_create("attack", key, {**the_spec, "compress": compressed.key, "shadows": ref_keys}, build)
    metrics = json.loads((entry.path / "metrics.json").read_text())
    result = AttackResult(key, entry.path, entry.hit, metrics)
    tracking.log_metrics({k: v for k, v in metrics.items() if v is not None})
    for f in ("audit.csv", "select.csv", "roc.png"):
        if (entry.path / f).exists():
            tracking.log_artifact(entry.path / f, "audit")
    log.info(
        "attack (%s): select AUC %.3f, audit AUC %.3f, audit TPR@0.1%%FPR %s",
        "cached" if entry.hit else "computed",
        metrics.get("attack_auc", math.nan),
        metrics.get("audit_auc", math.nan),
        _fmt(metrics.get("audit_tpr_at_0.1pct_fpr")),
    )
    return result


def _fmt(v: Any) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.3f}"


def _audit(cfg, a: AttackConfig, data: DataBundle, model, refs, nonmember_part: str):
    """Run every configured attack on audit members vs `nonmember_part` (equal sizes)."""
    members = data.splits.audit_members
    pool = getattr(data.splits, nonmember_part)
    rng = np.random.default_rng(derive_seed(int(cfg.seed), "audit", nonmember_part))
    n = min(len(members), len(pool))
    m_idx = np.sort(rng.permutation(members)[:n])
    n_idx = np.sort(rng.permutation(pool)[:n])
    idx = torch.from_numpy(np.r_[m_idx, n_idx])
    x, y = data.dataset.x[idx], data.dataset.y[idx]
    labels = np.r_[np.ones(n, dtype=int), np.zeros(n, dtype=int)]
    inputs = attacks.AttackInputs(
        target=compute_signals(model, x, y),
        references=[compute_signals(r, x, y) for r in refs] or None,
        reference_in=np.zeros((len(refs), 2 * n), dtype=bool) if refs else None,
    )
    return attacks.run_audit(
        inputs, dict(a.audit), labels, n_bootstrap=a.n_bootstrap, seed=derive_seed(int(cfg.seed), "bootstrap")
    )


def _flatten_table(table: pd.DataFrame, prefix: str) -> dict[str, float]:
    out = {}
    for attack_name, row in table.iterrows():
        for col, v in row.items():
            out[f"{prefix}_{attack_name}_{col}"] = float(v)
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
