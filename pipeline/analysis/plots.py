"""Plots shared by stages: accuracy vs membership leakage, with the train-less frontier; a study's trials."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
        cmap = plt.get_cmap("tab20")
        colours = [cmap(i) for i in range(cmap.N)]
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


def plot_study_trials(table: pd.DataFrame, path: Path) -> None:
    """A study's trials (the search's `trials.csv` table): accuracy vs attack AUC per trial,
    Pareto-optimal trials ringed in red and joined.

    Points are coloured by model size when sizes differ (at a fixed density they differ by a
    few bytes, and a colour bar over them only shows matplotlib's offset); otherwise the title
    gives the one size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = table["model_size_bytes"].to_numpy(float)
    finite = sizes[np.isfinite(sizes)]
    varied = len(finite) > 1 and finite.max() - finite.min() > 0.01 * finite.max()
    sc = ax.scatter(
        table["attack_auc"],
        table["accuracy"],
        c=sizes if varied else "tab:blue",
        cmap="viridis" if varied else None,
        s=40,
        edgecolors=["red" if rank == 0 else "none" for rank in table["pareto_rank"]],
        linewidths=1.5,
    )
    front = table[table["pareto_rank"] == 0].sort_values("attack_auc")
    if len(front) > 1:
        ax.plot(front["attack_auc"], front["accuracy"], "r--", lw=1, label="Pareto front")
    ax.scatter([], [], s=40, facecolors="none", edgecolors="red", linewidths=1.5, label="Pareto-optimal trial")
    if varied:
        fig.colorbar(sc, ax=ax, label="model size (bytes)", format=FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title(f"{len(table)} trials", fontsize=10)
    elif len(finite):
        ax.set_title(f"{len(table)} trials, all of model size ≈ {np.median(finite):,.0f} bytes", fontsize=10)
    ax.set_xlabel("attack AUC (val, lower is safer)")
    ax.set_ylabel("accuracy (val)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
