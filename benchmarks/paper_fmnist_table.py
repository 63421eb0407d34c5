"""The Fashion-MNIST table (issue 24) from the tracked runs of `experiment=paper_fmnist`.

    python benchmarks/paper_fmnist_table.py --tracking-uri sqlite:///mlruns/mlflow.db > table.md

One row per method (and SafeCompress variant) and density: test accuracy (mean over seeds, with a
95% t-interval over seeds), each audit attack's AUC (loss, offline LiRA, RMIA, Nasr's black-box
NN) and the strongest one's TPR at 1% and 0.1% FPR (members vs test non-members). Numbers are
read from MLflow as logged; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pandas as pd
from scipy import stats

COLUMNS = {
    "test_accuracy": "test acc",
    "audit_loss_auc": "loss AUC",
    "audit_lira_offline_auc": "LiRA AUC",
    "audit_lira_online_auc": "online LiRA AUC",  # only with attack=online (a column when logged)
    "audit_rmia_auc": "RMIA AUC",
    "audit_nn_blackbox_auc": "NN-BB AUC",
    "audit_auc": "max AUC",
    "audit_tpr_at_1pct_fpr": "TPR@1%FPR",
    "audit_tpr_at_0.1pct_fpr": "TPR@0.1%FPR",
}
OPTIONAL = ("audit_lira_online_auc",)


def _interval(values: np.ndarray) -> str:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f} (1)"
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return f"{values.mean():.3f} [{values.mean() - half:.3f}, {values.mean() + half:.3f}] ({len(values)})"


def table(runs: pd.DataFrame) -> str:
    method = runs["params.compress.method"].astype(str)
    variant = runs["params.compress.variant"].astype(str)
    tuned = runs.get("params.compress.dp.tune_lr", pd.Series("[]", index=runs.index)).astype(str).ne("[]")
    label = np.where(method == "safecompress", "safecompress (" + variant + ")", method)
    label = np.where((method == "dpsgd") & tuned, "dpsgd (tuned lr)", label)
    runs = runs.assign(
        label=label,
        density=np.where(runs["params.compress.method"].isin(["dense", "dpsgd"]), 1.0,
                         runs["params.compress.density"].astype(float)),
    )
    # the grid audits dense once per listed density: one row (the same runs, the same model)
    runs = runs.drop_duplicates(subset=["label", "density", "params.seed"], keep="last")
    columns = {k: v for k, v in COLUMNS.items() if k not in OPTIONAL or f"metrics.{k}" in runs}
    lines = ["| method | density | " + " | ".join(columns.values()) + " |",
             "|---" * (len(columns) + 2) + "|"]
    for (label, density), g in runs.groupby(["label", "density"], sort=True):
        cells = []
        for metric in columns:
            col = f"metrics.{metric}"
            values = g[col].to_numpy(float) if col in g else np.array([])
            cells.append(_interval(values) if metric == "test_accuracy" else
                         (f"{np.nanmean(values):.3f} ± {np.nanstd(values, ddof=1):.3f}" if np.isfinite(values).sum() > 1
                          else "n/a"))
        lines.append(f"| {label} | {density:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    import mlflow

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment-name", default="paper_fmnist")
    args = parser.parse_args()
    mlflow.set_tracking_uri(args.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True,
                              filter_string=f"tags.experiment_name = '{args.experiment_name}'")
    # the grid's audit runs (stage=report / stage=compare runs carry the tag too, without metrics)
    runs = runs[(runs["status"] == "FINISHED") & runs["metrics.test_accuracy"].notna()]
    print(table(runs))


if __name__ == "__main__":
    main()
