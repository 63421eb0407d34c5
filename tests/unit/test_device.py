"""Models live on `runtime.device`, data stays on the CPU and batches move to the model.

No GPU here, so PyTorch's `meta` device stands in for "another device": an operation mixing a
meta tensor with a CPU tensor raises, so each path below proves it moves its inputs to the
model. (Meta tensors hold no values, so training steps, which read the loss, are not run.)
"""

from __future__ import annotations

import pytest
import torch

from attacks.signals import _forward_batches
from pipeline.context import RunContext, build_model, load_data
from training.adversarial import Adversary
from training.batched import can_batch
from training.loops import model_device, predict_logits
from training.models import MLP

META = torch.device("meta")


def test_mixing_devices_raises_so_the_stand_in_is_meaningful():
    model = MLP((4,), 3, (8,)).to(META)
    with pytest.raises(RuntimeError, match="device"):
        model(torch.randn(2, 4))


def test_predictions_and_attack_signals_move_cpu_batches_to_the_model():
    model = MLP((4,), 3, (8,)).to(META)
    x = torch.randn(10, 4)
    assert model_device(model) == META
    out = predict_logits(model, x, batch_size=4)
    assert out.device == META and out.shape == (10, 3)
    logits, feats = _forward_batches(model, x, 4, with_features=True)
    assert logits.device == META and feats.shape == (10, 8)


def test_build_model_places_the_model_on_runtime_device(cfg_factory):
    cfg = cfg_factory("experiment=smoke")
    data = load_data(cfg)
    assert RunContext.build(cfg).device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in build_model(RunContext.build(cfg), data, "teacher").parameters())
    cfg.runtime.device = "meta"  # past validation, which only admits real devices
    model = build_model(RunContext.build(cfg), data, "teacher")
    assert all(p.device == META for p in model.parameters())


def test_grouped_kernels_are_cpu_only():
    models = [MLP((4,), 3, (8,)) for _ in range(3)]
    assert can_batch(models)
    assert not can_batch([m.to(META) for m in models])  # trained one by one on other devices


def test_the_adversary_follows_the_classifier_to_its_device():
    adv = Adversary("both", 3, 8, torch.randn(6, 4), torch.randint(0, 3, (6,)), seed=0)
    model = MLP((4,), 3, (8,)).to(META)
    assert adv._follow(model) == META
    assert adv.ref_x.device == META and adv.ref_y.device == META
    assert all(p.device == META for a in adv.attackers for p in a.parameters())
