"""Benchmark: per-example last-layer gradients (the white-box attack's signal, Nasr et al.
S&P'19) via torch.func (vmap over grad, `attacks.signals.compute_signals(with_grads=True)`)
vs a loop of one backward pass per example. Target (issue 4): >= 10x.

Run by hand: `.venv/bin/python benchmarks/bench_attacks_grads.py [--n 1000] [--repeats 3]`.
Writes benchmarks/results/bench_attacks_grads.{csv,md} and prints the ratios of this run.
Two loop baselines: the whole model forward+backward per example (what one writes without
torch.func), and only the head per example on precomputed features (the tightest loop).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attacks.signals import compute_signals

RESULTS = Path(__file__).resolve().parent / "results"


class MLP(nn.Module):
    """The digits MLP of the SPEC (64-256-256-10)."""

    def __init__(self, d_in=64, hidden=256, n_classes=10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, n_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def loop_full(model, x, y):
    out = torch.empty(len(x), *model.head.weight.shape)
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out[i] = model.head.weight.grad
    return out


def loop_head(model, x, y):
    with torch.no_grad():
        feats = model.features(x)
    out = torch.empty(len(x), *model.head.weight.shape)
    for i in range(len(x)):
        model.head.zero_grad(set_to_none=True)
        F.cross_entropy(model.head(feats[i : i + 1]), y[i : i + 1]).backward()
        out[i] = model.head.weight.grad
    return out


def best_of(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return min(times), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = MLP().eval()
    x, y = torch.randn(args.n, 64), torch.randint(0, 10, (args.n,))
    t_func, sig = best_of(lambda: compute_signals(model, x, y, with_grads=True), args.repeats)
    t_full, g_full = best_of(lambda: loop_full(model, x, y), args.repeats)
    t_head, g_head = best_of(lambda: loop_head(model, x, y), args.repeats)
    err = max(
        float(np.abs(sig.grads - g_full.numpy()).max()),
        float(np.abs(sig.grads - g_head.numpy()).max()),
    )
    rows = [
        ("torch.func (compute_signals, with forward)", t_func, 1.0),
        ("loop: full model backward per example", t_full, t_full / t_func),
        ("loop: head backward per example", t_head, t_head / t_func),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}"
    with open(RESULTS / "bench_attacks_grads.csv", "w") as f:
        f.write("method,n,seconds,slowdown_vs_torch_func\n")
        for name, t, r in rows:
            f.write(f"{name},{args.n},{t:.4f},{r:.2f}\n")
    lines = [
        "# Per-example last-layer gradients: torch.func vs per-example backward",
        "",
        f"n = {args.n} examples, MLP 64-256-256-10, best of {args.repeats}; {env}; "
        f"max abs difference {err:.2e}.",
        "",
        "| method | seconds | ratio (loop / torch.func) |",
        "|---|---|---|",
        *[f"| {name} | {t:.4f} | {r:.1f}x |" for name, t, r in rows],
        "",
    ]
    (RESULTS / "bench_attacks_grads.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if err > 1e-4:
        raise SystemExit(f"gradients disagree (max abs difference {err:.2e})")


if __name__ == "__main__":
    main()
