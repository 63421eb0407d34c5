"""Every point of `conf/frontier/` composes with `experiment=frontier`, validates, and gets its own
row label, so the compare stage can tell the frontier's points apart (issue 18: distillation and
tuned DP-SGD points)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import CONF_DIR, make_cfg
from omegaconf import OmegaConf

from pipeline import compress_jobs as from_config
from pipeline.tracking import plumbing as tracking
from pipeline.tracking import runs
from pipeline.validation import validate

POINTS = sorted(p.stem for p in (Path(CONF_DIR) / "frontier").glob("*.yaml"))


def _row(point: str) -> pd.Series:
    cfg = make_cfg(["experiment=frontier", f"+frontier={point}"], Path("/nonexistent-root"))
    validate(cfg)
    params = tracking.flatten(OmegaConf.to_container(cfg, resolve=True))
    tags = tracking.run_tags(cfg)
    return pd.Series({**{f"params.{k}": str(v) for k, v in params.items()}, "method": tags["method"],
                      "variant": tags["variant"], "target_density": float(tags["density"])})


@pytest.fixture(scope="module")
def rows() -> dict[str, pd.Series]:
    return {p: _row(p) for p in POINTS}


def test_every_point_has_its_own_label(rows):
    labels = {p: runs.run_label(r) for p, r in rows.items()}
    dups = {lab for lab in labels.values() if list(labels.values()).count(lab) > 1}
    # dpsgd_tuned is the sweep whose winners the dpsgd_eps* points record; dpsgd the old fixed point
    assert not dups, {p: lab for p, lab in labels.items() if lab in dups}
    assert labels["kd_t4"] == "dst [kd_T=4.0, kd_w=0.5]"
    assert labels["kd_t4_e15"] == "dst [ep=15, kd_T=4.0, kd_w=0.5]"
    assert labels["dpsgd_tuned"].startswith("dpsgd") and "tuned" in labels["dpsgd_tuned"]


def test_distillation_points_distil_from_the_dense_teacher_on_the_members():
    for point in [p for p in POINTS if p.startswith("kd_")]:
        cfg = make_cfg(["experiment=frontier", f"+frontier={point}"], Path("/nonexistent-root"))
        c = from_config.compress_config(cfg)
        assert c.method == "dst" and c.distill.enabled and c.density == 0.05, point


def test_frontier_members_are_the_baselines_not_the_defences(rows):
    """compare.frontier.methods' default picks the baselines among the points: distillation is a
    frontier point (it is `dst` with compress.distill), RelaxLoss on `dst` is a defence under test."""
    from pipeline.analysis.frontier import frontier_runs
    from pipeline.config import FRONTIER_METHODS

    frame = pd.DataFrame([{**r.to_dict(), "point": p, "dataset": "purchase_synth"} for p, r in rows.items()])
    members = set(frontier_runs(frame, "purchase_synth", 0.05, list(FRONTIER_METHODS))["point"])
    for point in ("dst_e10", "dst_full", "dense", "dense_adv", "kd_t4", "kd_t4_e15", "dpsgd"):
        assert point in members, point
    for point in ("dst_relaxloss_a1", "dst_relaxloss_a2", "dmp", "dmp_mixed", "dst_adv",
                  "safecompress_bmia", "safecompress_defences"):
        assert point not in members, point
