"""Benchmark: SafeCompress (N = 4 candidates) vs plain DST at equal epochs on digits, and
batched vs sequential candidate probes.

Prints ratios measured in one run (issue 6 target: SafeCompress/DST <= 1.5x) and writes
benchmarks/results/compress.md. Run by hand: `python benchmarks/bench_compress.py`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from pipeline.context import load_data
from pipeline.stages import compress, teacher

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def cfg_for(root: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            config_name="config",
            overrides=["dataset=digits", f"paths.root={root}", "runtime.progress=false", "tracking.enabled=false",
                       "compress.update_every=20", *overrides],
        )


def timed(cfg) -> tuple[float, float]:
    c = compress.compress_config(cfg)
    data = load_data(cfg)
    t = teacher.run(cfg)
    start = time.perf_counter()
    model, masks, history, table = compress.METHODS[c.method](cfg, c, data, t)
    return time.perf_counter() - start, history[-1]["val_accuracy"]


def main() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    root = tempfile.mkdtemp(prefix="bench-compress-")
    variants = {
        "dst": ["compress=dst"],
        "safecompress metric N=4 (batched probes)": ["compress=safecompress", "compress.variant=metric"],
        "safecompress metric N=4 (sequential probes)": ["compress=safecompress", "compress.variant=metric",
                                                        "runtime.batched_probes=false"],
        "safecompress bmia N=4 (batched probes)": ["compress=safecompress", "compress.variant=bmia"],
        "safecompress bmia N=4 (sequential probes)": ["compress=safecompress", "compress.variant=bmia",
                                                      "runtime.batched_probes=false"],
    }
    timed(cfg_for(root, "compress=dst", "train.epochs=2"))  # warm-up: imports, teacher cache
    rows = {}
    for name, ov in variants.items():
        rows[name] = timed(cfg_for(root, *ov))
        print(f"{name}: {rows[name][0]:.2f} s, val acc {rows[name][1]:.3f}", flush=True)
    base = rows["dst"][0]
    load = os.getloadavg()[0]
    lines = [
        f"# Compress wall time on digits (MLP 64-256-256-10, 30 epochs, density 0.05, update every 20 steps), "
        f"load average {load:.1f} on {os.cpu_count()} cores",
        "",
        "| method | seconds | vs DST | val accuracy |",
        "|---|---|---|---|",
    ]
    for name, (sec, acc) in rows.items():
        lines.append(f"| {name} | {sec:.2f} | {sec / base:.2f}x | {acc:.3f} |")
    for v in ("metric", "bmia"):
        b = rows[f"safecompress {v} N=4 (batched probes)"][0]
        s = rows[f"safecompress {v} N=4 (sequential probes)"][0]
        lines.append(f"\nbatched vs sequential probes ({v}): {s / b:.2f}x faster")
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "compress.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    sys.exit(main())
