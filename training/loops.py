"""Training loops shared by the teacher, the shadows and the compress stage.

Plain mini-batch SGD/Adam with a per-step learning-rate schedule. Batches are
drawn from an explicit generator, so a run is reproducible from its seed.
`TrainState` is one sparse-training trajectory (model, optimizer, masks), the unit
that compress methods and the grouped candidate probes (`training.batched`) copy.

Every loop stops with `NonFiniteLossError` when the loss becomes NaN or infinite, and with
its subclass `DivergenceError` when training stays finite but diverges (`DivergenceCheck`):
- the loss: its reference is the larger of the first batch's loss and ln C (the loss of a
  uniform guess over C classes). An epoch whose mean training loss exceeds
  `LOSS_FACTOR` (10) times the reference, or a single batch above `STEP_FACTOR` (100) times
  it, has diverged: such a model is confidently wrong on most examples, which neither
  noise nor a learning-rate warm-up produces (Adam at lr=1e9 reaches 1e19);
- the accuracy, for training that starts from a trained model (fine-tuning a pruned
  teacher): starting at least `START_MARGIN` (0.2) above chance (the most frequent class's
  share) and ending its first epoch within `CHANCE_MARGIN` (0.02) of chance.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

import sparse
from training import interrupt
from training.recipes import TrainConfig


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss becomes NaN or infinite."""


class DivergenceError(NonFiniteLossError):
    """Raised when training stays finite but diverges (see `DivergenceCheck`)."""


LOSS_FACTOR = 10.0
STEP_FACTOR = 100.0
START_MARGIN = 0.2
CHANCE_MARGIN = 0.02


class DivergenceCheck:
    """The divergence rule of the module docstring, fed one loss per step and one summary per epoch.

    `n_classes` sets ln C; `chance` is the accuracy of always guessing the most frequent
    class; `start_accuracy` (None: training from scratch) enables the accuracy rule.
    """

    def __init__(self, n_classes: int, what: str = "training", chance: float | None = None,
                 start_accuracy: float | None = None):
        self.floor = math.log(max(int(n_classes), 2))
        self.what = what
        self.chance = chance if chance is not None else 1.0 / max(int(n_classes), 1)
        self.start_accuracy = start_accuracy
        self.reference: float | None = None

    def step(self, loss: float) -> None:
        if self.reference is None:
            self.reference = max(float(loss), self.floor)
        elif loss > STEP_FACTOR * self.reference:
            raise DivergenceError(
                f"{self.what} diverged: a batch's loss is {loss:.4g}, more than {STEP_FACTOR:g}x its start "
                f"({self.reference:.4g}); lower the learning rate"
            )

    def epoch(self, epoch: int, mean_loss: float, accuracy: float | None = None) -> None:
        if self.reference is not None and mean_loss > LOSS_FACTOR * self.reference:
            raise DivergenceError(
                f"{self.what} diverged: epoch {epoch}'s mean loss is {mean_loss:.4g}, more than "
                f"{LOSS_FACTOR:g}x its start ({self.reference:.4g}); lower the learning rate"
            )
        if (
            epoch == 0
            and accuracy is not None
            and self.start_accuracy is not None
            and self.start_accuracy >= self.chance + START_MARGIN
            and accuracy <= self.chance + CHANCE_MARGIN
        ):
            raise DivergenceError(
                f"{self.what} diverged: accuracy fell from {self.start_accuracy:.3f} to {accuracy:.3f} (chance: "
                f"{self.chance:.3f}) in the first epoch; lower the learning rate"
            )


def chance_accuracy(y: torch.Tensor, n_classes: int) -> float:
    """The accuracy of always guessing the most frequent class of `y`."""
    if len(y) == 0:
        return 1.0 / max(n_classes, 1)
    return float(torch.bincount(y.cpu(), minlength=n_classes).max().item() / len(y))


def make_optimizer(params, recipe: TrainConfig) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=recipe.lr,
            momentum=recipe.momentum,
            nesterov=recipe.nesterov and recipe.momentum > 0,
            weight_decay=recipe.weight_decay,
        )
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}; valid: ['sgd', 'adam']")


