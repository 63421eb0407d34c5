"""LiRA's augmented queries (`attacks.views`, `attack.query_views`): the transforms themselves,
and that the audit hands the target and every reference the same views."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from torch import nn

from attacks.views import QUERY_VIEWS, query_views, shift_image
from pipeline.config import AttackConfig
from pipeline.stages import attack as attack_stage
from training.rules import check_rules


def test_shift_moves_pixels_and_zero_fills():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).view(2, 1, 4, 5) + 1  # no zeros inside
    down = shift_image(x, 1, 0)
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and torch.all(down[..., 0, :] == 0)
    left = shift_image(x, 0, -2)
    assert torch.equal(left[..., :, :-2], x[..., :, 2:]) and torch.all(left[..., :, -2:] == 0)
    back = shift_image(shift_image(x, 0, 3), 0, -3)  # columns pushed out stay lost
    assert torch.equal(back[..., :2], x[..., :2]) and torch.all(back[..., 2:] == 0)
    with pytest.raises(ValueError, match="does not fit images of 4x5"):
        shift_image(x, 4, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        shift_image(x[0], 1, 0)


def test_flip_shift_is_nine_distinct_views_and_flip_is_the_mirror():
    x = torch.randn(3, 2, 6, 6)
    (name, mirror), = query_views("flip")
    assert name == "flip" and torch.equal(mirror(x), x.flip(-1))
    views = query_views("flip_shift", shift=2)
    assert len(views) == 9 and len({n for n, _ in views}) == 9
    outs = [v(x) for _, v in views]
    assert all(o.shape == x.shape for o in outs)
    assert all(not torch.equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1 :])
    assert torch.equal(dict(views)["flip+shift(2,0)"](x), shift_image(x.flip(-1), 2, 0))
    assert query_views("none") == []
    with pytest.raises(ValueError, match=r"unknown query views 'crop'; valid: \['none', 'flip', 'flip_shift'\]"):
        query_views("crop")


def test_the_config_refuses_unknown_views_and_a_zero_shift():
    check_rules(AttackConfig(query_views="flip_shift", query_shift=4), "attack")
    with pytest.raises(ValueError, match="attack.query_views.*flip_shift"):
        check_rules(AttackConfig(query_views="mirror"), "attack")
    with pytest.raises(ValueError, match="attack.query_shift"):
        check_rules(AttackConfig(query_shift=0), "attack")
    assert QUERY_VIEWS == ("none", "flip", "flip_shift")


@pytest.mark.parametrize("kind, n_views", [("flip", 1), ("flip_shift", 9)])
def test_the_audit_queries_target_and_references_on_the_same_views(kind, n_views):
    torch.manual_seed(0)
    x = torch.randn(12, 1, 5, 5)
    data = types.SimpleNamespace(dataset=types.SimpleNamespace(x=x, y=torch.randint(0, 3, (12,))))
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(25, 3)) for _ in range(3)]
    ctx = object.__new__(attack_stage._Context)  # only what _views reads
    ctx.a, ctx.data, ctx.model, ctx.use_views = AttackConfig(query_views=kind, query_shift=1), data, nets[0], True
    idx = np.array([0, 3, 7])
    got = ctx._views(nets[1:], idx)
    assert len(got["target_views"]) == n_views and [len(r) for r in got["reference_views"]] == [2] * n_views
    for (_, view), tv, rv in zip(query_views(kind, 1), got["target_views"], got["reference_views"]):
        with torch.no_grad():
            assert np.allclose(tv.logits, nets[0](view(x[idx])).numpy(), atol=1e-6)
            assert np.allclose(rv[1].logits, nets[2](view(x[idx])).numpy(), atol=1e-6)
    ctx.use_views = False
    assert ctx._views(nets[1:], idx) == {}
    ctx.use_views, ctx.a = True, AttackConfig(query_views="none")
    assert ctx._views(nets[1:], idx) == {}
