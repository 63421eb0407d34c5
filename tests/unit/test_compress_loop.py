"""The shared sparse-training loop keeps one history row per epoch whatever the update schedule."""

from __future__ import annotations

import json

import pytest

from pipeline.__main__ import run_stage
from pipeline.context import RunContext
from training.loops import steps_per_epoch

pytestmark = pytest.mark.smoke

BASE = ("experiment=smoke", "stage=compress", "tracking.enabled=false", "train.epochs=4")


def _history(cfg_factory, *overrides):
    result = run_stage(cfg_factory(*BASE, *overrides))
    return json.loads((result.path / "metrics.json").read_text())["history"]


@pytest.mark.parametrize("method", ["gmp", "dst"])
def test_a_mask_update_on_an_epochs_last_step_keeps_that_epochs_row(cfg_factory, method):
    """gmp does not regrow: an update on an epoch's last step must not skip the epoch-end block (issue 28)."""
    ctx = RunContext.build(cfg_factory(*BASE))
    spe = steps_per_epoch(len(ctx.data.part("train")[1]), int(ctx.cfg.train.batch_size))
    # every epoch's last step is an update step (stop_fraction 0.75: epochs 1-3 of 4)
    history = _history(cfg_factory, f"compress={method}", f"compress.update_every={spe}")
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert abs(history[-1]["density"] - 0.2) < 0.005


def test_probe_steps_that_cross_an_epoch_boundary_keep_that_epochs_row(cfg_factory):
    """SafeCompress's probes spend training steps: a jump over an epoch's last step still closes the epoch."""
    ctx = RunContext.build(cfg_factory(*BASE))
    spe = steps_per_epoch(len(ctx.data.part("train")[1]), int(ctx.cfg.train.batch_size))
    # an update one step before each epoch's end, then 2 probe steps: the step count jumps past the boundary
    history = _history(cfg_factory, "compress=safecompress", f"compress.update_every={spe}",
                       "compress.probe_steps=2")
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
