"""`dst_adv`: plain DST with adversarial regularization (Nasr et al. CCS'18 min-max) always on."""

from __future__ import annotations

from training.compress.loop import SparseTrainingMethod
from training.compress.method import register
from training.recipes import CompressConfig


@register
class DSTAdversarial(SparseTrainingMethod):
    name = "dst_adv"
    regrows = True
    label_params = ("compress.adversarial.lam",)

    def adversarial(self, c: CompressConfig) -> bool:
        return True
