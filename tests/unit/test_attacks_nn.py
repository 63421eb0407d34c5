"""NN attackers (Nasr black-box/white-box), the shadow-model attack and MMIA on toy data."""

import numpy as np
import pytest
import torch

from attacks import AttackInputs, MissingInputError, Signals, make_attack
from attacks.metrics import roc_auc
from attacks.mmia import percentile_ranks
from attacks.nn import blackbox_tensors, train_attack_model
from attacks.nn_models import BlackBoxAttackModel, WhiteBoxAttackModel


def toy_signals(n, member, rng, n_classes=5, d=6, with_grads=False):
    """Members: confident on the true class (margin ~ 3), non-members: margin ~ 1.

    The loss threshold, the best attack here, reaches AUC ~ 0.89; learned attacks must pass 0.8.
    """
    y = rng.integers(0, n_classes, n)
    z = rng.normal(0, 1, (n, n_classes)).astype(np.float32)
    z[np.arange(n), y] += 3.0 if member else 1.0
    grads = rng.normal(0, 1, (n, n_classes, d)).astype(np.float32) if with_grads else None
    return Signals(z, y, grads=grads)


def toy_inputs(seed=0, with_grads=False, n=150):
    rng = np.random.default_rng(seed)
    target = Signals(
        np.r_[toy_signals(n, True, rng).logits, toy_signals(n, False, rng).logits],
        np.r_[rng.integers(0, 5, n), rng.integers(0, 5, n)],
    )
    m, nm = (
        toy_signals(n, True, rng, with_grads=with_grads),
        toy_signals(n, False, rng, with_grads=with_grads),
    )
    tm, tn = (
        toy_signals(n, True, rng, with_grads=with_grads),
        toy_signals(n, False, rng, with_grads=with_grads),
    )
    target = Signals(
        np.r_[tm.logits, tn.logits],
        np.r_[tm.labels, tn.labels],
        grads=None if not with_grads else np.r_[tm.grads, tn.grads],
    )
    labels = np.r_[np.ones(n, int), np.zeros(n, int)]
    return AttackInputs(target=target, known_members=m, known_nonmembers=nm), labels


def test_blackbox_model_is_differentiable_in_the_probabilities():
    torch.manual_seed(0)
    model = BlackBoxAttackModel(4, (16, 8), (8,), (8,))
    logits = torch.randn(5, 4, requires_grad=True)
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0]), 4).float()
    out = model(torch.softmax(logits, 1), onehot)
    assert out.shape == (5,)
    out.sum().backward()
    assert (
        logits.grad is not None
        and torch.isfinite(logits.grad).all()
        and logits.grad.abs().sum() > 0
    )
    with pytest.raises(ValueError, match="must both be \\(n, 4\\)"):
        model(torch.rand(5, 3), onehot[:, :3])


def test_train_attack_model_learns_and_is_seeded():
    rng = np.random.default_rng(0)
    m, n = toy_signals(200, True, rng), toy_signals(200, False, rng)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = BlackBoxAttackModel(5, (32, 16), (16,), (16,))
        train_attack_model(
            model,
            blackbox_tensors(m),
            blackbox_tensors(n),
            epochs=5,
            generator=torch.Generator().manual_seed(3),
        )
        with torch.no_grad():
            runs.append(
                torch.cat([model(*blackbox_tensors(m)), model(*blackbox_tensors(n))]).numpy()
            )
    np.testing.assert_array_equal(runs[0], runs[1])
    assert roc_auc(runs[0], np.r_[np.ones(200), np.zeros(200)]) > 0.8
    with pytest.raises(ValueError, match="members and non-members"):
        train_attack_model(model, blackbox_tensors(m.subset(np.arange(0))), blackbox_tensors(n))


class _AutogradBlackBox(BlackBoxAttackModel):
    """Same model; a subclass, so train_attack_model takes the autograd path."""


