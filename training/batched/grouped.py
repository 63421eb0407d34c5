"""Train K MLPs at once: their layers stacked into grouped matrix multiplies (batched GEMMs).

Shadow models share an architecture and a recipe and differ only in their
initial weights and training sets. Stacking the K weight matrices of each layer
into one (K, in, out) tensor turns K small GEMMs into one batched GEMM. The summed
loss gives every model exactly the gradient it would get alone, and SGD/Adam are
elementwise, so the result equals sequential training up to floating-point
rounding (a unit test checks it).

`GroupedMLP` is the autograd module (used by the candidate probes, `training.batched.probes`).
`train_grouped` (the shadows stage) skips autograd: one flat parameter tensor, a
hand-written backward into buffers allocated once, and torch's fused optimizer,
so a step is the 8 GEMMs of forward and backward plus a few small kernels
(`benchmarks/bench_shadows.py` has the timings).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeGuard, cast

import torch
import torch.nn.functional as F
from torch import nn

from training import interrupt
from training.batched.fused import FusedSGD, fused_optimizer
from training.loops import (
    DivergenceCheck,
    NonFiniteLossError,
    set_lr,
    steps_per_epoch,
)
from training.models import MLP
from training.recipes import TrainConfig

_ACTIVATIONS: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: F.relu,
    nn.Tanh: torch.tanh,
    nn.GELU: F.gelu,
}


def can_batch(models: Sequence[nn.Module]) -> TypeGuard[Sequence[MLP]]:
    """Whether these models can be trained as one grouped MLP (CPU models only: the grouped
    and sparse probe kernels are tuned for CPU GEMMs; on a GPU models train one by one).
    True only when every model is an `MLP`."""
    if not models or not all(type(m) is MLP for m in models):
        return False
    if any(p.device.type != "cpu" for m in models for p in m.parameters()):
        return False
    shapes = [tuple((n, p.shape) for n, p in m.named_parameters()) for m in models]
    return all(s == shapes[0] for s in shapes)


class GroupedMLP(nn.Module):
    """K copies of one `MLP` architecture with stacked weights: (K, B, in) -> (K, B, C).

    Weight i is stored as (K, in, out), the transpose of `nn.Linear.weight`.
    """

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not can_batch(models):
            raise ValueError("GroupedMLP needs >= 1 MLPs of identical architecture")
        linears = [[m for m in model.modules() if isinstance(m, nn.Linear)] for model in models]
        acts = [m for m in cast(MLP, models[0]).body if type(m) in _ACTIVATIONS]  # can_batch: all are MLPs
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


# ----------------------------------------------------------------------------- grouped training

# Activation forward, returning the activation: ReLU and Tanh in place (their backward needs
# only their output), GELU into `out` (its backward needs the input). Activation backward
# (grad w.r.t. the input, written into `out`, which may alias `grad`): the kernels autograd uses.
_ACT_FORWARD = {
    nn.ReLU: lambda z, out: torch.relu_(z),
    nn.Tanh: lambda z, out: torch.tanh_(z),
    nn.GELU: lambda z, out: torch._C._nn.gelu(z, out=out),  # type: ignore[call-arg]  # the out= kernel, not in the stubs
}
_ACT_BACKWARD = {
    nn.ReLU: lambda grad, z, h, out: torch.ops.aten.threshold_backward.grad_input(
        grad, h, 0.0, grad_input=out
    ),
    nn.Tanh: lambda grad, z, h, out: torch.ops.aten.tanh_backward.grad_input(
        grad, h, grad_input=out
    ),
    nn.GELU: lambda grad, z, h, out: torch.ops.aten.gelu_backward.grad_input(
        grad, z, grad_input=out
    ),
}


class _GroupedTrainer:
    """Forward, hand-written backward and optimizer step for K stacked MLPs, allocation-free per step.

    Autograd and `torch.optim` allocate fresh activation, gradient and weight-decay
    tensors every step; for K x 256 x 256 weights these are megabytes, and fresh
    pages cost more than the GEMMs (measured: `aten::add` inside SGD's weight decay
    took a quarter of a grouped step). Here all parameters live in one flat tensor,
    all gradients in another, and every per-step tensor in a workspace allocated
    once per batch size. The backward is the chain rule autograd would run (same
    GEMMs, same activation-backward kernels); unit tests check it against autograd
    and against sequential `training.loops.train`.

    Hidden layers keep weights as (K, in, out) and activations as (K, b, d). The head
    (C ~ 10 outputs) is computed transposed, weights (K, C, in) and logits (K, C, b):
    a GEMM whose output has C = 10 columns runs at ~20 GFLOP/s on MKL, one with
    C = 10 rows at ~90 (measured on 1 core), and the log-softmax over a
    non-last dimension is faster too.
    """

    def __init__(self, models: Sequence[MLP], recipe: TrainConfig):
        if not can_batch(models):
            raise ValueError("grouped training needs >= 1 MLPs of identical architecture")
        linears = [[m for m in model.modules() if isinstance(m, nn.Linear)] for model in models]
        acts = [type(m) for m in models[0].body if type(m) in _ACTIVATIONS]
        self.act = acts[0] if acts else None
        self.n_models = k = len(models)
        self.dims = [linears[0][0].in_features] + [lin.out_features for lin in linears[0]]
        last = len(self.dims) - 2
        # weight shapes: (K, in, out) for hidden layers, (K, out, in) for the head
        shapes = [(k, self.dims[i], self.dims[i + 1]) for i in range(last)]
        shapes.append((k, self.dims[-1], self.dims[-2]))
        n_params = sum(k * (d_in * d_out + d_out) for d_in, d_out in zip(self.dims, self.dims[1:]))
        like = linears[0][0].weight  # dtype and device of every buffer
        self.tensor_kw: dict[str, Any] = {"dtype": like.dtype, "device": like.device}
        self.flat = nn.Parameter(torch.empty(n_params, **self.tensor_kw))
        self.flat.grad = torch.zeros(n_params, **self.tensor_kw)
        self.weights, self.biases = self._views(self.flat.detach(), shapes)
        self.grad_w, self.grad_b = self._views(self.flat.grad, shapes)
        with torch.no_grad():
            for i, w in enumerate(self.weights):
                w.copy_(
                    torch.stack([ls[i].weight if i == last else ls[i].weight.t() for ls in linears])
                )
                self.biases[i].copy_(torch.stack([ls[i].bias for ls in linears]))
        self.optimizer: torch.optim.Optimizer | FusedSGD = (
            FusedSGD(self.flat.detach(), self.flat.grad, recipe)
            if FusedSGD.available(self.flat, recipe)
            else fused_optimizer([self.flat], recipe)
        )
        self._workspaces: dict[int, dict[str, list[torch.Tensor]]] = {}

    @staticmethod
    def _views(flat: torch.Tensor, shapes: list[tuple[int, int, int]]):
        """Weight (K, a, b) and bias (K, out) views into `flat`, layer after layer."""
        weights, biases, at = [], [], 0
        for i, (k, d0, d1) in enumerate(shapes):
            d_out = d0 if i == len(shapes) - 1 else d1
            weights.append(flat[at : at + k * d0 * d1].view(k, d0, d1))
            at += k * d0 * d1
            biases.append(flat[at : at + k * d_out].view(k, d_out))
            at += k * d_out
        assert at == flat.numel(), (at, flat.numel())  # the views tile `flat` exactly
        return weights, biases

    def _workspace(self, b: int) -> dict[str, list[torch.Tensor]]:
        """Pre-activations, activations and their gradients for batch size `b`, made once."""
        if b not in self._workspaces:
            k, hidden, kw = self.n_models, self.dims[1:-1], self.tensor_kw
            self._workspaces[b] = {
                "z": [torch.empty(k, b, d, **kw) for d in hidden],  # (K, b, d) per hidden layer
                "h": [
                    torch.empty(k, b, d, **kw) for d in hidden
                ],  # GELU's outputs (ReLU, Tanh: in z)
                "dh": [torch.empty(k, b, d, **kw) for d in hidden],  # grads of h, then of z
                "logits": [torch.empty(k, self.dims[-1], b, **kw)],  # (K, C, b)
                "dlogits": [torch.empty(k, self.dims[-1], b, **kw)],
                "minus_one": [torch.full((k, 1, b), -1.0, **kw)],
            }
        return self._workspaces[b]

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One optimizer step of every model on its batch, xb (K, b, in), yb (K, b); returns the summed loss."""
        b = xb.shape[1]
        ws = self._workspace(b)
        z, h, dh = ws["z"], ws["h"], ws["dh"]
        last = len(self.weights) - 1
        inputs = [xb]  # the input of each layer, (K, b, in)
        for i in range(last):
            torch.baddbmm(self.biases[i].unsqueeze(1), inputs[i], self.weights[i], out=z[i])
            inputs.append(z[i] if self.act is None else _ACT_FORWARD[self.act](z[i], h[i]))
        logits = torch.baddbmm(
            self.biases[last].unsqueeze(2),
            self.weights[last],
            inputs[last].transpose(1, 2),
            out=ws["logits"][0],
        )  # (K, C, b)
        # loss: sum over models of the mean cross-entropy; its gradient w.r.t. the logits is (softmax - onehot) / b
        log_probs = torch.log_softmax(logits, dim=1)  # (K, C, b)
        target = yb.unsqueeze(1)  # (K, 1, b)
        loss = log_probs.gather(1, target).sum().div_(-b)
        grad = torch.exp(log_probs, out=ws["dlogits"][0])
        grad.scatter_add_(1, target, ws["minus_one"][0]).div_(b)  # (K, C, b)
        torch.bmm(grad, inputs[last], out=self.grad_w[last])  # (K, C, in)
        torch.sum(grad, dim=2, out=self.grad_b[last])
        if last > 0:
            torch.bmm(grad.transpose(1, 2), self.weights[last], out=dh[last - 1])  # (K, b, in)
        for i in range(last - 1, -1, -1):
            grad = dh[i]
            if self.act is not None:  # through the activation, in place: now the grad of z[i]
                _ACT_BACKWARD[self.act](grad, z[i], inputs[i + 1], grad)
            torch.bmm(inputs[i].transpose(1, 2), grad, out=self.grad_w[i])  # (K, in, out)
            torch.sum(grad, dim=1, out=self.grad_b[i])  # (K, out)
            if i > 0:
                torch.bmm(grad, self.weights[i].transpose(1, 2), out=dh[i - 1])  # (K, b, in)
        self.optimizer.step()
        return loss

    @torch.no_grad()
    def write_back(self, models: Sequence[MLP]) -> None:
        """Copy model k's trained weights into `models[k]`."""
        last = len(self.weights) - 1
        for k, model in enumerate(models):
            for i, lin in enumerate(m for m in model.modules() if isinstance(m, nn.Linear)):
                lin.weight.copy_(self.weights[i][k] if i == last else self.weights[i][k].t())
                lin.bias.copy_(self.biases[i][k])


