"""Benchmark: training 8 shadow MLPs on digits, grouped vs the project's sequential training path.

    python benchmarks/bench_shadows.py                      # 1 and 2 threads, 3 repeats each
    python benchmarks/bench_shadows.py --threads 1 --repeats 5

Rows, all with the shadow recipe below and the same per-model data and batch order:
- sequential `train` (the baseline): `training.loops.train` once per model, the path
  every single model in the project takes (it also evaluates on its training set after
  each epoch, as it always does);
- sequential, no per-epoch eval: the same steps (`train_step`) without that evaluation,
  a stricter baseline;
- grouped: `training.batched.train_grouped` (the shadows stage's path): stacked weights,
  batched GEMMs, hand-written backward into preallocated buffers, fused optimizer;
- grouped, autograd: the previous implementation (`GroupedMLP` forward, autograd,
  unfused `torch.optim`), kept here as the "before";
- torch.func vmap: `functional_call` under `vmap`, autograd, unfused optimizer.

Within one repeat every row runs once, one after another, so a ratio compares timings
taken seconds apart; the table reports the median over repeats of each time and of each
ratio, in wall-clock and in process CPU time (steadier when the machine is shared; the
load average is recorded beside the numbers). The batched GEMMs of the grouped step, run
alone, give a floor for the grouped time and so a ceiling for its speed-up.
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

from pipeline.config import TrainConfig
from training.batched import GroupedMLP, train_grouped
from training.data import make_splits
from training.embedded import load_digits
from training.loops import (
    batch_indices,
    make_optimizer,
    set_lr,
    steps_per_epoch,
    train,
    train_step,
)
from training.models import MLP

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


def run_gemms_only(models, xs, ys):
    """Only the 8 batched GEMMs of every grouped step (3 forward, 3 weight-gradient, 2 input-gradient).

    Same shapes, orientations (the head transposed, as in `train_grouped`) and step count
    as `run_grouped`, nothing else: the floor for a grouped implementation on these GEMMs.
    """
    n = len(ys[0])
    w1, w2, w3 = torch.randn(K, 64, 256), torch.randn(K, 256, 256), torch.randn(K, 10, 256)
    g1, g2, g3 = torch.empty_like(w1), torch.empty_like(w2), torch.empty_like(w3)
    sizes = {min(RECIPE.batch_size, n - s) for s in range(0, n, RECIPE.batch_size)}
    # per batch size, made once like the trainer's: x, h1, h2, dh1, dh2 (K, b, d), logits (K, 10, b)
    buffers = {
        b: [torch.randn(K, b, d) for d in (64, 256, 256, 256, 256)] + [torch.randn(K, 10, b)]
        for b in sizes
    }
    for _ in range(RECIPE.epochs):
        for s in range(0, n, RECIPE.batch_size):
            x, h1, h2, dh1, dh2, logits = buffers[min(RECIPE.batch_size, n - s)]
            torch.bmm(x, w1, out=h1)
            torch.bmm(h1, w2, out=h2)
            torch.bmm(w3, h2.transpose(1, 2), out=logits)
            torch.bmm(logits, h2, out=g3)
            torch.bmm(logits.transpose(1, 2), w3, out=dh2)
            torch.bmm(h1.transpose(1, 2), dh2, out=g2)
            torch.bmm(dh2, w2.transpose(1, 2), out=dh1)
            torch.bmm(x.transpose(1, 2), dh1, out=g1)


def training_flops(n: int, with_eval: bool) -> float:
    """Multiply-add FLOPs (x2) of training K models on n examples each for RECIPE.epochs."""
    layers = [(64, 256), (256, 256), (256, 10)]
    forward = sum(2 * i * o for i, o in layers)  # per example
    backward = 2 * forward - 2 * layers[0][0] * layers[0][1]  # no input gradient for layer 1
    per_epoch = n * (forward + backward) + (n * forward if with_eval else 0)
    return K * RECIPE.epochs * per_epoch


METHODS = {
    "sequential `train` (baseline)": run_loop,
    "sequential, no per-epoch eval": run_loop_no_eval,
    "grouped (`train_grouped`)": run_grouped,
    "grouped, autograd (before)": run_grouped_autograd,
    "torch.func vmap": run_vmap,
}
BASELINE, NO_EVAL, GROUPED = (
    "sequential `train` (baseline)",
    "sequential, no per-epoch eval",
    "grouped (`train_grouped`)",
)


def timed(fn, *args) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of `fn(*args)`."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def _median_ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def measure(n_threads: int, n_repeats: int) -> tuple[list[str], str]:
    """Markdown lines for one thread count, and its one-line summary."""
    torch.set_num_threads(n_threads)
    xs, ys, models = setup()
    trained = {}
    for (
        name,
        fn,
    ) in METHODS.items():  # warm-up: the first run in a process pays ~1 s of one-off set-up
        trained[name] = copy.deepcopy(models)
        fn(trained[name], xs, ys)
    max_diff = max(
        (p - q).abs().max().item()
        for a, b in zip(trained[BASELINE], trained[GROUPED])
        for p, q in zip(a.parameters(), b.parameters())
    )
    wall: dict[str, list[float]] = {name: [] for name in [*METHODS, "gemms"]}
    cpu: dict[str, list[float]] = {name: [] for name in wall}
    for _ in range(n_repeats):
        for name, fn in [*METHODS.items(), ("gemms", run_gemms_only)]:
            w, c = timed(fn, copy.deepcopy(models), xs, ys)
            wall[name].append(w)
            cpu[name].append(c)
    med = statistics.median
    lines = [
        f"## {n_threads} thread{'s' if n_threads > 1 else ''} "
        f"(load average {os.getloadavg()[0]:.1f} after)",
        "",
        "| method | wall s (median) | wall s (each repeat) | speed-up, wall (median) "
        "| CPU s (median) | speed-up, CPU time (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name in METHODS:
        runs = ", ".join(f"{t:.2f}" for t in wall[name])
        lines.append(
            f"| {name} | {med(wall[name]):.2f} | {runs} | {_median_ratio(wall[BASELINE], wall[name]):.2f}x "
            f"| {med(cpu[name]):.2f} | {_median_ratio(cpu[BASELINE], cpu[name]):.2f}x |"
        )
    n = len(ys[0])
    gflop = training_flops(n, with_eval=False) / 1e9
    lines += [
        "",
        f"- grouped vs sequential without per-epoch eval, {n_threads} thread(s): "
        f"{_median_ratio(wall[NO_EVAL], wall[GROUPED]):.2f}x wall, "
        f"{_median_ratio(cpu[NO_EVAL], cpu[GROUPED]):.2f}x CPU time",
        f"- same models: largest |weight difference| between grouped and sequential `train` "
        f"after training: {max_diff:.1e}",
        f"- the batched GEMMs alone (no other work): {med(wall['gemms']):.2f} s wall, "
        f"{med(cpu['gemms']):.2f} s CPU, {gflop / med(wall['gemms']):.0f} GFLOP/s; "
        f"grouped training runs its {gflop:.1f} GFLOP at {gflop / med(wall[GROUPED]):.0f} GFLOP/s, "
        f"sequential `train` its {training_flops(n, with_eval=True) / 1e9:.1f} GFLOP "
        f"(eval included) at {training_flops(n, with_eval=True) / 1e9 / med(wall[BASELINE]):.0f} GFLOP/s",
        f"- ceiling at this GEMM rate, sequential `train` / GEMMs alone: "
        f"{_median_ratio(wall[BASELINE], wall['gemms']):.2f}x wall, "
        f"{_median_ratio(cpu[BASELINE], cpu['gemms']):.2f}x CPU time",
        "",
    ]
    summary = (
        f"summary: grouped vs sequential `train`, {n_threads} thread(s): "
        f"{_median_ratio(wall[BASELINE], wall[GROUPED]):.2f}x wall, "
        f"{_median_ratio(cpu[BASELINE], cpu[GROUPED]):.2f}x CPU time (target >= 3x; GEMM-bound ceiling "
        f"{_median_ratio(wall[BASELINE], wall['gemms']):.2f}x)"
    )
    return lines, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to measure"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs of every method per thread count"
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
    summaries = []
    for n_threads in args.threads:
        block, summary = measure(n_threads, args.repeats)
        print("\n".join(block), flush=True)
        lines += block
        summaries.append(summary)
    print("\n".join(summaries))  # benchmarks/run_all.py reports these lines
    lines += ["## Summary", "", *(f"- {s[len('summary: '):]}" for s in summaries)]
    text = "\n".join(lines)
    out = Path(__file__).parent / "results" / "shadows.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
