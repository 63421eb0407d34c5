"""`dense`: the teacher as is, the baseline every compressed model is measured against."""

from __future__ import annotations

import pandas as pd

from training.compress.method import CompressJob, CompressMethod, Trained, register


@register
class Dense(CompressMethod):
    name = "dense"
    is_dense = True

    def starts_from_dense(self, c) -> bool:
        return True

    def train(self, job: CompressJob) -> Trained:
        return Trained(job.dense_model(), None, [], pd.DataFrame())
