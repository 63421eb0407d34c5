"""MaskSet: prunable-weight discovery, validation, and masks on weights, grads and optimizer state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse import MaskSet, random_masks


class Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.c1 = nn.Conv1d(4, 6, 3)
        self.bn1 = nn.BatchNorm1d(6)
        self.c2 = nn.Conv2d(2, 3, 3)
        self.c3 = nn.Conv3d(1, 2, 2)
        self.ln = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 5)
        self.head = nn.Linear(5, 2, bias=False)


def mlp(sizes=(12, 32, 16, 4)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def test_prunable_names_are_linear_and_conv_weights_in_parameter_order():
    assert MaskSet.prunable_names(Zoo()) == [
        "c1.weight",
        "c2.weight",
        "c3.weight",
        "fc.weight",
        "head.weight",
    ]


def test_constructor_validates():
    with pytest.raises(ValueError, match="empty"):
        MaskSet({})
    with pytest.raises(ValueError, match="torch.Tensor"):
        MaskSet({"w": [1, 0]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="0/1"):
        MaskSet({"w": torch.tensor([0.5, 1.0])})
    m = MaskSet({"w": torch.tensor([0.0, 1.0, 1.0])})
    assert m.masks["w"].dtype == torch.bool and m.n_active() == 2


def test_apply_raises_on_shape_mismatch_naming_both_shapes():
    model = mlp()
    masks = MaskSet({"0.weight": torch.ones(5, 5, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"0\.weight.*\(32, 12\)") as e:
        masks.apply(model)
    assert "(5, 5)" in str(e.value)


def test_apply_raises_on_unknown_parameter():
    with pytest.raises(ValueError, match="nope.weight"):
        MaskSet({"nope.weight": torch.ones(2, dtype=torch.bool)}).apply(mlp())


def test_apply_and_apply_to_grads_zero_exactly_the_masked_positions():
    model = mlp()
    masks = random_masks(model, 0.3, "uniform", torch.Generator().manual_seed(1))
    model(torch.randn(7, 12)).sum().backward()
    masks.apply(model)
    masks.apply_to_grads(model)
    params = dict(model.named_parameters())
    for name, m in masks.masks.items():
        assert torch.all(params[name][~m] == 0)
        assert torch.all(params[name].grad[~m] == 0)
        assert torch.all(params[name][m] != 0)  # kaiming init is never exactly 0
    assert torch.all(params["0.bias"] != 0)  # biases untouched


OPTIMIZERS = {
    "sgd_momentum_nesterov_wd": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    ),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw_amsgrad": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("density", [0.01, 0.1, 0.5])
def test_masked_weights_and_their_optimizer_state_stay_zero_through_steps(opt_name, density):
    torch.manual_seed(0)
    model = mlp((12, 256, 256, 4))  # wide enough that 1% still connects input to output
    masks = random_masks(model, density, "erk", torch.Generator().manual_seed(2))
    masks.apply(model)
    opt = OPTIMIZERS[opt_name](model.parameters())
    x, y = torch.randn(32, 12), torch.randint(0, 4, (32,))
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in masks.masks}
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        masks.apply_to_grads(model)
        opt.step()
        masks.apply(model)
        masks.apply_to_optimizer(opt, model)
    n_state, n_trained = 0, 0
    for name, m in masks.masks.items():
        p = params[name]
        assert torch.all(p[~m] == 0)
        n_trained += int(not torch.equal(p[m], before[name][m]))
        for v in opt.state[p].values():
            if isinstance(v, torch.Tensor) and v.shape == p.shape:
                assert torch.all(v[~m] == 0)
                n_state += 1
    assert n_state >= len(masks.masks)  # every layer had per-weight state checked
    assert n_trained >= 1  # active weights did train (at 1% a tiny MLP may have dead layers)


def test_apply_to_optimizer_zeroes_dense_momentum_at_new_masked_positions():
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 12)).pow(2).mean().backward()
        opt.step()
    masks = random_masks(model, 0.2, "uniform", torch.Generator().manual_seed(0))
    w = dict(model.named_parameters())["2.weight"]
    assert (opt.state[w]["momentum_buffer"] != 0).float().mean() > 0.5  # dense before
    masks.apply_to_optimizer(opt, model)
    buf, m = opt.state[w]["momentum_buffer"], masks.masks["2.weight"]
    assert torch.all(buf[~m] == 0) and (buf[m] != 0).any()


def test_counts_state_dict_and_clone():
    masks = MaskSet(
        {"a": torch.tensor([[True, False], [False, False]]), "b": torch.ones(3, dtype=torch.bool)}
    )
    assert (masks.n_active(), masks.n_total()) == (4, 7)
    assert masks.density() == pytest.approx(4 / 7)
    assert masks.layer_densities() == {"a": 0.25, "b": 1.0}
    assert masks.shapes() == {"a": (2, 2), "b": (3,)}
    restored = MaskSet.from_state_dict(masks.state_dict())
    assert all(torch.equal(restored.masks[k], masks.masks[k]) for k in masks.masks)
    c = masks.clone()
    c.masks["b"][0] = False
    assert masks.n_active() == 4 and c.n_active() == 3
