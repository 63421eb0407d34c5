"""`safecompress`: DST whose every mask update chooses among `compress.n_candidates` candidates
by a performance test and a safety test (Zhu et al., TSE 2024 / ASE 2022;
`training.compress.candidates`). With one candidate it is plain DST."""

from __future__ import annotations

from training.compress.loop import SparseTrainingMethod
from training.compress.method import register
from training.recipes import CompressConfig


@register
class SafeCompress(SparseTrainingMethod):
    name = "safecompress"
    regrows = True
    selects_candidates = True
    label_params = ("compress.adversarial.lam",)

    def uses_candidates(self, c: CompressConfig) -> bool:
        return c.n_candidates > 1
