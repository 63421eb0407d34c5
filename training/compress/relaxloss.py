"""RelaxLoss (Chen, Yu & Fritz, "RelaxLoss: Defending Membership Inference Attacks without
Losing Utility", ICLR 2022): train toward a target loss α instead of toward zero.

Membership attacks read the gap between the members' loss (driven to ~0) and the
non-members'. RelaxLoss keeps the members' mean cross-entropy near a level α:

- while a batch's mean cross-entropy is at least α, it is minimised as usual;
- below α the step alternates epoch by epoch between
  - gradient ascent on the cross-entropy (even epochs), lifting the loss back to α, and
  - posterior flattening (odd epochs): every correctly classified example is fitted to a
    soft label that keeps its true-class probability (capped at `upper`, a constant of
    the step: no gradient flows through the label) and spreads the rest evenly over the
    other classes, so a member's posterior looks like a non-member's beyond its top class;
    misclassified examples keep the one-hot cross-entropy, so they are still learned.

`relaxed_loss` is the loss of one step; the sparse loop's shared step
(`training.compress.steps.Losses`) uses it in place of the cross-entropy on the members'
hard labels, for every method trained by that loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("descend", "ascend", "flatten")


def relaxloss_mode(mean_ce: float, alpha: float, epoch: int) -> str:
    """What a step does: `descend` (loss >= α), else `ascend` (even epoch) or `flatten` (odd)."""
    if mean_ce >= alpha:
        return "descend"
    return "ascend" if epoch % 2 == 0 else "flatten"


def flattened_targets(logits: torch.Tensor, y: torch.Tensor, upper: float) -> torch.Tensor:
    """Soft labels (n, C): the true class keeps min(p_y, upper), the other classes share the rest."""
    n_classes = logits.shape[1]
    with torch.no_grad():
        p_true = F.softmax(logits.float(), 1).gather(1, y[:, None]).clamp(max=upper)  # (n, 1)
        rest = (1.0 - p_true) / max(n_classes - 1, 1)
        targets = rest.expand(-1, n_classes).clone()
        targets.scatter_(1, y[:, None], p_true)
    return targets.to(logits.dtype)


def relaxed_loss(
    logits: torch.Tensor, y: torch.Tensor, alpha: float, upper: float, epoch: int
) -> torch.Tensor:
    """RelaxLoss of one batch: logits (n, C), labels y (n,), the target loss `alpha`, the cap
    `upper` on flattened true-class probabilities, the training epoch (its parity picks
    ascent or flattening below α)."""
    per_example = F.cross_entropy(logits, y, reduction="none")  # (n,)
    ce = per_example.mean()
    mode = relaxloss_mode(float(ce.detach()), alpha, epoch)
    if mode == "descend":
        return ce
    if mode == "ascend":
        return alpha - ce  # the gradient of -ce: ascent; the value is the distance to α
    correct = logits.detach().argmax(1) == y  # (n,)
    soft = -(flattened_targets(logits, y, upper) * F.log_softmax(logits, 1)).sum(1)  # (n,)
    return torch.where(correct, soft, per_example).mean()
