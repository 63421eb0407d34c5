"""Issue 18's defences: the defender's reference split, DMP, RelaxLoss and candidates that differ
in defence strength."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import CompressConfig, StrategyConfig, TrainConfig
from pipeline.context import DataBundle
from pipeline.validation import validate_compress
from training.compress import CompressJob, compress_spec, train_compressed
from training.compress.methods.dmp import DMPLosses, soft_labels
from training.compress.relaxloss import flattened_targets, relaxed_loss, relaxloss_mode
from training.compress.steps import Defences, Losses
from training.data import make_splits, plant_canaries
from training.embedded import load_purchase_synth, load_synthetic
from training.loops import TrainState, make_optimizer
from training.models import MLP

FRACTIONS = {"train": 0.3, "val": 0.15, "test": 0.15, "population": 0.3}  # 0.1 of the pool unused
PARTS = ("train", "val", "test", "population")


# --- the defender's reference split -------------------------------------------------------------


def test_reference_split_is_disjoint_seeded_and_leaves_the_other_splits_as_they_were():
    plain = make_splits(1000, FRACTIONS, seed=3)
    with_ref = make_splits(1000, FRACTIONS, seed=3, n_reference=80)
    assert len(plain.reference) == 0 and len(with_ref.reference) == 80
    for name in (*PARTS, "audit_members", "known_members"):
        assert np.array_equal(getattr(plain, name), getattr(with_ref, name)), name
    taken = np.concatenate([getattr(with_ref, p) for p in PARTS])
    assert not set(with_ref.reference.tolist()) & set(taken.tolist())
    assert len(set(with_ref.reference.tolist())) == 80 and with_ref.reference.max() < 1000
    again, other = (
        make_splits(1000, FRACTIONS, seed=3, n_reference=80),
        make_splits(1000, FRACTIONS, seed=4, n_reference=80),
    )
    assert np.array_equal(again.reference, with_ref.reference)
    assert not np.array_equal(other.reference, with_ref.reference)


def test_reference_split_from_a_pool_too_small_is_a_clear_error():
    with pytest.raises(
        ValueError, match=r"reference_size=500 .*leave 100 of the pool's 1000.*at most 0\.5"
    ):
        make_splits(1000, FRACTIONS, seed=0, n_reference=500)
    full = {"train": 0.3, "val": 0.15, "test": 0.15, "population": 0.4}
    with pytest.raises(ValueError, match="reference_size=1 "):
        make_splits(1000, full, seed=0, n_reference=1)


def test_purchase_synth_generates_reference_rows_without_changing_its_pool():
    base = load_purchase_synth(n_samples=400, n_features=50, n_classes=10)
    more = load_purchase_synth(n_samples=400, n_features=50, n_classes=10, reference_size=120)
    assert more.reference_rows == 120 and len(more) == 520 and base.reference_rows == 0
    assert torch.equal(base.x, more.x[:400]) and torch.equal(base.y, more.y[:400])
    assert not torch.equal(more.x[400:520], more.x[:120])  # a second stream, not a copy
    fractions = {"train": 0.3, "val": 0.15, "test": 0.15, "population": 0.4}  # the pool is used up
    plain = make_splits(len(base), fractions, seed=1)
    s = make_splits(len(more), fractions, seed=1, n_reference=120, reserved=more.reference_rows)
    for name in PARTS:
        assert np.array_equal(getattr(plain, name), getattr(s, name))
    assert np.array_equal(s.reference, np.arange(400, 520))
    with pytest.raises(ValueError, match="generated 120 reference rows"):
        make_splits(len(more), fractions, seed=1, n_reference=200, reserved=more.reference_rows)


def test_canaries_never_touch_the_reference_split():
    data = load_synthetic(n_samples=1000, n_features=8, n_informative=4, n_classes=4)
    splits = make_splits(len(data), FRACTIONS, seed=0, n_reference=90)
    _, planted = plant_canaries(data, splits, 40, seed=0)
    assert np.array_equal(planted.reference, splits.reference)
    assert not set(planted.reference.tolist()) & set(planted.canaries.tolist())
    assert not set(planted.reference.tolist()) & set(planted.train.tolist())


# --- RelaxLoss ----------------------------------------------------------------------------------


def test_relaxloss_mode_follows_the_target_and_the_epoch_parity():
    assert relaxloss_mode(1.2, 1.0, 0) == relaxloss_mode(1.0, 1.0, 1) == "descend"
    assert relaxloss_mode(0.5, 1.0, 0) == relaxloss_mode(0.5, 1.0, 4) == "ascend"
    assert relaxloss_mode(0.5, 1.0, 1) == "flatten"


def test_flattened_targets_keep_the_capped_true_probability_and_spread_the_rest():
    logits = torch.tensor([[4.0, 0.0, 1.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([0, 2])
    t = flattened_targets(logits, y, upper=0.5)
    p = F.softmax(logits, 1)
    assert t[0, 0] == pytest.approx(0.5)  # capped: p = 0.93
    assert t[1, 2] == pytest.approx(float(p[1, 2]))  # 0.25 < 0.5 stays
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.allclose(t[0, 1:], torch.full((3,), 0.5 / 3))
    assert not t.requires_grad


def _overfit(alpha_below: float):
    """A tiny MLP fitted on 16 points until its mean CE is below `alpha_below`."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.arange(16) % 4
    model = MLP((6,), 4, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2000):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if loss.item() < alpha_below and (logits.argmax(1) == y).all():
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert F.cross_entropy(model(x), y).item() < alpha_below
    assert (model(x).argmax(1) == y).all()
    return model, x, y


