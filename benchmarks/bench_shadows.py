"""Benchmark: training 8 shadow MLPs on digits, grouped vs the project's sequential training path.

    python benchmarks/bench_shadows.py                      # 1 and 2 threads, 3 repeats each
    python benchmarks/bench_shadows.py --threads 1 --repeats 5

Rows, all with the shadow recipe below and the same per-model data and batch order:
- sequential `train` (the baseline): `pipeline.training.train` once per model, the path
  every single model in the project takes (it also evaluates on its training set after
  each epoch, as it always does);
- sequential, no per-epoch eval: the same steps (`train_step`) without that evaluation,
  a stricter baseline;
- grouped: `pipeline.batched.train_grouped` (the shadows stage's path): stacked weights,
  batched GEMMs, hand-written backward into preallocated buffers, fused optimizer;
- grouped, autograd: the previous implementation (`GroupedMLP` forward, autograd,
  unfused `torch.optim`), kept here as the "before";
- torch.func vmap: `functional_call` under `vmap`, autograd, unfused optimizer.

Within one repeat every row runs once, one after another, so a ratio compares timings
taken seconds apart; the table reports the median over repeats of each time and of each
ratio. The machine may be shared: the load average is recorded beside the numbers.
Target (issue 4): grouped >= 3x the sequential loop. Writes benchmarks/results/shadows.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from pipeline.batched import GroupedMLP, train_grouped
from pipeline.config import TrainConfig
from pipeline.data import load_digits, make_splits
from pipeline.models import MLP
from pipeline.training import (
    batch_indices,
    make_optimizer,
    set_lr,
    steps_per_epoch,
    train,
    train_step,
)

K = 8
# the project's default recipe (SGD, momentum 0.9, weight decay 5e-4, cosine schedule), 20 epochs
RECIPE = TrainConfig(epochs=20, batch_size=64, optimizer="sgd", lr=0.05)


def setup():
    ds = load_digits(image=False)
    sp = make_splits(len(ds), {"train": 0.3, "val": 0.15, "test": 0.15, "population": 0.4}, seed=0)
    pop = torch.from_numpy(sp.population)
    halves = [
        pop[torch.randperm(len(pop), generator=torch.Generator().manual_seed(k))[: len(pop) // 2]]
        for k in range(K)
    ]
    xs = [ds.x[i] for i in halves]
    ys = [ds.y[i] for i in halves]
    torch.manual_seed(0)
    models = [MLP((64,), 10, (256, 256)) for _ in range(K)]
    return xs, ys, models


def run_loop(models, xs, ys):
    for k, m in enumerate(models):
        train(m, xs[k], ys[k], RECIPE, torch.Generator().manual_seed(k))


def run_loop_no_eval(models, xs, ys):
    for k, m in enumerate(models):
        optimizer = make_optimizer(m.parameters(), RECIPE)
        g, n = torch.Generator().manual_seed(k), len(ys[k])
        total, step = RECIPE.epochs * steps_per_epoch(n, RECIPE.batch_size), 0
        for _ in range(RECIPE.epochs):
            for idx in batch_indices(n, RECIPE.batch_size, g):
                set_lr(optimizer, RECIPE, step, total)
                train_step(m, optimizer, xs[k][idx], ys[k][idx])
                step += 1


def run_grouped(models, xs, ys):
    train_grouped(models, xs, ys, RECIPE, [torch.Generator().manual_seed(k) for k in range(K)])


def run_grouped_autograd(models, xs, ys):
    """The grouped path before the hand-written backward: GroupedMLP + autograd + torch.optim."""
    grouped = GroupedMLP(models)
    x_all, y_all = torch.stack(xs), torch.stack(ys)
    n = len(ys[0])
    k_idx = torch.arange(K).unsqueeze(1)
    gens = [torch.Generator().manual_seed(k) for k in range(K)]
    optimizer = make_optimizer(grouped.parameters(), RECIPE)
    total, step = RECIPE.epochs * steps_per_epoch(n, RECIPE.batch_size), 0
    for _ in range(RECIPE.epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens])
        for s in range(0, n, RECIPE.batch_size):
            idx = perms[:, s : s + RECIPE.batch_size]
            set_lr(optimizer, RECIPE, step, total)
            optimizer.zero_grad(set_to_none=True)
            logits = grouped(x_all[k_idx, idx])
            loss = F.cross_entropy(
                logits.reshape(-1, 10), y_all[k_idx, idx].reshape(-1), reduction="none"
            )
            loss = loss.view(K, -1).mean(1).sum()
            if not torch.isfinite(loss):
                raise RuntimeError("non-finite loss")
            loss.backward()
            optimizer.step()
            step += 1
    grouped.write_back(models)


def run_vmap(models, xs, ys):
    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")
    plist = [torch.nn.Parameter(p) for p in params.values()]
    opt = make_optimizer(plist, RECIPE)
    names = list(params)
    x_all, y_all = torch.stack(xs), torch.stack(ys)
    n = len(ys[0])
    k_idx = torch.arange(K).unsqueeze(1)
    gens = [torch.Generator().manual_seed(k) for k in range(K)]

    def f(p, b, x):
        return functional_call(base, (p, b), (x,))

    step, total = 0, RECIPE.epochs * steps_per_epoch(n, RECIPE.batch_size)
    for _ in range(RECIPE.epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens])
        for s in range(0, n, RECIPE.batch_size):
            idx = perms[:, s : s + RECIPE.batch_size]
            set_lr(opt, RECIPE, step, total)
            opt.zero_grad()
            logits = vmap(f)(dict(zip(names, plist)), buffers, x_all[k_idx, idx])
            loss = F.cross_entropy(
                logits.reshape(-1, 10), y_all[k_idx, idx].reshape(-1), reduction="none"
            )
            loss.view(K, -1).mean(1).sum().backward()
            opt.step()
            step += 1


METHODS = {
    "sequential `train` (baseline)": run_loop,
    "sequential, no per-epoch eval": run_loop_no_eval,
    "grouped (`train_grouped`)": run_grouped,
    "grouped, autograd (before)": run_grouped_autograd,
    "torch.func vmap": run_vmap,
}
BASELINE, GROUPED = "sequential `train` (baseline)", "grouped (`train_grouped`)"


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def measure(n_threads: int, n_repeats: int) -> tuple[list[str], dict[str, float]]:
    """Markdown lines for one thread count, and the median ratio per method."""
    torch.set_num_threads(n_threads)
    xs, ys, models = setup()
    run_grouped(copy.deepcopy(models), xs, ys)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    for _ in range(n_repeats):
        for name, fn in METHODS.items():
            times[name].append(timed(fn, copy.deepcopy(models), xs, ys))
    ratios = {
        name: statistics.median(b / t for b, t in zip(times[BASELINE], times[name]))
        for name in METHODS
    }
    lines = [
        f"## {n_threads} thread{'s' if n_threads > 1 else ''} (load average {os.getloadavg()[0]:.1f} after)",
        "",
        "| method | seconds (median) | seconds (all repeats) | speed-up vs sequential `train` (median) |",
        "|---|---|---|---|",
    ]
    for name in METHODS:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        lines.append(
            f"| {name} | {statistics.median(times[name]):.2f} | {runs} | {ratios[name]:.2f}x |"
        )
    no_eval = statistics.median(
        b / t for b, t in zip(times["sequential, no per-epoch eval"], times[GROUPED])
    )
    lines += [
        "",
        f"grouped vs sequential without per-epoch eval, {n_threads} thread(s): {no_eval:.2f}x",
        "",
    ]
    return lines, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs of every method per thread count"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    lines = [
        f"# Shadow training: {K} MLPs 64-256-256-10 on digits, {RECIPE.epochs} epochs, batch {RECIPE.batch_size}, "
        f"SGD momentum {RECIPE.momentum}, weight decay {RECIPE.weight_decay}",
        "",
        f"`python benchmarks/bench_shadows.py --threads {' '.join(map(str, args.threads))} --repeats {args.repeats}`"
        f" on {dt.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"load average {load_before:.1f} before. Target (issue 4): grouped >= 3x sequential `train`.",
        "",
    ]
    for n_threads in args.threads:
        block, _ = measure(n_threads, args.repeats)
        print("\n".join(block), flush=True)
        lines += block
    text = "\n".join(lines)
    out = Path(__file__).parent / "results" / "shadows.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
