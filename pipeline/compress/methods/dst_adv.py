"""`dst_adv`: plain DST with adversarial regularization (Nasr et al. CCS'18 min-max) always on."""

from __future__ import annotations

from pipeline.compress.loop import SparseTrainingMethod
from pipeline.compress.method import register
from pipeline.config import CompressConfig


@register
class DSTAdversarial(SparseTrainingMethod):
    name = "dst_adv"
    regrows = True
    label_params = ("compress.adversarial.lam",)

    def adversarial(self, c: CompressConfig) -> bool:
        return True
