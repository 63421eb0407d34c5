"""Benchmark: training 8 shadow MLPs on digits, grouped (batched GEMM) vs a sequential loop vs torch.func.vmap.

Prints the speed-up ratios measured in one run and writes them to
benchmarks/results/shadows.md. Target (issue 4): grouped >= 3x the loop on 2 cores.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from pipeline.batched import train_grouped
from pipeline.config import TrainConfig
from pipeline.data import load_digits, make_splits
from pipeline.models import MLP
from pipeline.training import make_optimizer, set_lr, train

K = 8
RECIPE = TrainConfig(epochs=20, batch_size=64, optimizer="sgd", lr=0.05)


def setup():
    ds = load_digits(image=False)
    sp = make_splits(len(ds), {"train": 0.3, "val": 0.15, "test": 0.15, "population": 0.4}, seed=0)
    pop = torch.from_numpy(sp.population)
    halves = [pop[torch.randperm(len(pop), generator=torch.Generator().manual_seed(k))[: len(pop) // 2]] for k in range(K)]
    xs = [ds.x[i] for i in halves]
    ys = [ds.y[i] for i in halves]
    torch.manual_seed(0)
    models = [MLP((64,), 10, (256, 256)) for _ in range(K)]
    return xs, ys, models


def run_loop(models, xs, ys):
    for k, m in enumerate(models):
        train(m, xs[k], ys[k], RECIPE, torch.Generator().manual_seed(k))


def run_grouped(models, xs, ys):
    train_grouped(models, xs, ys, RECIPE, [torch.Generator().manual_seed(k) for k in range(K)])


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

    step, total = 0, RECIPE.epochs * ((n + RECIPE.batch_size - 1) // RECIPE.batch_size)
    for _ in range(RECIPE.epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in gens])
        for s in range(0, n, RECIPE.batch_size):
            idx = perms[:, s : s + RECIPE.batch_size]
            set_lr(opt, RECIPE, step, total)
            opt.zero_grad()
            logits = vmap(f)(dict(zip(names, plist)), buffers, x_all[k_idx, idx])
            loss = F.cross_entropy(logits.reshape(-1, 10), y_all[k_idx, idx].reshape(-1), reduction="none").view(K, -1).mean(1).sum()
            loss.backward()
            opt.step()
            step += 1


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    xs, ys, models = setup()
    timed(run_grouped, copy.deepcopy(models), xs, ys)  # warm-up
    t_loop = timed(run_loop, copy.deepcopy(models), xs, ys)
    t_grouped = timed(run_grouped, copy.deepcopy(models), xs, ys)
    t_vmap = timed(run_vmap, copy.deepcopy(models), xs, ys)
    lines = [
        f"# Shadow training: {K} MLPs 64-256-256-10 on digits, {RECIPE.epochs} epochs, {torch.get_num_threads()} threads",
        "",
        "| method | seconds | speed-up vs loop |",
        "|---|---|---|",
        f"| sequential loop | {t_loop:.2f} | 1.00x |",
        f"| grouped (baddbmm) | {t_grouped:.2f} | {t_loop / t_grouped:.2f}x |",
        f"| torch.func vmap | {t_vmap:.2f} | {t_loop / t_vmap:.2f}x |",
    ]
    text = "\n".join(lines)
    print(text)
    out = Path(__file__).parent / "results" / "shadows.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
