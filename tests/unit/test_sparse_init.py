"""Initialisation: ERK/uniform densities, exact global counts, magnitude masks, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
from sparse_testing import linear_stack
from torch import nn

from sparse import (
    allocate_counts,
    erk_densities,
    layer_target_counts,
    magnitude_masks,
    random_masks,
    uniform_densities,
)

SHAPE_SETS = {
    "mlp_digits": {"a": (256, 64), "b": (256, 256), "c": (10, 256)},
    "conv": {"c1": (16, 3, 3, 3), "c2": (32, 16, 3, 3), "c3": (64, 32, 3, 3), "fc": (10, 64)},
    "odd": {"x": (7,), "y": (13, 11), "z": (3, 5, 2), "w": (101, 97)},
}
DENSITIES = [0.01, 0.05, 0.1, 0.2, 0.5]


def mlp(sizes=(64, 96, 48, 10)) -> nn.Sequential:
    return linear_stack(sizes)


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3),
        nn.Flatten(),
        nn.LazyLinear(10),
    )


def numel(shapes):
    return {k: math.prod(v) for k, v in shapes.items()}


@pytest.mark.parametrize("shapes", list(SHAPE_SETS.values()), ids=list(SHAPE_SETS))
@pytest.mark.parametrize("density", DENSITIES)
def test_erk_matches_target_globally_and_counts_are_exact(shapes, density):
    d = erk_densities(shapes, density)
    n = numel(shapes)
    total = sum(n.values())
    assert all(0 < v <= 1 for v in d.values())
    assert sum(d[k] * n[k] for k in n) == pytest.approx(density * total, rel=1e-9)
    counts = layer_target_counts(shapes, density, "erk")
    assert sum(counts.values()) == round(density * total)
    assert all(1 <= counts[k] <= n[k] for k in n)


def test_erk_is_proportional_to_sum_over_product_for_sparse_layers():
    shapes = SHAPE_SETS["mlp_digits"]
    d = erk_densities(shapes, 0.05)
    raw = {k: sum(v) / math.prod(v) for k, v in shapes.items()}
    assert d["a"] / d["b"] == pytest.approx(raw["a"] / raw["b"])
    assert d["c"] > d["a"] > d["b"]  # the small head gets the highest density


def test_erk_dense_layer_correction():
    shapes = {"tiny": (4, 3), "big": (500, 400)}
    d = erk_densities(shapes, 0.3)
    assert d["tiny"] == 1.0  # its share would exceed 1
    total = 12 + 200_000
    assert d["big"] == pytest.approx((0.3 * total - 12) / 200_000)


def test_uniform_densities():
    assert uniform_densities(SHAPE_SETS["odd"], 0.2) == {k: 0.2 for k in SHAPE_SETS["odd"]}


@pytest.mark.parametrize("seed", range(5))
def test_allocate_counts_sums_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {f"l{i}": (int(torch.randint(1, 60, (1,), generator=g)), 7) for i in range(6)}
    dens = {k: float(torch.rand(1, generator=g)) for k in shapes}
    n = numel(shapes)
    target = round(sum(dens[k] * n[k] for k in n))
    counts = allocate_counts(shapes, dens, target)
    assert sum(counts.values()) == target
    assert all(abs(counts[k] - dens[k] * n[k]) < 2 for k in n)


@pytest.mark.parametrize("model_fn", [mlp, cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("distribution", ["erk", "uniform"])
@pytest.mark.parametrize("density", DENSITIES)
def test_random_masks_exact_global_count(model_fn, distribution, density):
    model = model_fn()
    model(
        torch.randn(2, 3, 8, 8) if model_fn is cnn else torch.randn(2, 64)
    )  # materialise LazyLinear
    masks = random_masks(model, density, distribution, torch.Generator().manual_seed(0))
    assert masks.n_active() == round(density * masks.n_total())
    per_layer = layer_target_counts(masks.shapes(), density, distribution)
    assert masks.layer_n_active() == per_layer
    assert list(masks.masks) == [
        n for n, _ in model.named_parameters() if n.endswith("weight") and "1." not in n
    ]


def test_random_masks_deterministic_under_generator():
    model = mlp()
    a = random_masks(model, 0.1, "erk", torch.Generator().manual_seed(3))
    b = random_masks(model, 0.1, "erk", torch.Generator().manual_seed(3))
    c = random_masks(model, 0.1, "erk", torch.Generator().manual_seed(4))
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not all(torch.equal(a.masks[k], c.masks[k]) for k in a.masks)


@pytest.mark.parametrize("density", DENSITIES)
def test_magnitude_masks_global_keeps_the_largest(density):
    torch.manual_seed(0)
    model = mlp()
    masks = magnitude_masks(model, density, "global")
    assert masks.n_active() == round(density * masks.n_total())
    params = dict(model.named_parameters())
    kept = torch.cat([params[k].detach().abs()[m] for k, m in masks.masks.items()])
    dropped = torch.cat([params[k].detach().abs()[~m] for k, m in masks.masks.items()])
    assert kept.min() >= dropped.max()


@pytest.mark.parametrize("density", DENSITIES)
def test_magnitude_masks_per_layer(density):
    torch.manual_seed(0)
    model = mlp()
    masks = magnitude_masks(model, density, "layer")
    assert masks.n_active() == round(density * masks.n_total())
    params = dict(model.named_parameters())
    for k, m in masks.masks.items():
        assert abs(int(m.sum()) - density * m.numel()) < 2
        w = params[k].detach().abs()
        assert w[m].min() >= w[~m].max()


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), "x"])
def test_bad_density_raises(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        random_masks(mlp(), bad)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        erk_densities(SHAPE_SETS["odd"], bad)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        magnitude_masks(mlp(), bad)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown distribution 'gauss'.*'erk', 'uniform'"):
        random_masks(mlp(), 0.1, "gauss")
    with pytest.raises(ValueError, match=r"unknown magnitude scope 'row'.*'global', 'layer'"):
        magnitude_masks(mlp(), 0.1, "row")


def test_density_too_small_to_keep_anything_raises():
    with pytest.raises(ValueError, match="keeps 0"):
        random_masks(mlp(), 1e-7)


def test_model_without_prunable_weights_raises():
    with pytest.raises(ValueError, match="no prunable"):
        random_masks(nn.Sequential(nn.LayerNorm(4)), 0.5)


def test_erk_ratios_between_conv_layers_count_their_kernels():
    # RigL's ERK for a conv layer (out, in, kh, kw): density ∝ (out + in + kh + kw) / (out·in·kh·kw).
    # Below the dense correction, d_k = density · N / Σ_j sum(dims_j) · sum(dims_k) / prod(dims_k)
    # (since raw_k · n_k = sum(dims_k)). Kernels of different sizes make the kernel terms matter:
    # fan-in + fan-out alone would give other ratios.
    shapes = {"c1": (16, 3, 3, 3), "c2": (32, 16, 3, 3), "c3": (64, 32, 5, 5), "c4": (64, 64, 1, 1)}
    density = 0.02
    d = erk_densities(shapes, density)
    n = numel(shapes)
    scale = density * sum(n.values()) / sum(sum(s) for s in shapes.values())
    for k, s in shapes.items():
        assert d[k] == pytest.approx(scale * sum(s) / n[k], rel=1e-12), k
    assert d["c2"] / d["c3"] == pytest.approx((54 / 4608) / (106 / 51200), rel=1e-12)
    assert d["c3"] / d["c4"] == pytest.approx((106 / 51200) / (130 / 4096), rel=1e-12)
    assert all(v < 1.0 for v in d.values())  # no layer hit the dense correction


def test_too_small_density_names_the_smallest_allowed_and_empty_shapes_raise():
    from sparse.init import target_count

    with pytest.raises(ValueError, match=r"keeps 0 of 1000 weights; the smallest allowed density here is 0\.0005"):
        target_count(1e-5, 1000)
    with pytest.raises(ValueError, match="shapes is empty"):
        erk_densities({}, 0.1)


def test_erk_power_scale_zero_is_uniform():
    d = erk_densities(SHAPE_SETS["conv"], 0.1, power_scale=0.0)
    assert d == pytest.approx({k: 0.1 for k in SHAPE_SETS["conv"]})


def test_allocate_counts_rounds_down_from_the_smallest_remainders_and_allows_zero():
    # capped densities have no remainder: a (1.5 -> 1.0, want 3.0) gives up the surplus weight
    # before b (want 5.5)
    assert allocate_counts({"a": (3,), "b": (10,)}, {"a": 1.5, "b": 0.55}, 7) == {"a": 2, "b": 5}
    # a layer down to its last weight still gives it up when the target is below the layer count
    three = {"a": (10,), "b": (10,), "c": (10,)}
    assert allocate_counts(three, {"a": 0.1, "b": 0.1, "c": 0.05}, 1) == {"a": 1, "b": 0, "c": 0}
    assert allocate_counts(three, {"a": 0.1, "b": 0.1, "c": 0.05}, 0) == {"a": 0, "b": 0, "c": 0}


def test_an_empty_layer_gets_one_weight_from_the_fullest_earlier_layer_first():
    # z rounds to 0; the donor is the layer with the most active weights, ties to the earlier one
    shapes = {"z": (10,), "a": (100,), "b": (100,)}
    assert allocate_counts(shapes, {"z": 0.01, "a": 0.1, "b": 0.1}, 20) == {"z": 1, "a": 9, "b": 10}
    shapes = {"z": (10,), "big": (1000,)}
    assert allocate_counts(shapes, {"z": 0.01, "big": 0.01}, 10) == {"z": 1, "big": 9}
