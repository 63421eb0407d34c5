"""End to end on tiny data: compose experiment=smoke into tmp_path and run the real stages in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from attacks import loss_attack_auc
from pipeline.__main__ import run_stage
from pipeline.analysis import pareto
from pipeline.context import RunContext, build_model, load_data
from pipeline.stages import teacher
from training.loops import train

pytestmark = pytest.mark.smoke

FIVE = ("accuracy", "attack_auc", "attack_tpr_at_0.1pct_fpr", "model_size_bytes", "density")


def _runs(cfg):
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def test_search_tracks_every_trial_and_resumes_from_cache(cfg_factory, monkeypatch, capsys):
    cfg = cfg_factory("experiment=smoke")
    result = run_stage(cfg)
    assert result.n_complete == 2
    # the run ends by saying where the results are and how to open both UIs
    last = capsys.readouterr().out.strip().splitlines()[-4:]
    assert all(f in last[0] for f in ("pareto.csv", "trials.csv", "pareto.png", str(result.pareto_csv.parent)))
    assert "make ui" in last[1] and "workflowType=machine_learning" in last[2]
    assert "make dashboard" in last[3] and "http://127.0.0.1:8080" in last[3]

    client, parents, children = _runs(cfg)
    assert len(parents) == 1 and len(children) == 2
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        missing = [m for m in (*FIVE, "test_accuracy", "audit_auc")
                   if m not in child.data.metrics and m != "attack_tpr_at_0.1pct_fpr"]
        assert not missing, f"trial run lacks {missing}"
        assert abs(child.data.metrics["density"] - 0.2) < 0.002  # exact count: round(0.2 * n_weights)
        assert child.data.metrics["model_size_bytes"] > 0
        assert "config.yaml" in {a.path for a in client.list_artifacts(child.info.run_id)}
        # the objectives lead the run's metrics (the UI's order), and each is logged once
        assert list(child.data.metrics)[:2] == ["accuracy", "attack_auc"]
        assert len(client.get_metric_history(child.info.run_id, "attack_auc")) == 1
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens as model training

    storage = str(cfg.search.storage)
    study = optuna.load_study(study_name=str(cfg.search.study_name), storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2
    assert {t.user_attrs["mlflow_run_id"] for t in done} == {c.info.run_id for c in children}
    assert study.metric_names == ["accuracy", "attack_auc"]
    # trials audit against the dense references only (attack.search_reference): no matched ones
    assert not list((Path(str(cfg.paths.cache_dir)) / "shadow_matched").glob("*"))

    # The reported Pareto set equals the nondominated set of all trials.
    values = np.array([t.values for t in done])
    ranks = pareto.nondominated_ranks(values, ["maximize", "minimize"])
    expected = {t.number for t, r in zip(done, ranks) if r == 0}
    assert set(pd.read_csv(result.pareto_csv)["trial"]) == expected
    assert {t.number for t in study.best_trials} == expected

    # Second run, one more trial: teacher and shadows come from the cache (training them would raise).
    def no_training(*args, **kwargs):
        raise AssertionError("teacher or shadow was retrained instead of read from the cache")

    monkeypatch.setattr(teacher, "train", no_training)
    monkeypatch.setattr("pipeline.stages.shadows.train", no_training)
    monkeypatch.setattr("pipeline.stages.shadows.train_grouped", no_training)
    cfg3 = cfg_factory("experiment=smoke", "search.n_trials=3")
    again = run_stage(cfg3)
    assert again.n_complete == 3
    _, parents2, children2 = _runs(cfg)
    assert len(parents2) == 1 and len(children2) == 3  # the same parent run, one new trial


def test_every_stage_runs_from_the_cli_entry(cfg_factory):
    for stage in ("teacher", "shadows", "compress", "attack"):
        out = run_stage(cfg_factory("experiment=smoke", f"stage={stage}"))
        assert out is not None
    att = run_stage(cfg_factory("experiment=smoke", "stage=attack"))
    assert att.cache_hit
    assert 0.0 <= att.metrics["audit_auc"] <= 1.0


def test_teacher_on_digits_is_accurate_and_leaks_a_little(cfg_factory):
    cfg = cfg_factory("dataset=digits", "runtime.progress=false")
    res = teacher.run(RunContext.build(cfg))
    assert res.metrics["test_accuracy"] >= 0.93
    data = load_data(cfg)
    model = teacher.load(RunContext.build(cfg), res)
    am, t = data.splits.audit_members, data.splits.test
    slices = (data.dataset.x[am], data.dataset.y[am], data.dataset.x[t], data.dataset.y[t])
    assert loss_attack_auc(model, *slices) > 0.5

    # A model that never saw the audit members: the loss attack is at chance.
    unseen = build_model(RunContext.build(cfg), data, "unseen")
    known = torch.from_numpy(data.splits.known_members)
    from pipeline.context import train_recipe
    from training.seeds import generator

    train(unseen, data.dataset.x[known], data.dataset.y[known], train_recipe(cfg), generator(0, "unseen"))
    auc = loss_attack_auc(unseen, *slices)
    assert abs(auc - 0.5) <= 0.05, auc


def test_search_objectives_never_read_the_reported_audits_members(cfg_factory):
    """Issue 18: `attack_*` (the search objectives) audit search members, `audit_*` audit members:
    disjoint parts of train, and neither among the members the audit's trained attacks know."""
    cfg = cfg_factory("experiment=smoke", "stage=attack", "compress=dst", "attack.reference=dense")
    result = run_stage(cfg)
    scores = np.load(result.path / "scores.npz")
    s = load_data(cfg).splits
    select = set(scores["select/example_index"][scores["select/labels"] == 1])
    audit = set(scores["audit/example_index"][scores["audit/labels"] == 1])
    assert select and select <= set(s.search_members)
    assert audit and audit <= set(s.audit_members)
    assert not select & audit and not (select | audit) & set(s.known_members)
    assert "attack_auc" in result.metrics and "audit_auc" in result.metrics


