"""Pareto maths shared by the search and the comparisons: nondominated ranks and hypervolume.

Nondominated sorting as in NSGA-II (Deb et al. 2002); the hypervolume is exact for one to
three objectives (2-D staircase sum; 3-D by slicing along the last objective).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def nondominated_ranks(
    values: np.ndarray, directions: list[str], feasible: np.ndarray | None = None
) -> np.ndarray:
    """Pareto rank per row (0 = nondominated) by repeated nondominated sorting.

    Infeasible rows (constraints violated) rank after every feasible one.
    """
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    v = values * signs  # minimise everything
    n = len(v)
    ranks = np.full(n, -1)
    feasible = np.ones(n, dtype=bool) if feasible is None else feasible
    r = 0
    for group in (np.flatnonzero(feasible), np.flatnonzero(~feasible)):
        remaining = group
        while len(remaining):
            sub = v[remaining]
            dominated = np.array(
                [
                    bool(np.any(np.all(sub <= sub[i], axis=1) & np.any(sub < sub[i], axis=1)))
                    for i in range(len(sub))
                ]
            )
            ranks[remaining[~dominated]] = r
            remaining = remaining[dominated]
            r += 1
    return ranks


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume dominated by `points` (minimisation) up to `reference`; exact for 1-3 objectives."""
    pts = points[np.all(points < reference, axis=1)]
    if len(pts) == 0:
        return 0.0
    d = pts.shape[1]
    if d == 1:
        return float(reference[0] - pts[:, 0].min())
    if d == 2:
        pts = pts[np.argsort(pts[:, 0])]
        hv, best_y = 0.0, reference[1]
        for x, y in pts:
            if y < best_y:
                hv += (reference[0] - x) * (best_y - y)
                best_y = y
        return float(hv)
    if d == 3:  # slice along the last objective
        order = np.argsort(pts[:, 2])
        pts = pts[order]
        hv = 0.0
        for i in range(len(pts)):
            z_next = pts[i + 1, 2] if i + 1 < len(pts) else reference[2]
            hv += hypervolume(pts[: i + 1, :2], reference[:2]) * (z_next - pts[i, 2])
        return float(hv)
    raise ValueError(f"hypervolume supports 1-3 objectives, got {d}")


def normalised_objectives(
    table: pd.DataFrame, objectives: list[str], dense_bytes: float
) -> np.ndarray:
    """Objectives mapped to minimisation in [0, 1] with reference point (1, ..., 1)."""
    cols = []
    for o in objectives:
        v = table[o].to_numpy(float)
        if o == "accuracy":
            v = 1.0 - v
        elif o == "model_size_bytes":
            v = v / dense_bytes
        cols.append(v)
    return np.stack(cols, axis=1)


def front_hypervolume(accuracy: np.ndarray, auc: np.ndarray) -> float:
    """Area dominated by (accuracy, AUC) points, maximising accuracy and minimising AUC, up to the
    reference point (accuracy 0, AUC 1): the search's normalised objectives (1 - accuracy, AUC)."""
    pts = np.column_stack([1.0 - np.asarray(accuracy, float), np.asarray(auc, float)])
    pts = pts[np.isfinite(pts).all(axis=1)]
    return hypervolume(pts, np.array([1.0, 1.0])) if len(pts) else 0.0
