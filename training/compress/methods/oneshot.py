"""`oneshot`: magnitude-prune the teacher to `compress.density` (per layer) once, then fine-tune
with the mask fixed (Han et al. 2015's prune + retrain, one round)."""

from __future__ import annotations

from training.compress.loop import SparseTrainingMethod
from training.compress.method import register
from training.recipes import CompressConfig


@register
class OneShot(SparseTrainingMethod):
    name = "oneshot"
    updates_masks = False

    def starts_from_dense(self, c: CompressConfig) -> bool:
        return True

    def start(self, c: CompressConfig) -> tuple[float, str]:
        return c.density, "constant"
