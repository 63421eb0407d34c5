"""What each stage returns: frozen records of a cache entry and its numbers; and the numbers a
search trial records (`TRIAL_METRICS`).

Stages are peers that never import each other; a stage that needs another's output
takes its result (one of these) as an argument, wired by `pipeline.flow`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

EXPORT_FILE = "model.sc"  # a compressed model's export (`sparse.save_export`)


@dataclass(frozen=True)
class TeacherResult:
    key: str
    path: Path  # the cache entry's directory; weights in model.pt
    cache_hit: bool
    metrics: dict[str, float]  # train/val/test accuracy and loss
    history: list[dict[str, float]]  # per epoch: loss, train_accuracy

    @property
    def model_path(self) -> Path:
        return self.path / "model.pt"


@dataclass(frozen=True)
class ShadowsResult:
    keys: tuple[str, ...]
    paths: tuple[Path, ...]  # one cache entry per shadow; weights in model.pt
    membership: np.ndarray  # (K, n_pool) bool: pool point j in shadow k's training set
    n_cache_hits: int
    pool: Optional[np.ndarray] = None  # (n_pool,) data set indices of membership's columns (None: population)

    def reference_in(self, idx: np.ndarray) -> np.ndarray:
        """(K, len(idx)) bool: data set point idx[i] in reference k's training set."""
        idx = np.asarray(idx)
        if self.pool is None or len(self.pool) == 0:
            return np.zeros((len(self.keys), len(idx)), dtype=bool)
        pos = np.clip(np.searchsorted(self.pool, idx), 0, len(self.pool) - 1)
        found = self.pool[pos] == idx  # (n,)
        return self.membership[:, pos] & found[None, :]

    @property
    def n_models(self) -> int:
        return len(self.keys)

    @property
    def model_paths(self) -> list[Path]:
        return [p / "model.pt" for p in self.paths]


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


@dataclass(frozen=True)
class AttackResult:
    key: str
    path: Path  # audit.csv, select.csv, roc.png, scores.npz, metrics.json
    cache_hit: bool
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrialMetric:
    """A number every complete search trial records (from its compress and audit metrics): as a
    user attr of its Optuna trial (so a run the tracking server missed is logged later from the
    study), as a column of `trials.csv`, `pareto.csv` and the printed front, and, when
    `summary`, among the metrics its MLflow run leads with (after the objectives; a run backfilled
    from the study logs every one of them). `objective`: its direction when the search may optimise or constrain it."""

    name: str
    objective: Optional[Literal["maximize", "minimize"]] = None  # None: never steers the search
    summary: bool = True


# The objectives are on validation data; test accuracy sits beside the audit's test numbers
# (reported, never searched on).
TRIAL_METRICS: tuple[TrialMetric, ...] = (
    TrialMetric("accuracy", "maximize"),
    TrialMetric("attack_auc", "minimize"),
    TrialMetric("attack_tpr_at_0.1pct_fpr", "minimize"),
    TrialMetric("model_size_bytes", "minimize"),
    TrialMetric("density", "minimize"),
    TrialMetric("test_accuracy"),
    TrialMetric("audit_auc", summary=False),  # a live run has it from the audit's own metrics
)
METRIC_NAMES = tuple(m.name for m in TRIAL_METRICS)
SUMMARY_METRICS = tuple(m.name for m in TRIAL_METRICS if m.summary)
