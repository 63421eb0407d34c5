"""Grouped training of K MLPs equals training each alone (same recipe, same batch order)."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import TrainConfig
from training.batched import GroupedMLP, _GroupedTrainer, can_batch, train_grouped
from training.loops import NonFiniteLossError, train
from training.models import MLP, SmallCNN


def _models(k, seed=0, act="relu", hidden=(16, 8)):
    torch.manual_seed(seed)
    return [MLP((12,), 5, hidden, act) for _ in range(k)]


@pytest.mark.parametrize(
    "optimizer, act, extra",
    [
        ("sgd", "relu", {}),
        ("adam", "tanh", {}),
        ("sgd", "gelu", {"nesterov": True, "lr_schedule": "multistep"}),
        ("sgd", "relu", {"momentum": 0.0, "weight_decay": 0.0, "lr_schedule": "constant"}),
        ("adam", "relu", {"weight_decay": 0.0}),
    ],
)
def test_grouped_equals_sequential(optimizer, act, extra):
    # batch 7 does not divide 30: every epoch ends on a smaller batch
    recipe = TrainConfig(
        **{
            "epochs": 3,
            "batch_size": 7,
            "optimizer": optimizer,
            "lr": 0.05,
            "weight_decay": 1e-3,
            **extra,
        }
    )
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(30, 12, generator=g) for _ in range(3)]
    ys = [torch.randint(0, 5, (30,), generator=g) for _ in range(3)]
    seq, grp = _models(3, act=act), _models(3, act=act)
    for m, x, y, k in zip(seq, xs, ys, range(3)):
        train(m, x, y, recipe, torch.Generator().manual_seed(10 + k))
    train_grouped(grp, xs, ys, recipe, [torch.Generator().manual_seed(10 + k) for k in range(3)])
    for a, b in zip(seq, grp):
        for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            assert torch.allclose(pa, pb, atol=1e-5), na
    # and training actually moved the weights
    fresh = _models(3, act=act)
    assert not torch.allclose(fresh[0].head.weight, grp[0].head.weight)


def test_forward_matches_each_model():
    models = _models(4)
    x = torch.randn(4, 6, 12)
    out = GroupedMLP(models)(x)
    for k, m in enumerate(models):
        assert torch.allclose(out[k], m(x[k]), atol=1e-6)


def test_can_batch_rejects_mixed_or_non_mlp():
    assert can_batch(_models(2))
    assert not can_batch([MLP((12,), 5, (16,)), MLP((12,), 5, (8,))])
    assert not can_batch([SmallCNN((1, 8, 8), 3)])
    with pytest.raises(ValueError, match="equal-size"):
        recipe = TrainConfig(epochs=1)
        train_grouped(
            _models(2),
            [torch.randn(5, 12), torch.randn(6, 12)],
            [torch.zeros(5, dtype=torch.long), torch.zeros(6, dtype=torch.long)],
            recipe,
            [torch.Generator(), torch.Generator()],
        )


@pytest.mark.parametrize(
    "act, hidden",
    [("relu", (16, 8)), ("tanh", (16, 8)), ("gelu", (16, 8)), ("relu", ()), ("tanh", (16, 8, 4))],
)
def test_trainer_gradients_equal_autograd(act, hidden):
    """The hand-written backward gives autograd's gradients of the summed per-model mean loss."""
    models = _models(3, act=act, hidden=hidden)
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(3, 9, 12, generator=g), torch.randint(0, 5, (3, 9), generator=g)
    grouped = GroupedMLP(models)
    loss = (
        F.cross_entropy(grouped(x).reshape(-1, 5), y.reshape(-1), reduction="none")
        .view(3, -1)
        .mean(1)
        .sum()
    )
    loss.backward()
    # lr 0: the step computes the gradients but leaves the weights alone
    trainer = _GroupedTrainer(
        models, TrainConfig(optimizer="sgd", lr=0.0, momentum=0.0, weight_decay=0.0)
    )
    trainer_loss = trainer.step(x, y)
    assert torch.allclose(trainer_loss, loss.detach(), atol=1e-6)
    last = len(grouped.weights) - 1
    for i in range(last + 1):
        # the trainer keeps the head's weights as (K, out, in), the hidden layers' as (K, in, out)
        expected = grouped.weights[i].grad.transpose(1, 2) if i == last else grouped.weights[i].grad
        assert torch.allclose(trainer.grad_w[i], expected, atol=1e-6), i
        assert torch.allclose(trainer.grad_b[i], grouped.biases[i].grad, atol=1e-6), i
    trainer.write_back(models)  # lr 0: writes back the weights it started from
    for a, b in zip(models, _models(3, act=act, hidden=hidden)):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)


def test_grouped_raises_on_non_finite_loss():
    recipe = TrainConfig(epochs=2, batch_size=10, lr=1e30, lr_schedule="constant")
    xs = [torch.randn(20, 12) * 1e3 for _ in range(2)]
    ys = [torch.randint(0, 5, (20,)) for _ in range(2)]
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        train_grouped(_models(2), xs, ys, recipe, [torch.Generator(), torch.Generator()])
