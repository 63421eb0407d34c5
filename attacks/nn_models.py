"""The neural-network attack models of `attacks.nn` (modules only; training and the attacks
that use them are there).

Black-box model (Nasr CCS'18): a prediction branch and a label branch (one-hot), merged by an
MLP with a sigmoid output (we return the logit; sigmoid is in the loss). Nasr's prediction
branch reads the raw prediction vector; with a few hundred training examples that mostly
learns class frequencies (SPEC, "Statistical power"). Our prediction branch therefore reads
label-aligned, class-permutation-invariant features computed inside the module from
(probs, one-hot): the sorted probability vector, the log of it, the true-class probability,
its logit-scaled value log p_y - log(1 - p_y), and whether the prediction is correct. The
module stays differentiable in `probs`, so adversarial regularization can back-propagate
through it. White-box model (Nasr S&P'19) adds a loss branch and a small conv branch over
the per-example gradient of the loss w.r.t. the last linear layer (one filter spans a whole
row, i.e. one output unit, as in the paper), normalised per example, plus its log-norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlackBoxAttackModel", "WhiteBoxAttackModel", "prediction_features"]

_CLAMP = 30.0


def _mlp(sizes: Sequence[int], final_act: bool = True, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or final_act:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def prediction_features(probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """(n, C), (n, C) -> (n, 2C + 3): label-aligned, permutation-invariant features."""
    p = probs.clamp(1e-12, 1.0)
    p_sorted, _ = torch.sort(p, dim=1, descending=True)  # (n, C)
    p_y = (p * onehot).sum(1, keepdim=True)  # (n, 1)
    p_not_y = (p * (1 - onehot)).sum(1, keepdim=True).clamp_min(1e-12)
    log_p_y = torch.log(p_y)
    scaled = (log_p_y - torch.log(p_not_y)).clamp(-_CLAMP, _CLAMP) / 10.0
    correct = (p_y >= p_sorted[:, :1]).float()
    log_sorted = torch.log(p_sorted).clamp_min(-_CLAMP) / 10.0
    return torch.cat([p_sorted, log_sorted, p_y, scaled, correct], dim=1)


class BlackBoxAttackModel(nn.Module):
    """(softmax probs (n, C), one-hot labels (n, C)) -> member logit (n,).

    Widths default to Nasr et al. (CCS'18): prediction 1024-512-64, label 512-64,
    merged 256-64-1.
    """

    def __init__(
        self,
        n_classes: int,
        prediction_widths: Sequence[int] = (1024, 512, 64),
        label_widths: Sequence[int] = (512, 64),
        merged_widths: Sequence[int] = (256, 64),
        use_label_branch: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        self.n_classes = n_classes
        self.use_label_branch = use_label_branch
        self.prediction = _mlp([2 * n_classes + 3, *prediction_widths], dropout=dropout)
        width = prediction_widths[-1]
        if use_label_branch:
            self.label = _mlp([n_classes, *label_widths], dropout=dropout)
            width += label_widths[-1]
        self.merged = _mlp([width, *merged_widths, 1], final_act=False, dropout=dropout)
        n_feat = 2 * n_classes + 3
        self.feat_mean: torch.Tensor
        self.feat_std: torch.Tensor
        self.register_buffer("feat_mean", torch.zeros(n_feat))
        self.register_buffer("feat_std", torch.ones(n_feat))

    @torch.no_grad()
    def fit_normalization(
        self, probs: torch.Tensor, onehot: torch.Tensor, *rest: torch.Tensor
    ) -> None:
        """Standardize the prediction features with statistics of the attack's training data."""
        f = prediction_features(probs, onehot)
        self.feat_mean.copy_(f.mean(0))
        self.feat_std.copy_(f.std(0).clamp_min(1e-3))

    def branches(self, probs: torch.Tensor, onehot: torch.Tensor) -> list[torch.Tensor]:
        if probs.shape != onehot.shape or probs.shape[1] != self.n_classes:
            raise ValueError(
                f"probs and one-hot labels must both be (n, {self.n_classes}), "
                f"got {tuple(probs.shape)} and {tuple(onehot.shape)}"
            )
        f = (prediction_features(probs, onehot) - self.feat_mean) / self.feat_std
        out = [self.prediction(f)]
        if self.use_label_branch:
            out.append(self.label(onehot))
        return out

    def forward(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        return self.merged(torch.cat(self.branches(probs, onehot), dim=1)).squeeze(1)


class WhiteBoxAttackModel(BlackBoxAttackModel):
    """(probs, one-hot, loss (n,), last-layer gradients (n, C, d)) -> member logit (n,)."""

    def __init__(
        self,
        n_classes: int,
        feature_dim: int,
        n_filters: int = 32,
        prediction_widths: Sequence[int] = (1024, 512, 64),
        label_widths: Sequence[int] = (512, 64),
        merged_widths: Sequence[int] = (256, 64),
        use_label_branch: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__(n_classes, prediction_widths, label_widths, [], use_label_branch, dropout)
        self.feature_dim = feature_dim
        self.loss_branch = _mlp([3, 64, 64])  # loss, log loss, log gradient norm
        self.grad_conv = nn.Conv2d(1, n_filters, kernel_size=(1, feature_dim))
        self.grad_branch = _mlp([n_filters * n_classes, 128, 64], dropout=dropout)
        width = prediction_widths[-1] + (label_widths[-1] if use_label_branch else 0) + 64 + 64
        self.merged = _mlp([width, *merged_widths, 1], final_act=False, dropout=dropout)

    def forward(  # type: ignore[override]
        self, probs: torch.Tensor, onehot: torch.Tensor, loss: torch.Tensor, grads: torch.Tensor
    ) -> torch.Tensor:
        n = len(probs)
        if grads.shape[1:] != (self.n_classes, self.feature_dim):
            raise ValueError(
                f"grads must be (n, {self.n_classes}, {self.feature_dim}), got {tuple(grads.shape)}"
            )
        norm = grads.flatten(1).norm(dim=1).clamp_min(1e-12)  # (n,)
        g = (grads / norm[:, None, None]).unsqueeze(1)  # (n, 1, C, d)
        g = F.relu(self.grad_conv(g)).reshape(n, -1)  # (n, filters * C)
        loss = loss.reshape(n).clamp(0.0, _CLAMP)
        scalars = torch.stack(
            [loss, torch.log(loss + 1e-12).clamp_min(-_CLAMP) / 10.0, torch.log(norm) / 10.0], 1
        )
        parts = [*self.branches(probs, onehot), self.loss_branch(scalars), self.grad_branch(g)]
        return self.merged(torch.cat(parts, dim=1)).squeeze(1)
