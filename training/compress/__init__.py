"""Compression methods as registered objects, and the one function that trains any of them.

SafeCompress (Zhu et al., TSE 2024 / ASE 2022) and its baselines run through one
engine: `train_compressed(job)` looks `job.c.method` up in `METHODS` and trains one
compressed model. One module per concern:

- `method`: `CompressMethod`, `CompressJob`, `Trained`, the registry and the spec;
- `loop`: the sparse training loop (`SparseTrainingMethod`), shared by oneshot, gmp,
  dst, dst_adv, safecompress and dmp;
- `steps`: the classifier's loss (RelaxLoss, distillation, adversarial penalty), one per
  candidate strategy (`Defences`), and the masked step;
- `safety`: the safety test (the simulated attackers); `candidates`: candidate
  probing, testing and selection;
- `methods/`: one module per method (dense, oneshot, gmp, dst, dst_adv, safecompress, dpsgd, dmp);
- `relaxloss`: RelaxLoss (Chen et al. ICLR 2022), used by the shared step for any sparse method.

The grouped/CSR probe kernels live beside the grouped trainer in `training.batched`.
"""

from training.compress import methods as _methods  # noqa: F401  (registers every method)
from training.compress.loop import SparseTrainingMethod, rescale_to_sparse_fan_in
from training.compress.method import (
    METHODS,
    CompressJob,
    CompressMethod,
    Trained,
    compress_recipe,
    compress_spec,
    get_method,
    register,
    train_compressed,
)
from training.compress.safety import SafetyTest

__all__ = [
    "METHODS",
    "CompressJob",
    "CompressMethod",
    "SafetyTest",
    "SparseTrainingMethod",
    "Trained",
    "compress_recipe",
    "compress_spec",
    "get_method",
    "register",
    "rescale_to_sparse_fan_in",
    "train_compressed",
]
