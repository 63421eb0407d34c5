"""The audit: run several attacks from the registry (`attacks.registry`) on one target and tabulate them.

One interface for every attack (`attacks.inputs.Attack`): fit on what the attacker knows,
score the audit points. The audit reports, per attack, the metrics of Carlini et al.
(S&P'22): AUC, TPR at low FPR on a log-log ROC, plus balanced accuracy and advantage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from attacks import mmia  # noqa: F401  (registers "mmia")
from attacks.inputs import Attack, AttackInputs, MissingInputError, require
from attacks.metrics import check_scores_labels, roc_auc, roc_curve, summarize
from attacks.registry import ATTACKS, AttackSpec, _specs, make_attack, register
from attacks.signals import compute_signals

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInputs",
    "AuditResult",
    "MissingInputError",
    "make_attack",
    "register",
    "run_audit",
    "loss_attack_auc",
]

log = logging.getLogger(__name__)

@dataclass
class AuditResult:
    """Per attack: the metric row, the scores and the ROC; attacks skipped and why."""

    table: pd.DataFrame
    scores: dict[str, np.ndarray]
    roc: dict[str, tuple[np.ndarray, np.ndarray]]
    labels: np.ndarray
    skipped: dict[str, str] = field(default_factory=dict)
    # per attack, what it chose while fitting (RMIA's calibrated a, LiRA's variance), when it says
    fitted: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_csv(self, path: str | Path) -> None:
        """The attack x metric table (one row per attack that ran)."""
        self.table.to_csv(path, index=True, index_label="attack")

    def roc_to_csv(self, path: str | Path) -> None:
        """Every attack's ROC points, long format: attack, fpr, tpr."""
        frames = [
            pd.DataFrame({"attack": name, "fpr": f, "tpr": t}) for name, (f, t) in self.roc.items()
        ]
        pd.concat(frames, ignore_index=True).to_csv(path, index=False)

    def plot_roc(self, path: str | Path, title: str = "Membership inference ROC") -> None:
        """One log-log ROC plot with every attack (AUC in the legend) and the diagonal."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n0 = int(np.sum(np.asarray(self.labels) == 0))
        lo = 1.0 / max(n0, 1) / 2.0
        fig, ax = plt.subplots(figsize=(5, 5))
        for name, (f, t) in self.roc.items():
            auc = float(self.table.loc[name, "auc"]) if name in self.table.index else math.nan
            ax.plot(np.maximum(f, lo), np.maximum(t, lo), label=f"{name} (AUC {auc:.3f})", lw=1.2)
        grid = np.logspace(np.log10(lo), 0, 50)
        ax.plot(grid, grid, "k--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1.0)
        ax.set_ylim(lo, 1.0)
        ax.set_xlabel("False positive rate")
        ax.set_ylabel("True positive rate")
        ax.set_title(title)
        ax.legend(loc="lower right", fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def run_audit(
    inputs: AttackInputs,
    attacks: AttackSpec,
    labels: np.ndarray,
    n_bootstrap: int = 0,
    seed: int = 0,
    skip_missing: bool = False,
    fprs: Sequence[float] = (0.01, 0.001),
) -> AuditResult:
    """Fit and score every attack on the audit points, then summarize each.

    attacks: names, or {display name: params} (params may hold "attack": registry name).
    labels: (n,) 1 = member. Attacks whose inputs are missing raise MissingInputError, or
    with skip_missing=True are recorded in `AuditResult.skipped` with the reason. The
    bootstrap uses the same seed for every attack, so intervals are paired across attacks.
    """
    specs = _specs(attacks)
    labels = np.asarray(labels)
    if len(labels) != inputs.n:
        raise ValueError(
            f"labels has {len(labels)} entries for {inputs.n} audit points; need one per point"
        )
    check_scores_labels(np.zeros(len(labels)), labels)
    rows: dict[str, dict[str, float]] = {}
    scores: dict[str, np.ndarray] = {}
    roc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    skipped: dict[str, str] = {}
    fitted: dict[str, dict[str, float]] = {}
    for label, reg, params in specs:
        attack = make_attack(reg, **params)
        try:
            require(label, inputs, tuple(attack.requires))
            attack.fit(inputs)
            s = np.asarray(attack.score(inputs), dtype=np.float64)
        except MissingInputError as e:
            if not skip_missing:
                raise
            skipped[label] = str(e)
            log.warning("skipping attack %s: %s", label, e)
            continue
        if s.shape != (inputs.n,):
            raise ValueError(
                f"attack {label!r} returned scores of shape {s.shape}; need ({inputs.n},)"
            )
        if not np.all(np.isfinite(s)):
            raise ValueError(f"attack {label!r} returned NaN/inf scores")
        scores[label] = s
        chosen = getattr(attack, "fitted", None)
        if chosen:
            fitted[label] = dict(chosen)
        rows[label] = summarize(s, labels, fprs=fprs, n_bootstrap=n_bootstrap, seed=seed)
        f, t, _ = roc_curve(s, labels)
        roc[label] = (f, t)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "attack"
    return AuditResult(table=table, scores=scores, roc=roc, labels=labels, skipped=skipped, fitted=fitted)


def loss_attack_auc(
    model: nn.Module,
    x_members: torch.Tensor,
    y_members: torch.Tensor,
    x_nonmembers: torch.Tensor,
    y_nonmembers: torch.Tensor,
) -> float:
    """AUC of the loss attack (Yeom et al.) on members vs non-members: the cheap safety test."""
    m = compute_signals(model, x_members, y_members)
    n = compute_signals(model, x_nonmembers, y_nonmembers)
    scores = np.r_[-m.loss, -n.loss]
    labels = np.r_[np.ones(len(m), int), np.zeros(len(n), int)]
    return roc_auc(scores, labels)
