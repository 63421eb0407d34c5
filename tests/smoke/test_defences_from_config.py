"""Issue 18's defences run from config: `compress=dmp` with a reference split, RelaxLoss on sparse
methods, SafeCompress candidates that differ in defence strength, and the frontier points."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CONF_DIR, make_cfg
from mlflow.tracking import MlflowClient

from pipeline.__main__ import run_stage
from pipeline.context import load_data
from pipeline.validation import validate

pytestmark = pytest.mark.smoke

# experiment=smoke's synthetic pool is split to the last record: leave 15% of it unused
ROOM = "dataset.split.population=0.3"


def _history_losses(result) -> list[float]:
    return [h["loss"] for h in json.loads((result.path / "metrics.json").read_text())["history"]]


def test_dmp_audits_with_its_own_recipe_and_logs_the_data_it_used(cfg_factory, monkeypatch):
    from pipeline.stages import shadows

    cfg = cfg_factory(
        "experiment=smoke", "stage=attack", "compress=dmp", "+dataset.reference_size=100", ROOM
    )
    data = load_data(cfg)
    s = data.splits
    assert len(s.reference) == 100
    others = np.concatenate([s.train, s.val, s.test, s.population])
    assert not set(s.reference.tolist()) & set(others.tolist())
    seen = []  # each matched reference's own splits
    train = shadows.train_compressed
    monkeypatch.setattr(shadows, "train_compressed", lambda job: seen.append(job.data.splits) or train(job))
    result = run_stage(
        cfg
    )  # attack.reference=matched: the references run DMP on the attacker's data
    assert np.isfinite(result.metrics["audit_auc"])
    # the attacker's DMP references distil on the defender's whole reference split (an adaptive
    # attacker at the defence's own data budget), their members drawn from the population
    assert len(seen) == cfg.shadows.n_models
    for split in seen:
        np.testing.assert_array_equal(split.reference, s.reference)
        assert set(split.train.tolist()) <= set(s.population.tolist())
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    (run,) = client.search_runs(
        [client.get_experiment_by_name(str(cfg.tracking.experiment)).experiment_id]
    )
    assert run.data.metrics["defender_reference_size"] == 100
    assert run.data.metrics["defender_reference_trained"] == 100


def test_dmp_knobs_preset_searches_the_defence_and_each_trial_applies_its_draw(cfg_factory):
    cfg = cfg_factory("experiment=smoke", "stage=search", "search=dmp_knobs", "compress=dmp",
                      "+dataset.reference_size=100", ROOM)
    res = run_stage(cfg)
    assert res.n_complete == 2
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    trials = [r for r in client.search_runs([exp.experiment_id], filter_string=f"tags.study_name = '{res.study_name}'")
              if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2
    draws = set()
    for r in trials:
        w, t = float(r.data.params["compress.dmp.member_weight"]), float(r.data.params["compress.dmp.temperature"])
        assert 0.0 <= w <= 0.5 and 1.0 <= t <= 8.0
        assert r.data.tags["method"] == "dmp"
        assert r.data.params["attack.reference"] == "dense"  # trials audit with dense references
        draws.add((w, t))
    assert len(draws) == 2  # two parameter sets, not one drawn twice


def test_dmp_without_a_reference_split_is_refused_before_training(cfg_factory, tmp_path):
    with pytest.raises(
        ValueError, match=r"compress=dmp trains on the defender's reference split.*reference_size"
    ):
        run_stage(cfg_factory("experiment=smoke", "stage=compress", "compress=dmp"))
    with pytest.raises(ValueError, match=r"reference_size=500 needs .* leave 0 of the pool"):
        run_stage(
            cfg_factory(
                "experiment=smoke", "stage=compress", "compress=dmp", "+dataset.reference_size=500"
            )
        )
    assert not (tmp_path / ".cache" / "compress").exists()


@pytest.mark.parametrize("method", ["dst", "safecompress", "oneshot"])
def test_relaxloss_trains_any_sparse_method_from_config(cfg_factory, method):
    plain = run_stage(cfg_factory("experiment=smoke", "stage=compress", f"compress={method}"))
    relaxed = run_stage(
        cfg_factory(
            "experiment=smoke",
            "stage=compress",
            f"compress={method}",
            "compress.relaxloss.enabled=true",
            "compress.relaxloss.alpha=1.0",
        )
    )
    assert relaxed.key != plain.key
    assert _history_losses(relaxed) != _history_losses(plain)
    assert abs(relaxed.metrics["density"] - 0.2) < 0.005


def test_safecompress_chooses_between_defences_from_config(cfg_factory):
    cfg = cfg_factory(
        "experiment=smoke",
        "stage=compress",
        "compress.n_candidates=3",
        "compress.strategies=[{prune: magnitude, grow: random}, {prune: magnitude, grow: random, relaxloss_alpha: 1.0},"
        " {prune: magnitude, grow: random, distill_weight: 0.5, distill_temperature: 2.0}]",
    )
    result = run_stage(cfg)
    table = pd.read_csv(result.candidates_path)
    assert set(table["strategy"]) == {
        "magnitude/random",
        "magnitude/random_relaxloss1",
        "magnitude/random_distill0.5_T2",
    }
    assert (table.groupby("update")["chosen"].sum() == 1).all()
    wins = {k: v for k, v in result.metrics.items() if k.startswith("wins_")}
    assert sum(wins.values()) == table["update"].nunique()


NEW_POINTS = (
    "dmp",
    "dmp_t4",
    "dmp_mixed",
    "dst_relaxloss_a1",
    "dst_relaxloss_a2",
    "safecompress_defences",
)


@pytest.mark.parametrize("point", NEW_POINTS)
def test_frontier_points_compose_and_validate(point):
    assert (Path(CONF_DIR) / "frontier" / f"{point}.yaml").exists()
    cfg = make_cfg(["experiment=frontier", f"+frontier={point}"], Path("/nonexistent-root"))
    validate(cfg)
    if point.startswith("dmp"):
        assert cfg.compress.method == "dmp" and cfg.dataset.reference_size == 5000
    if point.startswith("dst_relaxloss"):
        assert cfg.compress.method == "dst" and cfg.compress.relaxloss.enabled