def test_a_final_audit_uses_recipe_matched_references_by_default(cfg_factory):
    cfg = cfg_factory("experiment=smoke", "stage=attack", "compress=oneshot")
    assert cfg.attack.reference == "matched"
    result = run_stage(cfg)
    matched = list((Path(str(cfg.paths.cache_dir)) / "shadow_matched").glob("*"))
    assert len(matched) == cfg.shadows.n_models  # one per reference model, trained by the oneshot recipe
    assert "lira_offline" in pd.read_csv(result.path / "audit.csv", index_col=0).index


def test_matched_references_and_canaries_are_audited(cfg_factory):
    cfg = cfg_factory(
        "experiment=smoke", "stage=attack", "compress=oneshot", "attack.reference=both", "+dataset.canaries=40"
    )
    result = run_stage(cfg)
    table = pd.read_csv(result.path / "audit.csv", index_col=0)
    assert {"lira_offline", "lira_offline_matched"} <= set(table.index)
    # canaries: 20 in train, 20 out, audited separately
    canary = pd.read_csv(result.path / "canary.csv", index_col=0)
    assert "loss" in canary.index and "canary_auc" in result.metrics
    scores = np.load(result.path / "scores.npz")
    assert scores["canary/labels"].sum() == 20 and len(scores["canary/labels"]) == 40
    data = load_data(cfg)
    assert set(data.splits.canaries[data.splits.canary_in]) <= set(data.splits.train)
    assert not set(data.splits.canaries) & set(data.splits.population)
    # canary labels were moved to another class
    from training.embedded import load_synthetic

    raw = load_synthetic(n_samples=800, n_features=20, n_informative=10, n_classes=4)
    assert (raw.y[data.splits.canaries] != data.dataset.y[data.splits.canaries]).all()