def _step(model, x, y, alpha, epoch, upper=1.0, lr=0.05):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    opt.zero_grad()
    relaxed_loss(model(x), y, alpha, upper, epoch).backward()
    opt.step()
    return model


def test_relaxloss_ascends_below_alpha_and_descends_above_it():
    model, x, y = _overfit(0.3)
    ce = F.cross_entropy(model(x), y).item()
    up = _step(model, x, y, alpha=1.0, epoch=0)  # below alpha, even epoch: gradient ascent
    assert F.cross_entropy(up(x), y).item() > ce
    down = _step(model, x, y, alpha=0.1, epoch=0)  # above alpha: ordinary descent
    assert F.cross_entropy(down(x), y).item() < ce
    # the ascent's gradient is exactly minus the descent's
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    relaxed_loss(a(x), y, 1.0, 1.0, 0).backward()
    F.cross_entropy(b(x), y).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa.grad, -pb.grad)


def _spread(model, x, y):
    """Mean std of the non-true-class probabilities (0: perfectly flat)."""
    p = F.softmax(model(x), 1).detach()
    others = p[torch.ones_like(p, dtype=torch.bool).scatter_(1, y[:, None], False)].view(len(y), -1)
    return float(others.std(1).mean())


def test_relaxloss_flattens_the_posterior_of_correct_examples_on_odd_epochs():
    model, x, y = _overfit(0.3)
    before = _spread(model, x, y)
    flat = model
    for _ in range(80):
        flat = _step(flat, x, y, alpha=1.0, epoch=1, upper=1.0, lr=0.2)
    assert _spread(flat, x, y) < 0.5 * before  # the other classes' probabilities even out
    assert (flat(x).argmax(1) == y).all()  # without costing the prediction
    # the flattening step is not gradient ascent: the true class stays on top and CE stays low
    assert F.cross_entropy(flat(x), y).item() < 1.0


def test_relaxloss_leaves_misclassified_examples_on_the_one_hot_loss():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 0])  # first correct, second misclassified
    relaxed_loss(logits, y, alpha=10.0, upper=1.0, epoch=1).backward()  # CE < 10: flatten
    ce_grad = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)[0] / 2
    assert torch.allclose(logits.grad[1], ce_grad[1])  # one-hot CE for the misclassified one
    soft = flattened_targets(logits, y, 1.0)[0]
    assert torch.allclose(logits.grad[0], (F.softmax(logits.detach()[0], 0) - soft) / 2, atol=1e-6)


# --- DMP ----------------------------------------------------------------------------------------


def _bundle(n_reference=60, seed=0):
    data = load_synthetic(n_samples=800, n_features=10, n_informative=6, n_classes=4)
    data = replace(data, x=(data.x - data.x.mean(0)) / data.x.std(0))
    splits = make_splits(len(data), FRACTIONS, seed=seed, n_reference=n_reference)
    return DataBundle(data, splits, "test")


def _job(c: CompressConfig, data: DataBundle, teacher_seed=1, epochs=2):
    torch.manual_seed(teacher_seed)
    teacher = MLP((10,), 4, (32,))
    recipe = TrainConfig(epochs=epochs, batch_size=32, optimizer="adam", lr=0.01, weight_decay=0.0)

    def new_model(*path):
        torch.manual_seed(7)
        return MLP((10,), 4, (32,))

    return CompressJob(
        c=c,
        recipe=recipe,
        data=data,
        seed=0,
        new_model=new_model,
        dense_model=lambda: copy.deepcopy(teacher),
        batched_probes=False,
    )


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _dmp(**dmp):
    return CompressConfig(
        method="dmp",
        density=0.3,
        update_every=5,
        n_candidates=1,
        dmp=replace(CompressConfig().dmp, **dmp),
    )


