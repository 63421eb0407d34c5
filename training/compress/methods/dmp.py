"""`dmp`: Distillation for Membership Privacy (Shejwalkar & Houmansadr, AAAI 2021), as a sparse student.

The dense teacher, trained on the members, labels the defender's reference set with its
softened predictions; the sparse student learns from those soft labels alone, so a member
reaches the student only through the teacher's outputs on *other* records. The reference
set is the data protocol's `reference` split (`dataset.reference_size` records, disjoint from
the members, audit, val, test and the attacker's population; `training.data`).

Loss of one step, with T = `compress.dmp.temperature` and w = `compress.dmp.member_weight`:
(1 − w) · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) on a reference batch, plus, when
w > 0, w · CE on a batch of the members' hard labels (RelaxLoss in its place when
`compress.relaxloss.enabled`). `compress.dmp.low_entropy_fraction` < 1 keeps only the reference
records whose soft labels have the lowest entropy, the paper's criterion for choosing the
transfer data. Masks move as in plain DST (the first of `compress.strategies`); an epoch is
one pass over the reference set. The run logs `defender_reference_size` (records drawn for the
defence beyond the members) and `defender_reference_trained` (those it trained on).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from training.compress.loop import SparseTrainingMethod, train_sparse
from training.compress.method import CompressJob, Trained, register
from training.compress.steps import Losses, endless_batches
from training.loops import TrainState, model_device, predict_logits
from training.recipes import CompressConfig
from training.seeds import generator


@dataclass
class DMPLosses(Losses):
    """DMP's loss: `targets` of a step are the teacher's soft labels (n, C) of reference inputs."""

    member_weight: float = 0.0
    member_data: tuple[torch.Tensor, torch.Tensor] | None = None
    member_batches: Iterator[torch.Tensor] | None = None

    @property
    def is_plain(self) -> bool:
        return False

    def __call__(self, state: TrainState, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        model = state.model
        T = self.temperature
        log_q = F.log_softmax(model(x) / T, 1)
        loss = F.kl_div(log_q, targets, reduction="batchmean") * T * T
        if self.member_weight > 0:
            assert self.member_data is not None and self.member_batches is not None
            xm, ym = self.member_data
            idx = next(self.member_batches)
            device = model_device(model)
            hard = self.hard_loss(model(xm[idx].to(device)), ym[idx].to(device))
            loss = (1 - self.member_weight) * loss + self.member_weight * hard
        return loss


@register
class DMP(SparseTrainingMethod):
    name = "dmp"
    regrows = True
    uses_reference_set = True  # report labels carry its settings and `ref=N` (pipeline.tracking.runs)

    def training_data(self, job: CompressJob) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference inputs and the teacher's soft labels on them (n_ref, C)."""
        return soft_labels(job)

    def losses(self, job: CompressJob, state: TrainState) -> Losses:
        c = job.c
        members = job.data.part("train")
        losses = DMPLosses(
            temperature=c.dmp.temperature,
            member_weight=c.dmp.member_weight,
            member_data=members if c.dmp.member_weight > 0 else None,
            member_batches=endless_batches(
                len(members[1]), job.recipe.batch_size, generator(job.seed, "dmp", "members")
            )
            if c.dmp.member_weight > 0
            else None,
            relax_upper=c.relaxloss.upper,
        )
        if c.relaxloss.enabled:
            losses.relax_alpha = c.relaxloss.alpha
        return losses

    def train(self, job: CompressJob) -> Trained:
        trained = train_sparse(self, job)
        n_drawn = len(job.data.splits.reference)
        n_kept = n_trained(job.c, n_drawn)
        return replace(
            trained,
            metrics={
                "defender_reference_size": float(n_drawn),
                "defender_reference_trained": float(n_kept),
            },
        )


def n_trained(c: CompressConfig, n_reference: int) -> int:
    """How many reference records DMP trains on after its low-entropy selection."""
    return max(1, int(round(c.dmp.low_entropy_fraction * n_reference)))


@torch.no_grad()
def soft_labels(job: CompressJob) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference split's inputs and softmax(teacher / T) on them, the lowest-entropy
    `low_entropy_fraction` of them (in index order)."""
    c, data = job.c, job.data
    ref = data.splits.reference
    if len(ref) == 0:
        raise ValueError(
            "compress=dmp trains on the defender's reference split, which is empty: set "
            "+dataset.reference_size=N (records beyond the members; purchase_synth generates them, "
            "other data sets take them from pool records the split fractions leave unused)"
        )
    x = data.dataset.x[torch.from_numpy(ref)]
    logits = predict_logits(job.dense_model(), x).float().cpu()  # (n_ref, C)
    soft = F.softmax(logits / c.dmp.temperature, 1)
    keep = n_trained(c, len(ref))
    if keep < len(ref):
        entropy = -(soft * soft.clamp_min(1e-12).log()).sum(1)
        chosen = torch.sort(torch.argsort(entropy, stable=True)[:keep]).values
        x, soft = x[chosen], soft[chosen]
    return x, soft
