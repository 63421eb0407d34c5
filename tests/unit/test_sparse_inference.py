"""Sparse CSR inference path: same outputs as the dense model, latency helper, bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse import SparseLinear, measure_latency, random_masks, to_sparse_linear


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 32), nn.ReLU())
        self.head = nn.Linear(32, 5, bias=False)

    def forward(self, x):
        return self.head(self.body(self.conv(x)))


@pytest.mark.parametrize("density", [0.01, 0.05, 0.5])
def test_to_sparse_linear_keeps_outputs_and_the_original(density):
    torch.manual_seed(0)
    model = Net().eval()
    masks = random_masks(model, density, "erk", torch.Generator().manual_seed(0))
    masks.apply(model)
    sp = to_sparse_linear(model)
    assert isinstance(sp.body[1], SparseLinear) and isinstance(sp.head, SparseLinear)
    assert isinstance(sp.conv, nn.Conv2d) and isinstance(
        model.head, nn.Linear
    )  # original untouched
    assert sp.head.weight.layout == torch.sparse_csr
    assert sp.head.weight.values().numel() == int((model.head.weight != 0).sum())
    x = torch.randn(7, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(sp(x), model(x), atol=1e-6)


def test_sparse_linear_handles_leading_dims():
    lin = nn.Linear(6, 3)
    x = torch.randn(2, 4, 6)
    with torch.no_grad():
        assert torch.allclose(SparseLinear(lin)(x), lin(x), atol=1e-6)
    with pytest.raises(ValueError, match="nn.Linear"):
        SparseLinear(nn.Conv1d(1, 1, 1))  # type: ignore[arg-type]


def test_measure_latency():
    t = measure_latency(nn.Linear(8, 8), torch.randn(2, 8), n_warmup=1, n_repeat=3)
    assert 0 < t < 1
    with pytest.raises(ValueError, match="n_repeat"):
        measure_latency(nn.Linear(8, 8), torch.randn(2, 8), n_repeat=0)


def test_to_sparse_linear_of_a_bare_linear_layer():
    lin = nn.Linear(6, 3)
    sp = to_sparse_linear(lin)
    assert isinstance(sp, SparseLinear) and isinstance(lin, nn.Linear)
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.allclose(sp(x), lin(x), atol=1e-6)