def lr_factor(recipe: TrainConfig, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate after `step` of `total_steps` optimizer steps."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if recipe.lr_schedule == "constant":
        return 1.0
    if recipe.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.lr_schedule == "multistep":
        return recipe.gamma ** sum(progress >= m for m in recipe.milestones)
    raise ValueError(
        f"unknown lr_schedule {recipe.lr_schedule!r}; valid: ['constant', 'cosine', 'multistep']"
    )


class HasParamGroups(Protocol):
    """A torch optimizer, or anything else scheduled through its `param_groups` (`FusedSGD`)."""

    param_groups: list[dict[str, Any]]


def set_lr(optimizer: HasParamGroups, recipe: TrainConfig, step: int, total_steps: int) -> None:
    """Set every param group's learning rate to the recipe's schedule at `step` of `total_steps`."""
    lr = recipe.lr * lr_factor(recipe, step, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr


def batch_indices(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of shuffled index batches (the last, smaller batch is kept)."""
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live; batches are moved there (data stays on the CPU)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    """One optimizer step of plain cross-entropy on a batch (the masked step of sparse training:
    `training.compress.steps.masked_step`)."""
    model.train()
    device = model_device(model)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"training loss is {loss.item()}; lower the learning rate")
    loss.backward()
    optimizer.step()
    return float(loss.item())


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float


def train(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: TrainConfig,
    generator: torch.Generator,
    on_epoch: Callable[[EpochStats], None] | None = None,
    augment: Callable[..., torch.Tensor] | None = None,
) -> list[EpochStats]:
    """Train a dense model for `recipe.epochs` epochs; returns per-epoch loss and train accuracy.

    `augment(x_batch, generator)`, when given, transforms every training batch
    (e.g. CIFAR random crop + flip), drawing from the same generator as the batches.
    """
    optimizer = make_optimizer(model.parameters(), recipe)
    total = recipe.epochs * steps_per_epoch(len(y), recipe.batch_size)
    history: list[EpochStats] = []
    step = 0
    n_classes = int(y.max().item()) + 1 if len(y) else 2
    check = DivergenceCheck(n_classes, chance=chance_accuracy(y, n_classes))
    for epoch in range(recipe.epochs):
        losses = []
        for idx in batch_indices(len(y), recipe.batch_size, generator):
            interrupt.check()
            set_lr(optimizer, recipe, step, total)
            xb = augment(x[idx], generator) if augment is not None else x[idx]
            losses.append(train_step(model, optimizer, xb, y[idx]))
            check.step(losses[-1])
            step += 1
        _, acc = evaluate(model, x, y)
        stats = EpochStats(epoch, float(sum(losses) / len(losses)), acc)
        check.epoch(epoch, stats.loss, acc)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    model.eval()
    device = model_device(model)
    return torch.cat([model(x[i : i + batch_size].to(device)) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on (x, y)."""
    logits = predict_logits(model, x)
    y = y.to(logits.device)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return float(loss), float(acc)


@dataclass
class TrainState:
    """One trajectory: model, its optimizer and its masks (None: dense)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    masks: sparse.MaskSet | None

    def fork(self, recipe: TrainConfig) -> TrainState:
        model = copy.deepcopy(self.model)
        optimizer = make_optimizer(model.parameters(), recipe)
        # deep copy: load_state_dict keeps the very tensors it is given, and SGD/Adam update
        # them in place, so a shallow copy would let candidates share momentum buffers
        optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        return TrainState(model, optimizer, self.masks.clone() if self.masks is not None else None)

    @torch.no_grad()
    def copy_from(self, src: TrainState) -> None:
        """Make this state equal to `src` (same architecture and optimizer) by copying in place.

        Tensors are overwritten where they are, so a parameter or optimizer-state tensor that is a
        view of a grouped tensor (`training.batched.GroupedCandidates`) stays one.
        """
        for dst_p, src_p in zip(self.model.parameters(), src.model.parameters(), strict=True):
            dst_p.copy_(src_p)
        for dst_b, src_b in zip(self.model.buffers(), src.model.buffers(), strict=True):
            dst_b.copy_(src_b)
        if self.masks is not None and src.masks is not None:
            for name, m in src.masks.masks.items():
                self.masks.masks[name].copy_(m)
                self.masks.fired[name].copy_(src.masks.fired[name])
        for dst_p, src_p in zip(self.model.parameters(), src.model.parameters(), strict=True):
            src_state = src.optimizer.state.get(src_p)
            if not src_state:
                self.optimizer.state.pop(dst_p, None)
                continue
            dst_state = self.optimizer.state[dst_p]
            for key in [k for k in dst_state if k not in src_state]:
                del dst_state[key]
            for key, v in src_state.items():
                old = dst_state.get(key)
                if torch.is_tensor(v) and torch.is_tensor(old) and old.shape == v.shape and old.dtype == v.dtype:
                    old.copy_(v)
                else:
                    dst_state[key] = v.clone() if torch.is_tensor(v) else copy.deepcopy(v)
