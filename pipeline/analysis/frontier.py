"""The train-less frontier (Aerni, Zhang & Tramèr 2024, arXiv 2404.17399): what a defence must beat.

Per seed, the frontier is the lower monotone envelope of (test accuracy, audit AUC) over
cheap strong baselines (plain DST at several epoch budgets, ordinary distillation from the
dense teacher, the dense model, dense + adversarial regularization, DP-SGD). A run of a
frontier method that also carries a defence option (RelaxLoss: `DEFENCE_PARAMS`) is a
defence being judged, never a frontier point. Used by the compare stage (excess AUC over it) and
the report stage (drawn on the trade-off plots).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def frontier_envelope(acc: np.ndarray, auc: np.ndarray) -> np.ndarray:
    """The envelope's points (k, 2) = (accuracy, AUC), accuracy ascending, AUC ascending.

    A point is kept when no other point has accuracy >= and AUC <= (one strictly):
    the lower-right staircase of the frontier models.
    """
    pts = np.column_stack([np.asarray(acc, float), np.asarray(auc, float)])
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0:
        return pts.reshape(0, 2)
    order = np.lexsort((pts[:, 1], -pts[:, 0]))  # accuracy descending, AUC ascending on ties
    keep, best = [], math.inf
    for i in order:
        if pts[i, 1] < best:
            keep.append(i)
            best = pts[i, 1]
    return pts[keep][::-1]


def frontier_auc(envelope: np.ndarray, accuracy: float) -> float:
    """f(accuracy): the lowest frontier AUC at an accuracy >= `accuracy`, linearly interpolated
    between envelope points; NaN above the most accurate frontier model."""
    if len(envelope) == 0 or not math.isfinite(accuracy) or accuracy > envelope[-1, 0] + 1e-12:
        return math.nan
    if accuracy <= envelope[0, 0]:
        return float(envelope[0, 1])
    return float(np.interp(accuracy, envelope[:, 0], envelope[:, 1]))


def _parse_member(entry: str) -> tuple[str, float | None]:
    if "@" in entry:
        m, d = entry.split("@", 1)
        return m, float(d)
    return entry, None


# logged params (as load_runs names them) that make a run of any method a defence under test
DEFENCE_PARAMS = ("params.compress.relaxloss.enabled",)


def defended(frame: pd.DataFrame) -> np.ndarray:
    """Per run: whether it trained with a defence option (`DEFENCE_PARAMS` logged as True)."""
    out = np.zeros(len(frame), dtype=bool)
    for col in DEFENCE_PARAMS:
        if col in frame:
            out |= (frame[col].astype(str) == "True").to_numpy()
    return out


def frontier_runs(frame: pd.DataFrame, dataset: str, density: float, methods: list[str]) -> pd.DataFrame:
    """Frontier members of one (dataset, density): `method` at this density or 1.0; `method@d` at d;
    runs with a defence option (`defended`) excluded."""
    sub = frame[frame["dataset"] == dataset]
    keep = np.zeros(len(sub), dtype=bool)
    for entry in methods:
        method, d = _parse_member(entry)
        sel = (sub["method"] == method).to_numpy()
        dens = sub["target_density"].to_numpy(float)
        at = np.isclose(dens, d) if d is not None else (np.isclose(dens, density) | np.isclose(dens, 1.0))
        keep |= sel & at
    return sub[keep & ~defended(sub)]


def forms_envelope(front: pd.DataFrame) -> pd.Series:
    """Per frontier run (indexed like `front`): whether it is a vertex of its seed's envelope,
    i.e. one of the points that form the frontier (the others lie on or above it)."""
    out = pd.Series(False, index=front.index)
    for _, fs in front.groupby("seed"):
        env = frontier_envelope(fs["test_accuracy"], fs["audit_auc"])
        acc = fs["test_accuracy"].to_numpy(float)
        auc = fs["audit_auc"].to_numpy(float)
        on = (np.isclose(acc[:, None], env[None, :, 0], rtol=0, atol=1e-12)
              & np.isclose(auc[:, None], env[None, :, 1], rtol=0, atol=1e-12)).any(axis=1)
        out.loc[fs.index] = on
    return out


def mean_envelope(front: pd.DataFrame) -> pd.DataFrame:
    """The envelope (columns accuracy, auc) of the frontier members' means over seeds, one point per label."""
    means = front.groupby("label")[["test_accuracy", "audit_auc"]].mean()
    return pd.DataFrame(frontier_envelope(means["test_accuracy"], means["audit_auc"]), columns=["accuracy", "auc"])


def frontier_curves(frame: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per compressed density of one data set: the envelope of the frontier members' seed means
    (compare stage, `compare.frontier.methods`). Columns accuracy, auc, density; empty if none ran."""
    parts = []
    if not {"test_accuracy", "audit_auc"} <= set(frame.columns) or frame.empty:
        return pd.DataFrame(columns=["accuracy", "auc", "density"])
    dataset = frame["dataset"].iloc[0]
    for density in sorted(d for d in frame["target_density"].dropna().unique() if d < 1.0):
        front = frontier_runs(frame, dataset, float(density), methods)
        if front.empty:
            continue
        parts.append(mean_envelope(front).assign(density=float(density)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["accuracy", "auc", "density"])


def excess_auc(method_runs: pd.DataFrame, front: pd.DataFrame) -> pd.DataFrame:
    """Per seed of `method_runs`: accuracy, AUC, the frontier's AUC there, and the excess."""
    rows = []
    for _, r in method_runs.iterrows():
        fs = front[front["seed"] == r["seed"]]
        env = frontier_envelope(fs["test_accuracy"], fs["audit_auc"]) if len(fs) else np.zeros((0, 2))
        f = frontier_auc(env, float(r.get("test_accuracy", math.nan)))
        rows.append({"seed": r["seed"], "test_accuracy": r.get("test_accuracy"), "audit_auc": r.get("audit_auc"),
                     "frontier_auc": f, "excess_auc": float(r.get("audit_auc", math.nan)) - f})
    return pd.DataFrame(rows)


def with_leakage(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """A copy whose `audit_auc` is the frontier's leakage measure: the maximum of `metrics` per run."""
    if not metrics:
        raise ValueError("compare.frontier.metrics is empty; name at least one logged metric, e.g. [audit_auc]")
    missing = [m for m in metrics if m not in frame.columns]
    if missing:
        logged = sorted(col for col in frame.columns if str(col).startswith("audit_") and str(col).endswith("_auc"))
        raise ValueError(f"compare.frontier.metrics {missing} are not logged by these runs; "
                         f"logged AUC metrics: {['audit_auc', *logged]}")
    out = frame.copy()
    out["audit_auc"] = out[list(metrics)].apply(pd.to_numeric, errors="coerce").max(axis=1, skipna=False)
    return out
