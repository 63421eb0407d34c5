"""Train K MLPs at once: their layers stacked into grouped matrix multiplies (`torch.baddbmm`).

Shadow models share an architecture and a recipe and differ only in their
initial weights and training sets. Stacking the K weight matrices of each layer
into one (K, out, in) tensor turns K small GEMMs into one batched GEMM; on 2 CPU
cores this beat both a Python loop and a naive `torch.func.vmap` (measured in
`benchmarks/bench_shadows.py`). The summed loss gives every model exactly the
gradient it would get alone, and SGD/Adam are elementwise, so the result equals
sequential training up to floating-point rounding (a unit test checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import TrainConfig
from pipeline.models import MLP
from pipeline.training import NonFiniteLossError, make_optimizer, set_lr, steps_per_epoch

_ACTIVATIONS: dict[type[nn.Module], object] = {nn.ReLU: F.relu, nn.Tanh: torch.tanh, nn.GELU: F.gelu}


def can_batch(models: Sequence[nn.Module]) -> bool:
    """Whether these models can be trained as one grouped MLP."""
    if not models or not all(type(m) is MLP for m in models):
        return False
    shapes = [tuple((n, p.shape) for n, p in m.named_parameters()) for m in models]
    return all(s == shapes[0] for s in shapes)


class GroupedMLP(nn.Module):
    """K copies of one `MLP` architecture with stacked weights: (K, B, in) -> (K, B, C).

    Weight i is stored as (K, in, out), the transpose of `nn.Linear.weight`.
    """

    def __init__(self, models: Sequence[MLP]):
        super().__init__()
        if not can_batch(models):
            raise ValueError("GroupedMLP needs >= 1 MLPs of identical architecture")
        linears = [[m for m in model.modules() if isinstance(m, nn.Linear)] for model in models]
        acts = [m for m in models[0].body if type(m) in _ACTIVATIONS]
        self.activation = _ACTIVATIONS[type(acts[0])] if acts else None
        self.weights = nn.ParameterList(
            # stored transposed, (K, in, out): a contiguous right operand is faster in bmm
            nn.Parameter(torch.stack([ls[i].weight.detach().t().contiguous() for ls in linears]))
            for i in range(len(linears[0]))
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([ls[i].bias.detach().clone() for ls in linears]))
            for i in range(len(linears[0]))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(2)  # (K, B, in)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b.unsqueeze(1), h, w)  # (K, B, out)
            if i < last and self.activation is not None:
                h = self.activation(h)
        return h

    @torch.no_grad()
    def write_back(self, models: Sequence[MLP]) -> None:
        """Copy model k's trained weights into `models[k]`."""
        for k, model in enumerate(models):
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            for i, lin in enumerate(linears):
                lin.weight.copy_(self.weights[i][k].t())
                lin.bias.copy_(self.biases[i][k])


def train_grouped(
    models: Sequence[MLP],
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    recipe: TrainConfig,
    generators: Sequence[torch.Generator],
) -> None:
    """Train `models[k]` on `(xs[k], ys[k])` with `generators[k]`'s batch order, all at once.

    Same recipe, same per-model batch order as `pipeline.training.train`; every
    model's training set must have the same size.
    """
    sizes = {len(y) for y in ys}
    if len(sizes) != 1 or not (len(models) == len(xs) == len(ys) == len(generators)):
        raise ValueError(f"grouped training needs equal-size training sets, got sizes {sorted(sizes)}")
    n = sizes.pop()
    grouped = GroupedMLP(models)
    x_all, y_all = torch.stack(list(xs)), torch.stack(list(ys))  # (K, n, ...), (K, n)
    k_idx = torch.arange(len(models)).unsqueeze(1)
    optimizer = make_optimizer(grouped.parameters(), recipe)
    total = recipe.epochs * steps_per_epoch(n, recipe.batch_size)
    step = 0
    grouped.train()
    for _ in range(recipe.epochs):
        perms = torch.stack([torch.randperm(n, generator=g) for g in generators])  # (K, n)
        for start in range(0, n, recipe.batch_size):
            idx = perms[:, start : start + recipe.batch_size]  # (K, b)
            set_lr(optimizer, recipe, step, total)
            optimizer.zero_grad(set_to_none=True)
            logits = grouped(x_all[k_idx, idx])  # (K, b, C)
            per_model = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y_all[k_idx, idx].reshape(-1), reduction="none"
            ).view(len(models), -1).mean(1)
            loss = per_model.sum()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"shadow training loss is {loss.item()}; lower train.lr")
            loss.backward()
            optimizer.step()
            step += 1
    grouped.write_back(models)
