"""Density and regrowth-ratio schedules: endpoints, windows, formulas, bad inputs."""

from __future__ import annotations

import math

import pytest

from sparse import DENSITY_SCHEDULES, REGROWTH_SCHEDULES, density_at, regrowth_ratio_at


@pytest.mark.parametrize("kind", [k for k in DENSITY_SCHEDULES if k != "constant"])
@pytest.mark.parametrize("start,target", [(1.0, 0.05), (0.5, 0.01), (0.2, 0.1)])
def test_density_schedules_hit_endpoints_and_decrease(kind, start, target):
    assert density_at(kind, 0.0, start, target) == pytest.approx(start)
    assert density_at(kind, 1.0, start, target) == pytest.approx(target)
    values = [density_at(kind, i / 50, start, target) for i in range(51)]
    assert all(a >= b - 1e-12 for a, b in zip(values[:-1], values[1:], strict=True))
    assert target < values[25] < start


@pytest.mark.parametrize("kind", DENSITY_SCHEDULES)
def test_density_window(kind):
    start, target, begin, end = 0.8, 0.1, 0.2, 0.6
    before = density_at(kind, 0.1, start, target, begin, end)
    after = density_at(kind, 0.9, start, target, begin, end)
    assert after == target
    assert before == (target if kind == "constant" else start)


def test_density_formulas_midway():
    s, d = 1.0, 0.2
    assert density_at("constant", 0.0, s, d) == d  # official code starts at the target
    assert density_at("linear", 0.5, s, d) == pytest.approx(0.6)
    assert density_at("cubic", 0.5, s, d) == pytest.approx(d + (s - d) * 0.125)  # Zhu & Gupta
    assert density_at("cosine", 0.5, s, d) == pytest.approx(0.6)
    assert density_at("cosine", 0.25, s, d) == pytest.approx(
        d + (s - d) * (1 + math.cos(math.pi / 4)) / 2
    )
    # windowed: progress 0.5 in window [0, 0.5] is the end
    assert density_at("cubic", 0.25, s, d, 0.0, 0.5) == pytest.approx(d + (s - d) * 0.125)


@pytest.mark.parametrize(
    "args,match",
    [
        (("cubic", 0.5, 1.0, 0.0), "target density"),
        (("cubic", 0.5, 1.0, 1.2), "target density"),
        (("cubic", 0.5, 0.0, 0.1), "start density"),
        (("cubic", 0.5, 1.0, 0.1, 0.5, 0.5), "outside training"),
        (("cubic", 0.5, 1.0, 0.1, -0.1, 0.5), "outside training"),
        (("cubic", 0.5, 1.0, 0.1, 0.2, 1.5), "outside training"),
        (("cubic", 1.5, 1.0, 0.1), "progress"),
        (
            ("exp", 0.5, 1.0, 0.1),
            r"unknown density schedule 'exp'.*'constant', 'linear', 'cubic', 'cosine'",
        ),
    ],
)
def test_density_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        density_at(*args)


def test_regrowth_cosine_is_the_official_anneal():
    assert regrowth_ratio_at("cosine", 0.0) == pytest.approx(0.5)
    assert regrowth_ratio_at("cosine", 1.0) == pytest.approx(0.005)
    assert regrowth_ratio_at("cosine", 0.5) == pytest.approx(0.005 + 0.495 / 2)
    assert regrowth_ratio_at("cosine", 0.3) == pytest.approx(
        0.005 + 0.495 * (1 + math.cos(0.3 * math.pi)) / 2
    )


@pytest.mark.parametrize("kind", REGROWTH_SCHEDULES)
def test_regrowth_endpoints(kind):
    start, end = 0.3, 0.01
    assert regrowth_ratio_at(kind, 0.0, start, end) == pytest.approx(start)
    assert regrowth_ratio_at(kind, 1.0, start, end) == pytest.approx(
        start if kind == "constant" else end
    )
    assert 0 <= regrowth_ratio_at(kind, 0.37, start, end) < 1


@pytest.mark.parametrize(
    "args,match",
    [
        (("cosine", 0.5, 1.0, 0.1), r"\[0, 1\)"),
        (("constant", 0.5, -0.1), r"\[0, 1\)"),
        (("linear", 0.5, 0.1, 0.3), "end <= start"),
        (("cosine", 0.5, 0.3, -0.01), "end <= start"),
        (("cosine", -0.2), "progress"),
        (("step", 0.5), r"unknown regrowth schedule 'step'.*'cosine', 'linear', 'constant'"),
    ],
)
def test_regrowth_bad_inputs(args, match):
    with pytest.raises(ValueError, match=match):
        regrowth_ratio_at(*args)
