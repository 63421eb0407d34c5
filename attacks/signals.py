"""Per-example signals of one model on one set of points, computed once and shared by all attacks.

The signals are those of the attacks we implement: per-example loss (Yeom et al. 2018),
true-class and max confidence, prediction entropy and modified entropy (Song & Mittal,
USENIX Security'21), the logit-scaled confidence of LiRA (Carlini et al., S&P'22), and the
per-example gradient of the loss w.r.t. the last linear layer used by the white-box attack
(Nasr et al., S&P'19), computed with `torch.func` (vmap over grad), never one backward pass
per example. Derived signals are computed in float64 from the logits, stably (log-softmax,
log-sum-exp), so confident models give finite values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Signals", "compute_signals", "log_softmax_np", "log_one_minus_softmax_np"]


def log_softmax_np(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, float64. (n, C) -> (n, C)"""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def log_one_minus_softmax_np(logits: np.ndarray) -> np.ndarray:
    """log(1 - softmax) over the last axis, float64, stable when one class has p -> 1.

    log1p(-p) is accurate while p <= 1/2; at most one class per row has p > 1/2 (the
    argmax), and for it 1 - p = sum of the other probabilities, taken as a log-sum-exp.
    """
    z = np.asarray(logits, dtype=np.float64)
    logp = log_softmax_np(z)
    with np.errstate(divide="ignore"):  # p == 1 gives -inf here, replaced below
        out = np.log1p(-np.exp(logp))
    top = np.argmax(z, axis=-1)
    rows = np.arange(len(z))
    others = z.copy()
    others[rows, top] = -np.inf
    m = others.max(axis=-1)
    m_safe = np.where(np.isfinite(m), m, 0.0)
    lse_others = m_safe + np.log(np.exp(others - m_safe[:, None]).sum(axis=-1))
    lse_all = z.max(axis=-1) + np.log(np.exp(z - z.max(axis=-1, keepdims=True)).sum(axis=-1))
    out[rows, top] = lse_others - lse_all  # -inf only with a single class
    return out


@dataclass
class Signals:
    """One model's outputs on n points.

    logits (n, C) float32, labels (n,) int; optional grads (n, C, d): per-example gradient
    of the cross-entropy w.r.t. the last layer's weight; optional features (n, d):
    penultimate activations. Derived signals are float64 properties.
    """

    logits: np.ndarray
    labels: np.ndarray
    grads: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.logits = np.asarray(self.logits, dtype=np.float32)
        self.labels = np.asarray(self.labels)
        if self.logits.ndim != 2:
            raise ValueError(f"logits must be (n, C), got shape {self.logits.shape}")
        if self.labels.ndim != 1 or len(self.labels) != len(self.logits):
            raise ValueError(
                f"labels must be (n,) with n = {len(self.logits)} (the logits' rows), "
                f"got shape {self.labels.shape}"
            )
        if not np.issubdtype(self.labels.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {self.labels.dtype}")
        n_classes = self.logits.shape[1]
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= n_classes):
            raise ValueError(
                f"labels must lie in [0, {n_classes}) for {n_classes} logit columns, "
                f"got range [{self.labels.min()}, {self.labels.max()}]"
            )
        if not np.all(np.isfinite(self.logits)):
            bad = int(np.sum(~np.isfinite(self.logits).all(axis=1)))
            raise ValueError(f"logits contain NaN/inf in {bad} row(s); need finite model outputs")
        if self.grads is not None:
            self.grads = np.asarray(self.grads, dtype=np.float32)
            if self.grads.ndim != 3 or len(self.grads) != len(self.logits):
                raise ValueError(
                    f"grads must be (n, C, d) with n = {len(self.logits)}, got {self.grads.shape}"
                )
            if not np.all(np.isfinite(self.grads)):
                raise ValueError("grads contain NaN/inf values; need finite gradients")
        if self.features is not None:
            self.features = np.asarray(self.features, dtype=np.float32)
            if len(self.features) != len(self.logits):
                raise ValueError(
                    f"features must have n = {len(self.logits)} rows, got {self.features.shape}"
                )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return int(self.logits.shape[1])

    def subset(self, idx) -> Signals:
        """The signals of the points `idx` (an index array or a boolean mask)."""
        return Signals(
            self.logits[idx],
            self.labels[idx],
            None if self.grads is None else self.grads[idx],
            None if self.features is None else self.features[idx],
        )

    @cached_property
    def log_probs(self) -> np.ndarray:
        """(n, C) float64 log softmax."""
        return log_softmax_np(self.logits)

    @cached_property
    def probs(self) -> np.ndarray:
        """(n, C) float64 softmax."""
        return np.exp(self.log_probs)

    @cached_property
    def _rows(self) -> np.ndarray:
        return np.arange(len(self.labels))

    @cached_property
    def loss(self) -> np.ndarray:
        """(n,) cross-entropy loss of the true class."""
        return -self.log_probs[self._rows, self.labels]

    @cached_property
    def confidence(self) -> np.ndarray:
        """(n,) softmax probability of the true class."""
        return np.exp(-self.loss)

    @cached_property
    def max_confidence(self) -> np.ndarray:
        """(n,) largest softmax probability."""
        return self.probs.max(axis=1)

    @cached_property
    def entropy(self) -> np.ndarray:
        """(n,) Shannon entropy of the softmax (nats)."""
        return -np.sum(self.probs * self.log_probs, axis=1)

    @cached_property
    def modified_entropy(self) -> np.ndarray:
        """(n,) Song & Mittal's Mentr = -(1-p_y) log p_y - sum_{i!=y} p_i log(1-p_i)."""
        p, logp = self.probs, self.log_probs
        log1m = log_one_minus_softmax_np(self.logits)
        r = self._rows
        p_y, logp_y = p[r, self.labels], logp[r, self.labels]
        terms = -p * log1m  # (n, C)
        terms[r, self.labels] = 0.0
        return -(1.0 - p_y) * logp_y + terms.sum(axis=1)

    @cached_property
    def logit_scaled(self) -> np.ndarray:
        """(n,) LiRA's statistic log p_y - log(1 - p_y), stable for p_y -> 1."""
        log1m = log_one_minus_softmax_np(self.logits)[self._rows, self.labels]
        return self.log_probs[self._rows, self.labels] - log1m


