"""Models written in the project (no torchvision).

Every model exposes `features(x)` (penultimate activations, shape (n, d)) and
`head` (its last `nn.Linear`), with `forward(x) == head(features(x))`: the
white-box attack reads the gradient of the loss w.r.t. `head.weight`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected net: flatten, [Linear, activation] per hidden size, Linear head.

    The tabular models of Nasr et al. (CCS'18) are MLPs of this form
    (e.g. 600-1024-512-256-128-100 with tanh on Purchase100).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
    ):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(acts)}")
        if any(int(h) < 1 for h in hidden_sizes):
            raise ValueError(f"hidden sizes must be >= 1, got {list(hidden_sizes)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(math.prod(input_shape))
        for h in hidden_sizes:
            layers += [nn.Linear(width, int(h)), acts[activation]()]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """A small CNN for image-shaped inputs (C, H, W): conv blocks, global pooling, MLP head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden_size: int = 128,
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"SmallCNN needs image-shaped inputs (C, H, W), got input shape {tuple(input_shape)}; "
                "use model=mlp for flat features"
            )
        blocks: list[nn.Module] = []
        c_in = int(input_shape[0])
        for i, c in enumerate(channels):
            blocks += [nn.Conv2d(c_in, int(c), 3, padding=1), nn.ReLU()]
            if i < len(channels) - 1:
                blocks.append(nn.MaxPool2d(2))
            c_in = int(c)
        blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, hidden_size), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden_size, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