def test_dmp_learns_only_from_the_reference_soft_labels_without_member_weight():
    data = _bundle()
    relabelled = replace(data, dataset=replace(data.dataset, y=(data.dataset.y + 1) % 4))
    a = train_compressed(_job(_dmp(), data))
    b = train_compressed(_job(_dmp(), relabelled))  # members' (every) label changed
    assert torch.equal(_weights(a.model), _weights(b.model))
    assert a.metrics == {"defender_reference_size": 60.0, "defender_reference_trained": 60.0}
    other_teacher = train_compressed(_job(_dmp(), data, teacher_seed=2))
    assert not torch.equal(_weights(a.model), _weights(other_teacher.model))
    # with a weight on the members' hard labels, they count
    c, d = (
        train_compressed(_job(_dmp(member_weight=0.5), bundle)) for bundle in (data, relabelled)
    )
    assert not torch.equal(_weights(c.model), _weights(d.model))


def test_dmp_loss_is_the_tempered_kl_to_the_soft_labels_plus_the_weighted_member_loss():
    torch.manual_seed(0)
    model = MLP((10,), 4, (8,))
    state = TrainState(model, make_optimizer(model.parameters(), TrainConfig()), None)
    x, targets = torch.randn(6, 10), F.softmax(torch.randn(6, 4), 1)
    xm, ym = torch.randn(5, 10), torch.tensor([0, 1, 2, 3, 0])
    T = 2.0
    kd = F.kl_div(F.log_softmax(model(x) / T, 1), targets, reduction="batchmean") * T * T
    assert DMPLosses(temperature=T)(state, x, targets).item() == pytest.approx(kd.item())
    mixed = DMPLosses(
        temperature=T,
        member_weight=0.25,
        member_data=(xm, ym),
        member_batches=iter([torch.arange(5)]),
    )
    expected = 0.75 * kd + 0.25 * F.cross_entropy(model(xm), ym)
    assert mixed(state, x, targets).item() == pytest.approx(expected.item())


def test_dmp_low_entropy_selection_keeps_the_most_confident_reference_records():
    data = _bundle()
    job = _job(_dmp(low_entropy_fraction=0.25), data)
    x, soft = soft_labels(job)
    assert len(x) == 15
    _, every = soft_labels(_job(_dmp(), data))
    entropy = lambda p: -(p * p.log()).sum(1)  # noqa: E731
    assert entropy(soft).max() <= torch.sort(entropy(every)).values[14] + 1e-6


def test_dmp_without_a_reference_split_says_how_to_get_one():
    with pytest.raises(ValueError, match=r"\+dataset.reference_size=N"):
        train_compressed(_job(_dmp(), _bundle(n_reference=0)))


# --- candidates that differ in defence strength -------------------------------------------------


def test_defences_give_each_strategy_its_own_loss_and_share_the_step_state():
    base = Losses(relax_upper=0.3)
    strategies = [
        StrategyConfig(),
        StrategyConfig(relaxloss_alpha=1.5),
        StrategyConfig(distill_weight=0.4, distill_temperature=2.0),
    ]
    d = Defences.of(base, strategies)
    assert d.arm(0) is base and d.arm(3) is base and not d.uniform
    assert (
        d.arm(1).relax_alpha,
        d.arm(1).relax_upper,
        d.arm(2).distill_weight,
        d.arm(2).temperature,
    ) == (1.5, 0.3, 0.4, 2.0)
    d.at(epoch=3, adversary_active=True)
    assert all(a.epoch == 3 and a.adversary_active for a in d.arms)
    d.choose(5)
    assert d.active is d.arm(2)
    assert Defences.of(base, [StrategyConfig(), StrategyConfig(prune="set")]).uniform


def test_safecompress_candidates_that_differ_in_defence_probe_with_their_own_loss():
    data = _bundle(n_reference=0)
    plain = [StrategyConfig()] * 3
    armed = [
        StrategyConfig(),
        StrategyConfig(relaxloss_alpha=5.0),
        StrategyConfig(distill_weight=0.9),
    ]

    def run(strategies):
        c = CompressConfig(
            method="safecompress",
            density=0.3,
            update_every=5,
            n_candidates=3,
            probe_steps=3,
            variant="metric",
            strategies=strategies,
        )
        return train_compressed(_job(c, data, epochs=1)).table

    a, b = run(plain), run(armed)
    first_a, first_b = (
        a[a["update"] == 1].set_index("candidate"),
        b[b["update"] == 1].set_index("candidate"),
    )
    # candidate 0 has no defence: the same weights, regrowth draw and probe in both runs
    assert (
        first_a.loc[0, ["accuracy", "risk"]].tolist()
        == first_b.loc[0, ["accuracy", "risk"]].tolist()
    )
    # the others differ from their defence-free twins only by the loss they probed with
    for i in (1, 2):
        assert (
            first_a.loc[i, ["accuracy", "risk"]].tolist()
            != first_b.loc[i, ["accuracy", "risk"]].tolist()
        )
    assert list(first_b["strategy"]) == [
        "magnitude/random",
        "magnitude/random_relaxloss5",
        "magnitude/random_distill0.9",
    ]


