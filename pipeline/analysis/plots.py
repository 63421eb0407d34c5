"""Plots shared by stages: accuracy vs membership leakage, with the train-less frontier."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_tradeoff(frame: pd.DataFrame, path: Path, dataset: str, frontier: pd.DataFrame | None = None) -> Path:
    """Test accuracy vs audit AUC, one series per method across densities (error bars: std over seeds).

    `frontier` (columns accuracy, auc, optionally density), when given, is drawn as the
    train-less frontier, one dashed line per density.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5.5))
    ok = frame.dropna(subset=[c for c in ("test_accuracy", "audit_auc") if c in frame])
    if {"test_accuracy", "audit_auc"} <= set(frame.columns):
        # tab20's colours, then a second marker: more than 10 methods never share a look
        colours = plt.get_cmap("tab20").colors
        for i, (label, g) in enumerate(ok.groupby("label")):
            agg = g.groupby("target_density")[["test_accuracy", "audit_auc"]].agg(["mean", "std"]).sort_index()
            ax.errorbar(
                agg[("audit_auc", "mean")], agg[("test_accuracy", "mean")],
                xerr=agg[("audit_auc", "std")].fillna(0), yerr=agg[("test_accuracy", "std")].fillna(0),
                marker="os^D"[(i // len(colours)) % 4], color=colours[(2 * i + i // 10) % len(colours)],
                capsize=2, label=label,
            )
            for d, r in agg.iterrows():
                ax.annotate(f"{d:g}", (r[("audit_auc", "mean")], r[("test_accuracy", "mean")]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
    if frontier is not None and len(frontier):
        by_density = frontier.groupby("density") if "density" in frontier else [(None, frontier)]
        for (density, f), style in zip(by_density, ("k--", "k:", "k-.", "k-"), strict=False):
            f = f.sort_values("accuracy")
            name = "train-less frontier" + (f" (density {density:g})" if density is not None else "")
            # a one-point frontier has no line to draw: mark the point, so the legend shows what is there
            ax.plot(f["auc"], f["accuracy"], style, lw=1.5, label=name, marker="x" if len(f) == 1 else None,
                    markersize=8)
    ax.set_xlabel("audit AUC (strongest attack; lower is safer)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{dataset}\naccuracy vs membership leakage (point labels: density)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the points stay visible
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
