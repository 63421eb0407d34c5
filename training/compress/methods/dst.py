"""`dst`: plain dynamic sparse training (SET, Mocanu et al. 2018; RigL, Evci et al. 2020):
every mask update prunes and regrows with the first of `compress.strategies`; no safety test."""

from __future__ import annotations

from training.compress.loop import SparseTrainingMethod
from training.compress.method import register


@register
class DST(SparseTrainingMethod):
    name = "dst"
    regrows = True
