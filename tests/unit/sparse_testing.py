"""Shared builders for the sparse/ unit tests (imported by the test modules, not collected)."""

from collections.abc import Sequence

from torch import nn


def linear_stack(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (no activation after the last)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])