@torch.no_grad()
def _forward_batches(model: nn.Module, x: torch.Tensor, batch_size: int, with_features: bool):
    logits, feats = [], []
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)  # data stays on the CPU; the model may not
        if with_features:
            f = model.features(xb)  # type: ignore[operator]
            feats.append(f)
            logits.append(model.head(f))  # type: ignore[operator]
        else:
            logits.append(model(xb))
    return torch.cat(logits), (torch.cat(feats) if with_features else None)


def last_layer_grads(head: nn.Linear, features: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example gradient of CE w.r.t. head.weight with torch.func: (n, d) -> (n, C, d)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in head.named_parameters()}

    def loss_one(weight: torch.Tensor, f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(head, {**params, "weight": weight}, (f.unsqueeze(0),))
        return F.cross_entropy(out, t.unsqueeze(0))

    return vmap(grad(loss_one), in_dims=(None, 0, 0))(params["weight"], features, y)


def compute_signals(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 1024,
    with_grads: bool = False,
) -> Signals:
    """The model's signals on (x, y), in eval mode without autograd; its mode is restored.

    with_grads: also the per-example last-layer gradients (n, C, d) and the features
    (n, d); needs `model.head` (nn.Linear) and `model.features(x)` with
    forward(x) == head(features(x)).
    """
    if len(x) != len(y):
        raise ValueError(f"x and y have mismatched lengths {len(x)} and {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if with_grads and not (
        isinstance(getattr(model, "head", None), nn.Linear) and hasattr(model, "features")
    ):
        raise ValueError(
            "with_grads=True needs a model with `head` (nn.Linear, the last layer) and "
            f"`features(x)`; {type(model).__name__} lacks them"
        )
    was_training = model.training
    model.eval()
    try:
        logits, feats = _forward_batches(model, x, batch_size, with_grads)
        grads = None
        if with_grads:
            assert feats is not None
            yt = y.to(logits.device).long()
            chunks = [
                last_layer_grads(model.head, feats[i : i + batch_size], yt[i : i + batch_size])  # type: ignore[arg-type]
                for i in range(0, len(feats), batch_size)
            ]
            grads = torch.cat(chunks).cpu().numpy()
    finally:
        model.train(was_training)
    return Signals(
        logits=logits.float().cpu().numpy(),
        labels=y.cpu().numpy().astype(np.int64),
        grads=grads,
        features=None if feats is None else feats.float().cpu().numpy(),
    )