@torch.no_grad()
def train_grouped(
    models: Sequence[MLP],
    xs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    recipe: TrainConfig,
    generators: Sequence[torch.Generator],
    on_epoch: Callable[[int], None] | None = None,
) -> None:
    """Train `models[k]` on `(xs[k], ys[k])` with `generators[k]`'s batch order, all at once.

    Same recipe, same per-model batch order as `training.loops.train`; every
    model's training set must have the same size. `on_epoch(epoch)` runs after each epoch.
    """
    sizes = {len(y) for y in ys}
    if len(sizes) != 1 or not (len(models) == len(xs) == len(ys) == len(generators)):
        raise ValueError(
            f"grouped training needs equal-size training sets, got sizes {sorted(sizes)}"
        )
    n, k = sizes.pop(), len(models)
    trainer = _GroupedTrainer(models, recipe)
    x_all = torch.stack([x.flatten(1) for x in xs]).view(k * n, -1)  # (K * n, in)
    y_all = torch.stack(list(ys)).view(k * n)  # (K * n,)
    # (K, 1): model k's rows start at k * n
    offsets = torch.arange(k, device=y_all.device).unsqueeze(1) * n
    x_epoch, y_epoch = x_all.new_empty((k, n, x_all.shape[1])), y_all.new_empty((k, n))
    total = recipe.epochs * steps_per_epoch(n, recipe.batch_size)
    step = 0
    check = DivergenceCheck(int(y_all.max().item()) + 1, "shadow training")  # on the summed loss
    for epoch in range(recipe.epochs):
        epoch_loss = 0.0
        perms = torch.stack([torch.randperm(n, generator=g) for g in generators])  # (K, n)
        # one gather per epoch into reused buffers; every batch is then a slice
        rows = (perms.to(offsets.device) + offsets).view(-1)
        torch.index_select(x_all, 0, rows, out=x_epoch.view(k * n, -1))
        torch.index_select(y_all, 0, rows, out=y_epoch.view(k * n))
        for start in range(0, n, recipe.batch_size):
            interrupt.check()
            set_lr(trainer.optimizer, recipe, step, total)  # FusedSGD has param_groups too
            loss = trainer.step(
                x_epoch[:, start : start + recipe.batch_size],
                y_epoch[:, start : start + recipe.batch_size],
            ).item()
            if not math.isfinite(loss):
                raise NonFiniteLossError(f"shadow training loss is {loss}; lower train.lr")
            check.step(loss)
            epoch_loss += loss
            step += 1
        check.epoch(epoch, epoch_loss / steps_per_epoch(n, recipe.batch_size))
        if on_epoch is not None:
            on_epoch(epoch)
    trainer.write_back(models)
