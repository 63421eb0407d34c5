"""The reported Pareto set is the nondominated set recomputed from all trials (constraints
respected), and a trial that raises is recorded as failed while the study goes on."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pipeline.__main__ import run_stage
from pipeline.stages import compress as compress_stage

pytestmark = pytest.mark.smoke


SIGNS = {"accuracy": -1.0, "attack_auc": 1.0, "model_size_bytes": 1.0}  # minimise sign * value


def dominates(a: list[float], b: list[float], objectives: list[str]) -> bool:
    """a is no worse than b in every objective and better in one."""
    pa = [SIGNS[o] * v for o, v in zip(objectives, a, strict=True)]
    pb = [SIGNS[o] * v for o, v in zip(objectives, b, strict=True)]
    return all(x <= y for x, y in zip(pa, pb, strict=True)) and any(
        x < y for x, y in zip(pa, pb, strict=True)
    )


def test_constrained_pareto_set_is_the_feasible_nondominated_set(cfg_factory):
    # An accuracy floor and a density floor (at most 50x compression). Density is exact (mask
    # counts), so that constraint follows from the sampled params; it excludes the smallest
    # models, which sit on the unconstrained front (they minimize model_size_bytes).
    floor, cap = 0.2, 0.02
    cfg = cfg_factory(
        "experiment=smoke",
        "search=with_density",
        "search.n_trials=6",
        f"+search.constraints={{accuracy_min: {floor}, density_min: {cap}}}",
    )
    result = run_stage(cfg)
    study = optuna.load_study(study_name=result.study_name, storage=str(cfg.search.storage))
    objectives = study.metric_names
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6
    for t in done:
        assert t.constraints["accuracy_min"] == pytest.approx(floor - t.values[0])
        assert t.constraints["density_min"] == pytest.approx(cap - t.user_attrs["density"])

    def is_feasible(t) -> bool:
        return t.values[0] >= floor and t.user_attrs["density"] >= cap

    feasible = [t for t in done if is_feasible(t)]
    assert 0 < len(feasible) < len(done)
    expected = {
        t.number
        for t in feasible
        if not any(dominates(o.values, t.values, objectives) for o in feasible)
    }
    unconstrained = {
        t.number for t in done if not any(dominates(o.values, t.values, objectives) for o in done)
    }
    reported = pd.read_csv(result.pareto_csv)
    assert set(reported["trial"]) == expected
    assert set(result.pareto["trial"]) == expected
    assert (reported["accuracy"] >= floor).all() and (reported["density"] >= cap).all()
    assert unconstrained - expected, "an infeasible trial would have been on the front"
    trials = pd.read_csv(result.pareto_csv.parent / "trials.csv")
    assert len(trials) == 6 and set(trials.loc[~trials["feasible"], "trial"]).isdisjoint(expected)
    assert {
        t.number for t in study.best_trials
    } == expected  # Optuna agrees (it reads the constraints too)

    # Pareto rank 0 tags in MLflow mark exactly the reported set's runs.
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    ranks = {
        t.number: client.get_run(t.user_attrs["mlflow_run_id"]).data.tags["pareto_rank"]
        for t in done
    }
    assert {n for n, r in ranks.items() if r == "0"} == expected


def test_a_failing_trial_is_recorded_and_the_study_goes_on(cfg_factory, monkeypatch):
    real = compress_stage.run
    calls = []

    def flaky(ctx, teacher):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected failure in the first trial")
        return real(ctx, teacher)

    monkeypatch.setattr(compress_stage, "run", flaky)
    cfg = cfg_factory("experiment=smoke")
    result = run_stage(cfg)
    assert result.n_complete == 2
    study = optuna.load_study(study_name=result.study_name, storage=str(cfg.search.storage))
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]

    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    bad = client.get_run(study.trials[0].user_attrs["mlflow_run_id"])
    assert bad.info.status == "FAILED"
    assert bad.data.tags["error"] == "RuntimeError: injected failure in the first trial"
    assert bad.data.tags["mlflow.parentRunId"] == result.parent_run_id
    for t in study.trials[1:]:
        assert client.get_run(t.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert 0 not in set(result.pareto["trial"])
