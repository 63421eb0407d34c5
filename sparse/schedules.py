"""Schedules over training progress: the density (sparsity schedule) and the regrowth ratio.

One job: map "fraction of training done" to a number. The cubic density schedule is Zhu & Gupta,
"To prune, or not to prune" (2017); the cosine-annealed regrowth ratio (0.5 -> 0.005) is the
default of the official SafeCompress / ITOP code (Liu et al., ICML 2021), which also starts the
density at its target (``constant``).
"""

from __future__ import annotations

import math

DENSITY_SCHEDULES = ("constant", "linear", "cubic", "cosine")
REGROWTH_SCHEDULES = ("cosine", "linear", "constant")


def _check_progress(progress: float) -> float:
    p = float(progress)
    if math.isnan(p) or not (0.0 <= p <= 1.0):
        raise ValueError(
            f"progress must be in [0, 1] (fraction of training done), got {progress!r}"
        )
    return p


def _check_density(value: float, what: str) -> float:
    v = float(value)
    if math.isnan(v) or not (0.0 < v <= 1.0):
        raise ValueError(f"{what} must be in (0, 1] (fraction of weights kept), got {value!r}")
    return v


def density_at(
    kind: str,
    progress: float,
    start: float,
    target: float,
    begin: float = 0.0,
    end: float = 1.0,
) -> float:
    """Density at ``progress``: ``start`` before ``begin``, ``target`` after ``end``, the schedule between.

    ``constant`` is ``target`` everywhere (the official code trains at the target density from the
    start). ``linear``: straight line; ``cubic``: target + (start - target)(1 - t)^3;
    ``cosine``: target + (start - target)(1 + cos(pi t)) / 2, with t = (progress - begin) / (end - begin).
    """
    if kind not in DENSITY_SCHEDULES:
        raise ValueError(f"unknown density schedule {kind!r}; valid: {list(DENSITY_SCHEDULES)}")
    p = _check_progress(progress)
    s = _check_density(start, "start density")
    d = _check_density(target, "target density")
    b, e = float(begin), float(end)
    if not (0.0 <= b < e <= 1.0):
        raise ValueError(
            f"schedule window [begin={begin}, end={end}] is outside training; need 0 <= begin < end <= 1"
        )
    if kind == "constant":
        return d
    if p <= b:
        return s
    if p >= e:
        return d
    t = (p - b) / (e - b)
    if kind == "linear":
        return s + (d - s) * t
    if kind == "cubic":
        return d + (s - d) * (1.0 - t) ** 3
    return d + (s - d) * (1.0 + math.cos(math.pi * t)) / 2.0  # cosine


def regrowth_ratio_at(kind: str, progress: float, start: float = 0.5, end: float = 0.005) -> float:
    """Fraction of active weights dropped and regrown at an update made at ``progress``.

    ``cosine``: end + (start - end)(1 + cos(pi p)) / 2 (official: 0.5 -> 0.005); ``linear``:
    start -> end in a straight line; ``constant``: ``start`` always. Ratios must lie in [0, 1), and a
    decay needs 0 <= end <= start < 1.
    """
    if kind not in REGROWTH_SCHEDULES:
        raise ValueError(f"unknown regrowth schedule {kind!r}; valid: {list(REGROWTH_SCHEDULES)}")
    p = _check_progress(progress)
    s, e = float(start), float(end)
    if math.isnan(s) or not (0.0 <= s < 1.0):
        raise ValueError(f"regrowth ratio start must be in [0, 1), got {start!r}")
    if kind == "constant":
        return s
    if math.isnan(e) or not (0.0 <= e <= s):
        raise ValueError(
            f"regrowth ratio end must satisfy 0 <= end <= start < 1 for a decay, got start={start!r}, end={end!r}"
        )
    if kind == "linear":
        return s + (e - s) * p
    return e + (s - e) * (1.0 + math.cos(math.pi * p)) / 2.0  # cosine
