"""A tracked run's row label: its method, variant and the settings that tell its configuration
apart from the method's others (what each method declares in `training.compress.METHODS`)."""

from __future__ import annotations

import ast
import math
from typing import Any

import pandas as pd

from pipeline.config import STRATEGY_DEFENCE_FIELDS, CompressConfig

# params that make two runs of one method different configurations (shown in the row label)
LABEL_PARAMS = {
    "params.compress.epochs": "ep",
    "params.compress.dp.epsilon": "eps",
    "params.compress.adversarial.lam": "adv_lam",
}
_DEFAULT = CompressConfig()  # settings at their defaults are left out of row labels


def as_float(v: Any) -> float:
    """`v` as a float; NaN where it is none."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def run_label(row: pd.Series) -> str:
    """`method`, `method (variant)`, plus the params that distinguish configurations of one method
    (what each method declares in `training.compress.METHODS`)."""
    from training.compress import METHODS

    label = str(row.get("method") or "?")
    variant = row.get("variant")
    if isinstance(variant, str) and variant:
        label += f" ({variant})"
    extras = []
    method = METHODS.get(str(row.get("method")))
    for col, short in LABEL_PARAMS.items():
        v = logged_param(row, col.removeprefix("params."))
        if v is None:
            continue
        if col != "params.compress.epochs" and (method is None or col.removeprefix("params.") not in method.label_params):
            continue
        if short == "adv_lam" and row.get("params.compress.adversarial.enabled") != "True":
            continue
        if short == "adv_lam" and v == str(_DEFAULT.adversarial.lam):  # the default is not worth a label
            continue
        extras.append(f"{short}={v}")
    extras += _distill_extras(row)
    if method is not None and method.differentially_private:
        extras += _dp_extras(row)
    extras += _defence_extras(row, method)
    if method is not None and method.regrows:
        extras += _schedule_extras(row)
    if method is not None and method.selects_candidates:
        extras += _selection_extras(row)
    density = as_float(row.get("target_density", row.get("density")))
    if method is not None and not method.is_dense and density == 1.0:
        extras.append("d=1")  # e.g. dst_adv at density 1.0 = dense + adversarial regularization
    if extras:
        label += " [" + ", ".join(extras) + "]"
    return label


def logged_param(row: pd.Series, key: str) -> str | None:
    """A logged param (`params.<key>`) as its string, None when absent or null."""
    v = row.get(f"params.{key}")
    return v if isinstance(v, str) and v not in ("None", "null", "") else None


def _dp_extras(row: pd.Series) -> list[str]:
    """DP-SGD's learning rate and clipping when not the defaults, or `tuned` when chosen on
    validation by the run itself (compress.dp.tune_*)."""
    if any(logged_param(row, f"compress.dp.{k}") not in (None, "[]") for k in ("tune_lr", "tune_max_grad_norm")):
        return ["tuned"]
    out = []
    for key, short, default in (("lr", "lr", _DEFAULT.dp.lr), ("max_grad_norm", "clip", _DEFAULT.dp.max_grad_norm)):
        v = logged_param(row, f"compress.dp.{key}")
        if v is not None and as_float(v) != default:
            out.append(f"{short}={v}")
    return out


def _distill_extras(row: pd.Series) -> list[str]:
    """Knowledge distillation from the dense model (compress.distill): its temperature and weight."""
    if logged_param(row, "compress.distill.enabled") != "True":
        return []
    return [f"kd_T={logged_param(row, 'compress.distill.temperature')}", f"kd_w={logged_param(row, 'compress.distill.weight')}"]


def _defence_extras(row: pd.Series, method: Any) -> list[str]:
    """RelaxLoss (any method) and DMP settings, and the reference data a defence used beyond the
    members (`ref=N`): runs that differ in them are different configurations."""
    def param(key: str) -> str | None:
        return logged_param(row, f"compress.{key}")

    extras = []
    if param("relaxloss.enabled") == "True":
        extras.append(f"relax={param('relaxloss.alpha')}")
        if param("relaxloss.upper") not in (None, str(_DEFAULT.relaxloss.upper)):
            extras.append(f"upper={param('relaxloss.upper')}")
    if method is not None and method.uses_reference_set:
        for key, short in (("temperature", "T"), ("member_weight", "w_mem"), ("low_entropy_fraction", "ref_frac")):
            v = param(f"dmp.{key}")
            if v is not None and as_float(v) != getattr(_DEFAULT.dmp, key):
                extras.append(f"{short}={v}")
        size = logged_param(row, "dataset.reference_size")
        if size is not None:
            extras.append(f"ref={size}")
    return extras


def _schedule_extras(row: pd.Series) -> list[str]:
    """Density schedule and regrowth settings that differ from the defaults (`CompressConfig`'s)."""
    def param(key: str) -> str | None:
        return logged_param(row, f"compress.{key}")

    def short(v: str | None) -> str:
        if v is None:
            return "?"
        try:
            return f"{float(v):.3g}"
        except ValueError:
            return v

    extras = []
    kind = param("density_schedule.kind")
    if kind and kind != _DEFAULT.density_schedule.kind:
        extras.append(f"sched={kind}@{short(param('density_schedule.start'))}")
    kind, start = param("regrowth.kind"), param("regrowth.start")
    if (kind and kind != _DEFAULT.regrowth.kind) or (start and as_float(start) != _DEFAULT.regrowth.start):
        extras.append(f"regrow={kind or _DEFAULT.regrowth.kind}@{short(start)}")
    return extras


def _selection_extras(row: pd.Series) -> list[str]:
    """SafeCompress selection settings that differ from the defaults (`CompressConfig`'s)."""
    def param(key: str) -> str | None:
        return logged_param(row, f"compress.{key}")

    rule = param("selection.rule")
    extras = []
    if rule and rule != _DEFAULT.selection.rule:
        extras.append(f"sel={rule}")
    if rule == "weighted" and param("selection.lam"):
        extras.append(f"sel_lam={param('selection.lam')}")
    if rule == "lexicographic" and param("selection.delta") not in (None, str(_DEFAULT.selection.delta)):
        extras.append(f"delta={param('selection.delta')}")
    if param("selection.noise_floor") == "False":
        extras.append("floor=off")
    strategies = param("strategies")
    if strategies and strategies.count("prune") > 1:
        extras.append(f"pool={strategies.count('prune')}")
    if strategies and _defence_pool(strategies):
        extras.append("defences")  # candidates that differ in defence strength
    return extras


def _defence_pool(strategies: str) -> bool:
    """Whether a logged `compress.strategies` sets a defence on some candidate."""
    try:
        parsed = ast.literal_eval(strategies)
    except (ValueError, SyntaxError):
        return any(k in strategies for k in STRATEGY_DEFENCE_FIELDS)
    return any(
        isinstance(s, dict) and any(s.get(k) is not None for k in STRATEGY_DEFENCE_FIELDS)
        for s in parsed
    )


def epochs_of(row: pd.Series) -> float:
    """Training epochs of a run: `compress.epochs` when set, else `train.epochs` (NaN if unknown)."""
    v = as_float(row.get("params.compress.epochs"))
    return v if math.isfinite(v) else as_float(row.get("params.train.epochs"))
