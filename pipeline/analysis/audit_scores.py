"""Per-example audit scores as one table an outside auditor can read (issue 27).

Every audit (`stage=attack`) writes, beside its metrics, `scores.npz` (arrays per evaluation)
and the same numbers as a flat table: `scores.csv` always, and `scores.parquet` when pyarrow is
installed. One row per scored example and evaluation:

| column | meaning |
|---|---|
| `evaluation` | `select` (search members vs val), `audit` (audit members vs test), `canary` |
| `pool_index` | the example's row in the data set's labelled pool (`Dataset.x[pool_index]`) |
| `member` | 1 if the example trained the audited model, else 0 |
| `n_references_in` | how many reference models trained on it (0 for every point offline) |
| `score_<attack>` | that attack's membership score, higher = member |

`recompute_metrics(table)` recomputes every attack's AUC and TPR at low FPR from the table alone
with the metrics the audit logs (`attacks.metrics.summarize`), so a reader can check them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TypedDict

import numpy as np
import pandas as pd

from attacks.metrics import summarize

log = logging.getLogger(__name__)

SCORE_PREFIX = "score_"
# the per-evaluation arrays of scores.npz that are not an attack's scores
NPZ_FIELDS = ("labels", "example_index", "member", "pool_index", "n_references_in")
COLUMNS = ("evaluation", "pool_index", "member", "n_references_in")


class Evaluation(TypedDict):
    """One evaluation's examples: (n,) arrays and {attack: (n,) scores}."""

    pool_index: np.ndarray
    member: np.ndarray
    n_references_in: np.ndarray
    scores: dict[str, np.ndarray]


def table(evaluations: dict[str, Evaluation]) -> pd.DataFrame:
    """One row per example and evaluation (`evaluations[name]`: its examples)."""
    frames = []
    for name, ev in evaluations.items():
        frame = pd.DataFrame({
            "evaluation": name,
            "pool_index": np.asarray(ev["pool_index"], dtype=np.int64),
            "member": np.asarray(ev["member"], dtype=np.int8),
            "n_references_in": np.asarray(ev["n_references_in"], dtype=np.int32),
        })
        for att, s in ev["scores"].items():
            frame[SCORE_PREFIX + att] = np.asarray(s, dtype=np.float64)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))


def write(out: Path, frame: pd.DataFrame) -> list[Path]:
    """`scores.csv` (full float precision) and, with pyarrow, `scores.parquet`; the paths written."""
    paths = [out / "scores.csv"]
    frame.to_csv(paths[0], index=False, float_format="%.17g")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        log.info("pyarrow is not installed: per-example scores as scores.csv only")
    else:
        paths.append(out / "scores.parquet")
        frame.to_parquet(paths[1], index=False)
    return paths


def read(path: Path) -> pd.DataFrame:
    """A scores table written by `write` (.csv or .parquet)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"scores table must be .csv or .parquet, got {path.name!r}")


def attacks_in(frame: pd.DataFrame) -> list[str]:
    return [c[len(SCORE_PREFIX):] for c in frame.columns if c.startswith(SCORE_PREFIX)]


def recompute_metrics(frame: pd.DataFrame, fprs: tuple[float, ...] = (0.01, 0.001)) -> dict[str, float]:
    """`<evaluation>_<attack>_<metric>` recomputed from the table (the audit's own metric names)."""
    out: dict[str, float] = {}
    for name, ev in frame.groupby("evaluation", sort=False):
        for att in attacks_in(ev):
            s = ev[SCORE_PREFIX + att].to_numpy()
            keep = np.isfinite(s)  # an attack absent from this evaluation is NaN in the table
            if not keep.any():
                continue
            for metric, v in summarize(s[keep], ev["member"].to_numpy()[keep], fprs=fprs).items():
                out[f"{name}_{att}_{metric}"] = v
    return out
