"""Signals: derived values against naive formulas, stability, per-example gradients."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.signals import Signals, compute_signals


class Tiny(nn.Module):
    def __init__(self, d_in=5, d=4, n_classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, d), nn.Tanh())
        self.head = nn.Linear(d, n_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.features(x))


def naive(logits, labels):
    p = torch.softmax(torch.tensor(logits, dtype=torch.float64), 1).numpy()
    r = np.arange(len(labels))
    py = p[r, labels]
    mentr = -(1 - py) * np.log(py)
    for i in range(p.shape[1]):
        other = i != labels
        mentr -= np.where(other, p[:, i] * np.log(1 - p[:, i]), 0.0)
    return p, py, mentr


def test_derived_signals_match_naive_formulas():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (50, 6)).astype(np.float32)
    labels = rng.integers(0, 6, 50)
    s = Signals(logits, labels)
    p, py, mentr = naive(logits, labels)
    np.testing.assert_allclose(s.confidence, py, rtol=1e-10)
    np.testing.assert_allclose(
        s.loss,
        F.cross_entropy(
            torch.tensor(logits, dtype=torch.float64), torch.tensor(labels), reduction="none"
        ).numpy(),
        rtol=1e-10,
    )
    np.testing.assert_allclose(s.max_confidence, p.max(1), rtol=1e-10)
    np.testing.assert_allclose(s.entropy, -(p * np.log(p)).sum(1), rtol=1e-10)
    np.testing.assert_allclose(s.modified_entropy, mentr, rtol=1e-8)
    np.testing.assert_allclose(s.logit_scaled, np.log(py) - np.log(1 - py), rtol=1e-8, atol=1e-10)


def test_signals_stay_finite_and_ordered_for_confident_logits():
    logits = np.array([[60.0, 0.0, 0.0], [80.0, 0.0, 0.0], [0.0, 90.0, 0.0]], np.float32)
    labels = np.array([0, 0, 0])
    s = Signals(logits, labels)
    for v in (s.loss, s.entropy, s.modified_entropy, s.logit_scaled):
        assert np.all(np.isfinite(v))
    # naive log(p / (1 - p)) would be inf for both; the stable value keeps them apart
    assert s.logit_scaled[1] > s.logit_scaled[0] > 50
    assert s.logit_scaled[2] < -80  # wrong class, confidently
    assert s.modified_entropy[2] > s.modified_entropy[0]


def test_bad_signals_raise():
    with pytest.raises(ValueError, match="NaN/inf"):
        Signals(np.array([[0.0, np.nan]]), np.array([0]))
    with pytest.raises(ValueError, match="labels must be"):
        Signals(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="must lie in"):
        Signals(np.zeros((2, 2)), np.array([0, 2]))


def test_compute_signals_with_grads_matches_a_per_example_backward():
    torch.manual_seed(0)
    model = Tiny()
    model.train()
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    s = compute_signals(model, x, y, batch_size=3, with_grads=True)
    assert model.training  # mode restored
    assert s.grads.shape == (7, 3, 4) and s.features.shape == (7, 4)
    np.testing.assert_allclose(s.logits, model(x).detach().numpy(), rtol=1e-5, atol=1e-6)
    for i in range(7):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        np.testing.assert_allclose(s.grads[i], model.head.weight.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_compute_signals_needs_head_and_features_for_grads():
    model = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(ValueError, match="head"):
        compute_signals(model, torch.randn(2, 5), torch.tensor([0, 1]), with_grads=True)
    s = compute_signals(model, torch.randn(2, 5), torch.tensor([0, 1]))
    assert s.grads is None and s.logits.shape == (2, 3)


def test_subset_keeps_rows():
    s = Signals(np.arange(12, dtype=np.float32).reshape(4, 3), np.array([0, 1, 2, 0]))
    sub = s.subset(np.array([3, 1]))
    np.testing.assert_array_equal(sub.labels, [0, 1])
    np.testing.assert_array_equal(sub.logits[0], [9, 10, 11])


def test_signal_features_are_stored_as_float32():
    s = Signals(np.zeros((2, 3), np.float32), np.array([0, 1]), features=np.ones((2, 4), np.float64))
    assert s.features.dtype == np.float32
