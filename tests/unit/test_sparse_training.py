"""End to end: an MLP trained by the engine at density 0.05 on sklearn digits stays within 3 points of dense.

Issue 5, acceptance 2. The loop is the one the compress stage runs: masked gradients, optimizer
step, masks re-applied to weights and optimizer state, prune-and-grow every ``update_every`` steps
with a cosine-annealed regrowth ratio (official SafeCompress/ITOP schedule), at ERK density 0.05.
"""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import sparse

EPOCHS, BATCH, LR, UPDATE_EVERY = 30, 64, 3e-3, 25


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one intra-op thread is as fast, and robust when other jobs load the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)  # (1797, 64)
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm[:1200]], y[perm[:1200]], x[perm[1200:]], y[perm[1200:]]


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def train(
    digits, density: float | None, grow: str = "random", seed: int = 0
) -> tuple[float, nn.Module, object]:
    xtr, ytr, xte, yte = digits
    torch.manual_seed(seed)
    model = mlp()
    g = torch.Generator().manual_seed(seed)
    masks = None
    if density is not None:
        masks = sparse.random_masks(model, density, "erk", g)
        masks.apply(model)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    steps_per_epoch = math.ceil(len(ytr) / BATCH)
    total = EPOCHS * steps_per_epoch
    last_update = int(0.75 * total)
    step = 0
    for _ in range(EPOCHS):
        order = torch.randperm(len(ytr), generator=g)
        for i in range(steps_per_epoch):
            idx = order[i * BATCH : (i + 1) * BATCH]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            step += 1
            if masks is None:
                opt.step()
                continue
            params = dict(model.named_parameters())
            grads = {n: params[n].grad.detach().clone() for n in masks.masks}  # dense, for RigL
            masks.apply_to_grads(model)
            opt.step()
            masks.apply(model)
            masks.apply_to_optimizer(opt, model)
            if step % UPDATE_EVERY == 0 and step <= last_update:
                ratio = sparse.regrowth_ratio_at("cosine", step / last_update, 0.3, 0.005)
                sparse.prune_and_grow(
                    model, masks, ratio, "magnitude", grow, g, grads=grads, optimizer=opt
                )
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    return acc, model, masks


@pytest.fixture(scope="module")
def dense_accuracy(digits):
    acc, _, _ = train(digits, None)
    assert acc > 0.95  # the dense teacher itself must be good, or the comparison means nothing
    return acc


@pytest.mark.parametrize("grow", ["random", "gradient"])
def test_sparse_mlp_at_density_005_is_within_3_points_of_dense(digits, dense_accuracy, grow):
    acc, model, masks = train(digits, 0.05, grow)
    print(f"digits test accuracy: dense {dense_accuracy:.4f}, sparse(0.05, {grow}) {acc:.4f}")
    assert masks.n_active() == round(0.05 * masks.n_total())
    params = dict(model.named_parameters())
    assert sum(int((params[n] != 0).sum()) for n in masks.masks) <= masks.n_active()
    assert acc >= dense_accuracy - 0.03
    # and the export of this model is really small and loads back exactly
    data = sparse.export_model(model, masks)
    assert len(data) <= 0.09 * sparse.dense_size_bytes(model)
    x = digits[2]
    with torch.no_grad():
        assert torch.equal(sparse.load_export(data, mlp()).eval()(x), model(x))
