"""`gmp`: gradual magnitude pruning (Zhu & Gupta 2017) from the teacher along the density
schedule (`compress.density_schedule`, cubic in conf/compress/gmp.yaml); no regrowth."""

from __future__ import annotations

from training.compress.loop import SparseTrainingMethod
from training.compress.method import register
from training.recipes import CompressConfig


@register
class GMP(SparseTrainingMethod):
    name = "gmp"

    def starts_from_dense(self, c: CompressConfig) -> bool:
        return True

    def start(self, c: CompressConfig) -> tuple[float, str]:
        return c.density_schedule.start, c.density_schedule.kind
