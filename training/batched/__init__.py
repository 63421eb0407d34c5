"""Grouped training of K same-architecture MLPs: stacked weights, batched GEMMs, fused optimizers.

- `grouped`: `GroupedMLP` (autograd) and `train_grouped` (the shadows' allocation-free trainer).
- `probes`: `GroupedCandidates`, SafeCompress's candidates stored in one grouped model and
  probed there; `sparse_probe`: their active-weights-only (CSR) kernels.
- `fused`: the fused optimizers all of them step with.
"""

from training.batched.fused import FusedSGD, fused_optimizer
from training.batched.grouped import GroupedMLP, _GroupedTrainer, can_batch, train_grouped
from training.batched.probes import GroupedCandidates, can_probe_batched
from training.batched.sparse_probe import CSR_DENSITY, SparseProbe

__all__ = [
    "CSR_DENSITY",
    "FusedSGD",
    "GroupedCandidates",
    "GroupedMLP",
    "SparseProbe",
    "_GroupedTrainer",
    "can_batch",
    "can_probe_batched",
    "fused_optimizer",
    "train_grouped",
]