@pytest.mark.parametrize("use_label_branch", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_train_attack_model_fast_steps_equal_autograd(use_label_branch, weight_decay):
    """The black-box model's hand-written step trains like autograd (up to float rounding),
    with unbalanced classes (the BCE weights matter) and a last partial batch."""
    rng = np.random.default_rng(1)
    m, n = toy_signals(170, True, rng), toy_signals(90, False, rng)
    outs = []
    for cls in (BlackBoxAttackModel, _AutogradBlackBox):
        torch.manual_seed(0)
        model = cls(5, (32, 16), (16,), (16, 8), use_label_branch=use_label_branch)
        init = torch.cat([p.detach().flatten() for p in model.parameters()])
        train_attack_model(
            model,
            blackbox_tensors(m),
            blackbox_tensors(n),
            epochs=4,
            batch_size=64,
            weight_decay=weight_decay,
            generator=torch.Generator().manual_seed(3),
        )
        with torch.no_grad():
            outs.append(torch.cat([model(*blackbox_tensors(m)), model(*blackbox_tensors(n))]))
        outs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[1], outs[3], rtol=1e-4, atol=1e-5)
    assert (outs[1] - init).abs().max() > 1e-3  # it trained


def test_whitebox_model_reads_gradients():
    model = WhiteBoxAttackModel(
        3, 4, n_filters=2, prediction_widths=(8,), label_widths=(8,), merged_widths=(8,)
    )
    probs = torch.softmax(torch.randn(6, 3), 1)
    onehot = torch.nn.functional.one_hot(torch.arange(6) % 3, 3).float()
    out = model(probs, onehot, torch.rand(6), torch.randn(6, 3, 4))
    assert out.shape == (6,)
    with pytest.raises(ValueError, match="grads must be"):
        model(probs, onehot, torch.rand(6), torch.randn(6, 3, 5))


@pytest.mark.parametrize("name", ["nn_blackbox", "nn_whitebox"])
def test_nn_attacks_separate_toy_members(name):
    inputs, labels = toy_inputs(with_grads=name == "nn_whitebox")
    attack = make_attack(name, epochs=10, seed=1).fit(inputs)
    assert roc_auc(attack.score(inputs), labels) > 0.8


def test_nn_attacks_need_known_data_and_grads():
    inputs, _ = toy_inputs()
    with pytest.raises(MissingInputError, match="known_members"):
        make_attack("nn_blackbox").fit(AttackInputs(target=inputs.target))
    with pytest.raises(MissingInputError, match="gradients"):
        make_attack("nn_whitebox").fit(inputs)
    with pytest.raises(ValueError, match="epochs >= 1"):
        make_attack("nn_blackbox", epochs=0)


@pytest.mark.parametrize("per_class", [False, True])
def test_shadow_attack_learns_from_shadow_members(per_class):
    rng = np.random.default_rng(2)
    shadow_train = []
    for _ in range(2):
        m, n = toy_signals(150, True, rng), toy_signals(150, False, rng)
        sig = Signals(np.r_[m.logits, n.logits], np.r_[m.labels, n.labels])
        shadow_train.append((sig, np.r_[np.ones(150, bool), np.zeros(150, bool)]))
    inputs, labels = toy_inputs(seed=3)
    inputs.shadow_train = shadow_train
    attack = make_attack("shadow", per_class=per_class, seed=0).fit(inputs)
    assert roc_auc(attack.score(inputs), labels) > 0.8
    with pytest.raises(MissingInputError, match="shadow_train"):
        make_attack("shadow").fit(AttackInputs(target=inputs.target))


def test_mmia_max_takes_the_worst_case_rank_and_stack_trains_together():
    inputs, labels = toy_inputs(seed=4)
    mx = make_attack("mmia", members=["loss", "nn_blackbox"]).fit(inputs)
    s = mx.score(inputs)
    loss_rank = percentile_ranks(-inputs.target.loss)
    assert np.all(s >= loss_rank - 1e-12) and s.max() == 1.0
    assert roc_auc(s, labels) > 0.8
    st = make_attack(
        "mmia", members={"loss": {}, "nn_blackbox": {"epochs": 5}}, combine="stack"
    ).fit(inputs)
    assert roc_auc(st.score(inputs), labels) > 0.8


def test_mmia_bad_configs_raise():
    with pytest.raises(ValueError, match=">= 2 member"):
        make_attack("mmia", members=["loss"])
    with pytest.raises(ValueError, match="combine must be"):
        make_attack("mmia", combine="min")
    with pytest.raises(ValueError, match="target signals only"):
        make_attack("mmia", members=["loss", "lira_offline"], combine="stack")
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("mmia", members=["loss", "lira"])