# --- config and cache keys ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"relaxloss": {"enabled": True, "alpha": 0.0}}, r"compress.relaxloss.alpha must be > 0, got 0.0"),
        ({"relaxloss": {"upper": 1.5}}, r"compress.relaxloss.upper must be in \(0, 1\], got 1.5"),
        (
            {"method": "dpsgd", "relaxloss": {"enabled": True}},
            "compress=dpsgd does not train through it",
        ),
        ({"method": "dense", "relaxloss": {"enabled": True}}, "compress=dense"),
        ({"method": "dmp", "dmp": {"member_weight": 1.0}}, r"compress.dmp.member_weight must be in \[0, 1\), got 1.0"),
        ({"method": "dmp", "dmp": {"temperature": 0.0}}, r"compress.dmp.temperature must be > 0, got 0.0"),
        ({"method": "dmp", "dmp": {"low_entropy_fraction": 0.0}}, r"compress.dmp.low_entropy_fraction must be in \(0, 1\], got 0.0"),
        ({"method": "dmp", "distill": {"enabled": True}}, "takes neither compress.distill.enabled"),
        ({"method": "dmp", "relaxloss": {"enabled": True}}, "member_weight=0 does not train on"),
        (
            {"method": "dpsgd", "strategies": [{"relaxloss_alpha": 1.0}]},
            r"strategies\[0\] sets \['relaxloss_alpha'\]",
        ),
        ({"method": "dmp", "strategies": [{"distill_weight": 0.5}]}, "not compress=dmp"),
        ({"strategies": [{"distill_weight": 1.5}]}, r"compress.strategies\[0\].distill_weight must be in \[0, 1\], got 1.5"),
        ({"strategies": [{"relaxloss_alpha": -1.0}]}, r"compress.strategies\[0\].relaxloss_alpha must be >= 0 \(0: no RelaxLoss\), got -1.0"),
    ],
)
def test_bad_defence_settings_are_refused_with_what_is_allowed(change, message):
    from pipeline.config import to_schema

    c = to_schema(CompressConfig, change)
    with pytest.raises(ValueError, match=message):
        validate_compress(c)


def test_new_options_at_their_defaults_leave_the_compress_spec_as_it_was():
    spec = compress_spec(CompressConfig(), {}, TrainConfig())["compress"]
    assert "relaxloss" not in spec and "dmp" not in spec
    assert spec["strategies"] == [{"prune": "magnitude", "grow": "random"}]
    on = compress_spec(
        replace(CompressConfig(), relaxloss=replace(CompressConfig().relaxloss, enabled=True)),
        {},
        TrainConfig(),
    )
    assert on["compress"]["relaxloss"]["enabled"] is True
    armed = CompressConfig(strategies=[StrategyConfig(relaxloss_alpha=1.0)])
    assert compress_spec(armed, {}, TrainConfig())["compress"]["strategies"] == [
        {"prune": "magnitude", "grow": "random", "relaxloss_alpha": 1.0}
    ]


def test_report_labels_tell_defences_apart():
    from pipeline.tracking.runs import run_label

    base = {"method": "dst", "variant": "", "target_density": 0.05}
    assert run_label(pd.Series(base)) == "dst"
    relaxed = run_label(
        pd.Series(
            {
                **base,
                "params.compress.relaxloss.enabled": "True",
                "params.compress.relaxloss.alpha": "1.0",
            }
        )
    )
    assert relaxed == "dst [relax=1.0]"
    dmp = run_label(
        pd.Series(
            {
                "method": "dmp",
                "target_density": 0.05,
                "params.compress.dmp.temperature": "4.0",
                "params.compress.dmp.member_weight": "0.0",
                "params.dataset.reference_size": "5000",
            }
        )
    )
    assert dmp == "dmp [T=4.0, ref=5000]"
    armed = run_label(
        pd.Series(
            {
                "method": "safecompress",
                "variant": "bmia",
                "target_density": 0.05,
                "params.compress.strategies": str(
                    [
                        {"prune": "magnitude", "grow": "random"},
                        {"prune": "magnitude", "grow": "random", "relaxloss_alpha": 1.0},
                    ]
                ),
            }
        )
    )
    assert armed == "safecompress (bmia) [pool=2, defences]"
