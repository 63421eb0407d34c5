"""A user's own nn.Module class (issue 24): refused when it is not one (without a call), adapted
when it lacks features()/head, so the attacks' signals and the sparse engine work on it."""

from __future__ import annotations

import os
import textwrap

import pytest
import torch

import sparse
from attacks.signals import last_layer_grads
from training.model_adapter import (
    AdaptedModel,
    check_adapter,
    dp_unsupported,
    find_head,
    instantiate_model,
    resolve_class,
)

USER_MODULE = '''
import torch
from torch import nn

class ConvNet(nn.Module):
    def __init__(self, n_classes, width=4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(4 * width, 16)
        self.out = nn.Linear(16, n_classes)

    def forward(self, x):
        h = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.out(torch.relu(self.fc1(h)))

class SoftmaxNet(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.fc = nn.Linear(4, n_classes)

    def forward(self, x):
        return torch.softmax(self.fc(x.flatten(1)), 1)

class NormNet(nn.Module):
    def __init__(self, n_classes):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc2 = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc2(self.bn(self.fc1(x.flatten(1))))

class NotAModel:
    pass

def make_model():
    raise AssertionError("a _target_ that is not a class must never be called")
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_models_t24.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_models_t24"


def test_non_classes_are_refused_without_being_called(user_module, monkeypatch):
    called = []
    monkeypatch.setattr(os, "system", lambda *a: called.append(a))
    with pytest.raises(ValueError, match=r"'os.system' is a \w+, not a torch.nn.Module subclass; "
                                         r"it was not called"):
        resolve_class("os.system")
    with pytest.raises(ValueError, match=r"is a function, not a torch.nn.Module subclass"):
        resolve_class(f"{user_module}.make_model")
    with pytest.raises(ValueError, match=r"is a class that is not a torch.nn.Module subclass"):
        resolve_class(f"{user_module}.NotAModel")
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_pkg_t24'"):
        resolve_class("no_such_pkg_t24.Net")
    assert called == []


def test_adapter_head_is_the_last_linear_and_features_its_input(user_module):
    model = instantiate_model({"_target_": f"{user_module}.ConvNet", "width": 4}, [1, 6, 6], 3)
    assert isinstance(model, AdaptedModel) and model.head is model.net.out
    x = torch.randn(5, 1, 6, 6)
    check_adapter(model, x, "ConvNet")
    feats = model.features(x)
    assert feats.shape == (5, 16)
    torch.testing.assert_close(model.head(feats), model(x))
    manual = torch.relu(model.net.fc1(model.net.pool(torch.relu(model.net.conv(x))).flatten(1)))
    torch.testing.assert_close(feats, manual)
    named = instantiate_model({"_target_": f"{user_module}.ConvNet", "head_module": "fc1"}, [1, 6, 6], 3)
    assert named.head is named.net.fc1
    with pytest.raises(ValueError, match=r"its output is not its head's output \(head 'fc1'"):
        check_adapter(named, x, "ConvNet")
    with pytest.raises(ValueError, match=r"model.head_module='pool' is a AdaptiveAvgPool2d; the head must be an "
                                         r"nn.Linear.*\['fc1', 'out'\]"):
        instantiate_model({"_target_": f"{user_module}.ConvNet", "head_module": "pool"}, [1, 6, 6], 3)


def test_a_softmax_after_the_head_is_refused(user_module):
    model = instantiate_model({"_target_": f"{user_module}.SoftmaxNet"}, [4], 3)
    with pytest.raises(ValueError, match=r"must return the logits of its last nn.Linear \(no softmax after it\)"):
        check_adapter(model, torch.randn(4, 4), "SoftmaxNet")


def test_white_box_gradients_and_sparse_masks_work_on_the_adapted_model(user_module):
    model = instantiate_model({"_target_": f"{user_module}.ConvNet"}, [1, 6, 6], 3)
    x, y = torch.randn(6, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2])
    grads = last_layer_grads(model.head, model.features(x).detach(), y)
    assert grads.shape[0] == 6 and torch.isfinite(grads).all()
    masks = sparse.random_masks(model, 0.3, "erk", torch.Generator().manual_seed(0))
    masks.apply(model)
    assert set(masks.masks) == {"net.conv.weight", "net.fc1.weight", "net.out.weight"}
    kept = sum(int(m.sum()) for m in masks.masks.values())
    total = sum(m.numel() for m in masks.masks.values())
    assert abs(kept / total - 0.3) < 0.01


def test_dp_sgd_names_the_modules_opacus_cannot_handle(user_module):
    pytest.importorskip("opacus")
    model = instantiate_model({"_target_": f"{user_module}.NormNet"}, [4], 3)
    bad = dp_unsupported(model.net)
    assert list(bad) == ["bn"] and "BatchNorm" in bad["bn"]
    assert dp_unsupported(instantiate_model({"_target_": f"{user_module}.ConvNet"}, [1, 6, 6], 3).net) == {}


def test_feature_model_names_what_a_plain_module_lacks():
    """The white-box paths read `features` and `head`: a bare nn.Sequential is refused by name,
    an adapted one passes, and the adapted view's head(features(x)) is the module's output."""
    from torch import nn as _nn

    from training.models import feature_model

    net = _nn.Sequential(_nn.Flatten(), _nn.Linear(4, 8), _nn.ReLU(), _nn.Linear(8, 3))
    with pytest.raises(TypeError, match="Sequential has no features\\(x\\) and head.*model_adapter"):
        feature_model(net)
    adapted = feature_model(AdaptedModel(net, find_head(net, None, "net")))
    x = torch.randn(5, 4)
    assert torch.allclose(adapted.head(adapted.features(x)), net(x))
