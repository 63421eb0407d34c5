"""Optional sparse inference path: nn.Linear weights as torch sparse CSR, and a latency helper.

One job: run a pruned MLP with sparse kernels and time it. SafeCompress (Zhu et al., TSE 2024)
reports model size; whether sparsity also buys CPU latency depends on the kernel, so the benchmark
measures it instead of assuming the ideal 1/density speed-up.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
from torch import nn


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as a sparse CSR tensor (inference only, no autograd)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"SparseLinear wraps an nn.Linear, got {type(linear).__name__}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        with warnings.catch_warnings():  # torch notes that CSR support is "beta" on every call
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            self.weight = linear.weight.detach().to_sparse_csr()  # (out, in), CSR
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (n, in)
        y = torch.sparse.mm(self.weight, x2.t()).t()  # (n, out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in={self.in_features}, out={self.out_features}, nnz={nnz}"


def to_sparse_linear(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.Linear`` replaced by ``SparseLinear`` (same outputs)."""
    new = copy.deepcopy(model)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, SparseLinear(child))
            else:
                swap(child)

    if isinstance(new, nn.Linear):
        return SparseLinear(new)
    swap(new)
    return new.eval()


@torch.inference_mode()
def measure_latency(
    model: nn.Module, x: torch.Tensor, n_warmup: int = 3, n_repeat: int = 20
) -> float:
    """Median seconds of ``model(x)`` over ``n_repeat`` runs after ``n_warmup`` untimed ones."""
    if n_repeat < 1 or n_warmup < 0:
        raise ValueError(f"need n_repeat >= 1 and n_warmup >= 0, got {n_repeat}, {n_warmup}")
    model.eval()
    for _ in range(n_warmup):
        model(x)
    times = []
    for _ in range(n_repeat):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
