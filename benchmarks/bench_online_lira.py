"""Benchmark: online LiRA vs the loss attack against the number of reference models (issue 27).

    nice -n 10 python benchmarks/bench_online_lira.py                      # 4, 8, 16, 32, 64 references
    python benchmarks/bench_online_lira.py --refs 4,8 --settings dense --root /tmp/quick

On purchase_synth (default size: 5,000 members, 2,000 test non-members, seed 0) it audits
- `dense`: the dense teacher (compress=dense), references with the teacher's recipe;
- `dst`: DST at density 0.05 (compress=dst), references trained by DST itself
  (`attack.reference=both`: `*_matched` columns) and dense ones,
with `attack=online shadows=online`: references on complementary halves of population + the
audit candidates, so every audit point is IN for K/2 of them. The references are cached one
model at a time, so the largest K is trained first and every smaller K reads its first models.
Each row: AUC and TPR at 1% / 0.1% FPR of the loss attack, offline and online LiRA (variance
`auto`: per-example from 32 IN + 32 OUT, else global; and each variance forced), RMIA; plus the
cost: seconds per reference model (cold cache, grouped training; matched references one DST
run each). Writes benchmarks/results/online_lira.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

import pipeline.config  # noqa: F401  (registers the root schema)
from pipeline.__main__ import run_stage
from pipeline.context import RunContext
from pipeline.stages import shadows as shadows_stage

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
SETTINGS = {
    "dense": ["compress=dense", "compress.density=1.0", "attack.reference=dense"],
    "dst": ["compress=dst", "compress.density=0.05", "attack.reference=both"],
}
ATTACKS = ["loss", "lira_offline", "lira_online", "lira_online_global", "lira_online_per_example", "rmia"]
EXTRA = [
    "+attack.audit.lira_online_global={attack: lira_online, variance: global}",
    "+attack.audit.lira_online_per_example={attack: lira_online, variance: per_example}",
]
METRICS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")


def cfg_for(setting: str, k: int, root: Path, stage: str = "attack"):
    overrides = [
        f"stage={stage}", "attack=online", "shadows=online", f"shadows.n_models={k}", *SETTINGS[setting], *EXTRA,
        f"paths.root={root}", "tracking.enabled=false", "runtime.progress=false", "runtime.n_threads=1", "seed=0",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def reference_cost(setting: str, k: int, root: Path) -> dict[str, float]:
    """Seconds per reference on a cold cache: dense (grouped) and, for dst, matched (one run each)."""
    cfg = cfg_for(setting, k, root)
    ctx = RunContext.build(cfg)
    t0 = time.perf_counter()
    dense = shadows_stage.run(ctx)
    out = {"dense_s_per_ref": (time.perf_counter() - t0) / k, "dense_cache_hits": dense.n_cache_hits}
    if setting == "dst":
        t0 = time.perf_counter()
        matched = shadows_stage.run(ctx, "matched")
        out |= {"matched_s_per_ref": (time.perf_counter() - t0) / k, "matched_cache_hits": matched.n_cache_hits}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", default="4,8,16,32,64")
    ap.add_argument("--settings", default="dense,dst")
    ap.add_argument("--root", default="/tmp/bench-online-lira")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    refs = sorted(int(k) for k in args.refs.split(","))
    root, out = Path(args.root), Path(args.out)
    rows, costs = [], {}
    t_all = time.perf_counter()
    for setting in args.settings.split(","):
        costs[setting] = reference_cost(setting, max(refs), root)
        print(setting, "reference cost", costs[setting], flush=True)
        for k in refs:
            t0 = time.perf_counter()
            res = run_stage(cfg_for(setting, k, root))
            m = res.metrics
            row = {"setting": setting, "n_references": k, "attack_s": round(time.perf_counter() - t0, 1),
                   "per_example_variance": m.get("audit_lira_online_per_example_variance")}
            suffixes = [""] + (["_matched"] if setting == "dst" else [])
            for att in ATTACKS:
                for suf in suffixes:
                    for met in METRICS:
                        row[f"{att}{suf}_{met}"] = m.get(f"audit_{att}{suf}_{met}")
            row["test_accuracy"] = m.get("test_accuracy")
            rows.append(row)
            print({k2: v for k2, v in row.items() if "auc" in k2 or k2 == "n_references"}, flush=True)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "online_lira.csv", index=False)
    plot(table, out / "online_lira.png")
    write_md(table, costs, out / "online_lira.md", time.perf_counter() - t_all, args)


def plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(table.setting))
    fig, axes = plt.subplots(2, len(settings), figsize=(5 * len(settings), 7), squeeze=False)
    lines = [("lira_online", "online LiRA (auto)"), ("lira_offline", "offline LiRA"), ("rmia", "RMIA"),
             ("loss", "loss attack")]
    for j, setting in enumerate(settings):
        t = table[table.setting == setting].sort_values("n_references")
        refs_col = "_matched" if setting == "dst" else ""
        for i, (met, label) in enumerate((("auc", "AUC"), ("tpr_at_0.1pct_fpr", "TPR at 0.1% FPR"))):
            ax = axes[i][j]
            for att, name in lines:
                suf = "" if att == "loss" else refs_col
                ax.plot(t.n_references, t[f"{att}{suf}_{met}"], marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(t.n_references), [str(k) for k in t.n_references])
            ax.set_xlabel("reference models")
            ax.set_ylabel(label)
            refs = "DST-trained (matched) references" if setting == "dst" else "dense references"
            ax.set_title(f"purchase_synth, {'dense teacher' if setting == 'dense' else 'DST d=0.05'}: {label}\n{refs}",
                         fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_md(table: pd.DataFrame, costs: dict, path: Path, seconds: float, args) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Online LiRA vs the loss attack, against the number of reference models",
        "",
        f"`{' '.join(['python benchmarks/bench_online_lira.py', '--refs', args.refs, '--settings', args.settings])}` "
        f"({dt.date.today()}, {seconds / 60:.1f} min wall, 1 torch thread, load average {load:.1f} at the end; "
        "purchase_synth default size, seed 0, audit = 2,000 audit members vs 2,000 test non-members, one seed: "
        "no interval).",
        "",
        "Cost per reference model (cold cache): "
        + "; ".join(
            f"{s}: dense " + ("from the cache" if c["dense_cache_hits"] else f"{c['dense_s_per_ref']:.1f} s (grouped)")
            + (f", DST-trained {c['matched_s_per_ref']:.1f} s (one DST run each)" if "matched_s_per_ref" in c else "")
            for s, c in costs.items()
        ),
        "",
        "![AUC and TPR@0.1%FPR vs references](online_lira.png)",
        "",
    ]
    for setting in dict.fromkeys(table.setting):
        t = table[table.setting == setting]
        suf = "_matched" if setting == "dst" else ""
        lines += [f"## {setting}" + (" (references trained by DST: `*_matched`)" if suf else ""), ""]
        head = ["K", "per-ex. var.", "loss AUC", "loss TPR@0.1%", "online AUC", "online TPR@0.1%",
                "online global AUC / TPR@0.1%", "online per-ex. AUC / TPR@0.1%", "offline AUC / TPR@0.1%",
                "RMIA AUC / TPR@0.1%"]
        if suf:
            head += ["online, dense refs AUC / TPR@0.1%"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

        def pair(r, att):
            return f"{r[f'{att}_auc']:.3f} / {r[f'{att}_tpr_at_0.1pct_fpr']:.4f}"

        for _, r in t.iterrows():
            cells = [str(r.n_references), "yes" if r.per_example_variance == 1.0 else "no",
                     f"{r.loss_auc:.3f}", f"{r['loss_tpr_at_0.1pct_fpr']:.4f}",
                     f"{r[f'lira_online{suf}_auc']:.3f}", f"{r[f'lira_online{suf}_tpr_at_0.1pct_fpr']:.4f}",
                     pair(r, f"lira_online_global{suf}"), pair(r, f"lira_online_per_example{suf}"),
                     pair(r, f"lira_offline{suf}"), pair(r, f"rmia{suf}")]
            if suf:
                cells.append(pair(r, "lira_online"))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
