"""Benchmark: SafeCompress (N = 4 candidates) vs plain DST at equal epochs on digits, and
batched vs sequential candidate probes.

Prints ratios measured in one run (issue 6 target: SafeCompress/DST <= 1.5x) and writes
benchmarks/results/compress.md. Run by hand: `python benchmarks/bench_compress.py [repeats]`.

Torch uses `runtime.n_threads` threads (`auto`: the cores), as `python -m pipeline` does. Every
repeat runs all variants back to back; a ratio is taken within one repeat and the table
reports medians over repeats, of wall time and of this process's CPU time (the CPU time is
steadier on a machine shared with other jobs).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from pipeline import compress_jobs as from_config
from pipeline import threads
from pipeline.context import RunContext, load_data
from pipeline.stages import teacher
from training.compress import train_compressed

CONF = str(Path(__file__).resolve().parents[1] / "conf")
VARIANTS = {
    "dst": ["compress=dst"],
    "safecompress metric N=4 (batched probes)": ["compress=safecompress", "compress.variant=metric"],
    "safecompress metric N=4 (sequential probes)": [
        "compress=safecompress", "compress.variant=metric", "runtime.batched_probes=false",
    ],
    "safecompress bmia N=4 (batched probes)": ["compress=safecompress", "compress.variant=bmia"],
    "safecompress bmia N=4 (sequential probes)": [
        "compress=safecompress", "compress.variant=bmia", "runtime.batched_probes=false",
    ],
}


def cfg_for(root: str, *overrides: str, update_every: int = 20):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            config_name="config",
            overrides=["dataset=digits", f"paths.root={root}", "runtime.progress=false", "tracking.enabled=false",
                       f"compress.update_every={update_every}", *overrides],
        )


def timed(cfg) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, final val accuracy) of the compress method alone."""
    data = load_data(cfg)
    ctx = RunContext.build(cfg)
    job = from_config.job(ctx, data, teacher.run(ctx).model_path)
    wall, cpu = time.perf_counter(), time.process_time()
    history = train_compressed(job).history
    return time.perf_counter() - wall, time.process_time() - cpu, history[-1]["val_accuracy"]


def main() -> None:
    """`bench_compress.py [repeats]`: mask updates every 20 steps (about 10 updates on digits, the
    stress case) and every 50 (the default of conf/compress/safecompress.yaml)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    root = tempfile.mkdtemp(prefix="bench-compress-")
    sections = [section(root, repeats, every) for every in (20, 50)]
    text = "\n\n".join(sections)
    print(text)
    out = Path(__file__).parent / "results" / "compress.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


def section(root: str, repeats: int, update_every: int) -> str:
    cfgs = {name: cfg_for(root, *ov, update_every=update_every) for name, ov in VARIANTS.items()}
    threads.configure(cfgs["dst"])
    timed(cfg_for(root, "compress=dst", "train.epochs=2"))  # warm-up: imports, teacher cache
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in VARIANTS}
    for r in range(repeats):
        for name, cfg in cfgs.items():
            runs[name].append(timed(cfg))
            wall, cpu, acc = runs[name][-1]
            print(f"repeat {r + 1}/{repeats} {name}: {wall:.2f} s wall, {cpu:.2f} s CPU, val acc {acc:.3f}", flush=True)

    def median_ratio(name: str, base: str, col: int) -> float:
        return statistics.median(a[col] / b[col] for a, b in zip(runs[name], runs[base]))

    load = os.getloadavg()[0]
    summary = []
    for v in ("metric", "bmia"):
        name = f"safecompress {v} N=4 (batched probes)"
        summary.append(
            f"SafeCompress {v} N=4 vs DST: {median_ratio(name, 'dst', 0):.2f}x wall, "
            f"{median_ratio(name, 'dst', 1):.2f}x CPU (target <= 1.5x)"
        )
    for v in ("metric", "bmia"):
        b, s = f"safecompress {v} N=4 (batched probes)", f"safecompress {v} N=4 (sequential probes)"
        summary.append(f"batched vs sequential probes ({v}): {median_ratio(s, b, 0):.2f}x faster (wall)")
    lines = [
        f"# Compress time on digits (MLP 64-256-256-10, 30 epochs, density 0.05, update every {update_every} steps, "
        f"{torch.get_num_threads()} torch thread(s)), median of {repeats} repeats, "
        f"load average {load:.1f} on {os.cpu_count()} cores",
        "",
        *[f"- {s}" for s in summary],
        "",
        "| method | wall s | vs DST (wall) | CPU s | vs DST (CPU) | val accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for name, rs in runs.items():
        wall = statistics.median(r[0] for r in rs)
        cpu = statistics.median(r[1] for r in rs)
        lines.append(
            f"| {name} | {wall:.2f} | {median_ratio(name, 'dst', 0):.2f}x | {cpu:.2f} | "
            f"{median_ratio(name, 'dst', 1):.2f}x | {rs[-1][2]:.3f} |"
        )
    print("\n".join(summary), flush=True)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
