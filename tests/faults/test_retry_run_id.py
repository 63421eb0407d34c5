"""A trial whose worker died is retried as a new trial with its own MLflow run (issue 26): the
retry inherits the params, never the dead trial's run id, whether or not tracking is reachable;
when it ran while tracking was paused, the backfill makes its run and links it to the trial."""

from __future__ import annotations

import time

import mlflow
import pytest
from optuna.storages import fail_stale_trials
from optuna.trial import TrialState

from pipeline.config import SearchConfig, SearchParam
from pipeline.study import mlflow_runs, storage
from pipeline.tracking import plumbing as tracking


@pytest.fixture
def study(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking.LINK, "outage", None)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = mlflow.create_experiment("retry", artifact_location=str(tmp_path / "artifacts"))
    s = SearchConfig(
        n_trials=1, study_name="retry", storage=f"sqlite:///{tmp_path}/optuna.db", heartbeat_interval=1,
        grace_period=2, space=[SearchParam(key="compress.density", type="float", low=0.1, high=0.5)],
    )
    shared = storage.open_study(s, 0, on_lost=mlflow_runs.close_lost_run)
    yield s, shared, exp_id
    mlflow.set_tracking_uri(None)


def test_a_retry_gets_its_own_run_even_while_tracking_is_paused(study, monkeypatch):
    s, shared, exp_id = study
    parent_id = mlflow_runs.ensure_parent(s, exp_id, shared)
    client = mlflow.MlflowClient()

    # a worker starts trial 0 and its run, then dies (no more heartbeats)
    lost = shared.study.ask()
    lost.suggest_float("compress.density", 0.1, 0.5)
    dead_run = client.create_run(exp_id, tags={"mlflow.parentRunId": parent_id, "trial_number": "0"})
    lost.set_user_attr("mlflow_run_id", dead_run.info.run_id)
    lost.set_user_attr("worker", "gone:1")
    shared.storage.record_heartbeat(shared.trial_id(lost.number))
    time.sleep(s.grace_period + 1)

    fail_stale_trials(shared.study)  # what the next worker does: fail it, queue its params again
    assert shared.frozen(0).state == TrialState.FAIL
    assert client.get_run(dead_run.info.run_id).info.status == "KILLED"
    waiting = shared.study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs == {"retry_of": 0}  # not the dead run's attrs

    # the retry runs while the tracking server is down: no run can start, none is inherited
    monkeypatch.setattr(tracking.LINK, "outage", "ConnectionError: server down")
    retry = shared.study.ask()
    assert retry.params == lost.params and "mlflow_run_id" not in retry.user_attrs
    retry.set_user_attr("accuracy", 0.6)
    shared.study.tell(retry, [0.6, 0.55])

    # the server is back: the backfill gives the retry its own run and links it
    monkeypatch.setattr(tracking.LINK, "outage", None)
    done = mlflow_runs.reconcile_runs(
        shared, s, exp_id, parent_id,
        lambda t: tracking.log_metrics({"accuracy": t.values[0], "attack_auc": t.values[1]}),
    )
    frozen = shared.frozen(retry.number)
    run_id = mlflow_runs.trial_run_id(shared, frozen)
    assert run_id == done[retry.number] and run_id != dead_run.info.run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["trial_number"] == str(retry.number)
    assert run.data.tags["tracking_backfilled"] == "true"
    assert client.get_run(dead_run.info.run_id).info.status == "KILLED"


def test_a_later_read_of_the_study_finds_the_backfilled_run(study, monkeypatch, tmp_path):
    """The Pareto table of a later command (no reconcile this time) points at the backfill's run."""
    from pipeline.study import front

    s, shared, exp_id = study
    parent_id = mlflow_runs.ensure_parent(s, exp_id, shared)
    monkeypatch.setattr(tracking.LINK, "outage", "ConnectionError: server down")
    trial = shared.study.ask()
    trial.suggest_float("compress.density", 0.1, 0.5)
    shared.study.tell(trial, [0.6, 0.55])
    monkeypatch.setattr(tracking.LINK, "outage", None)
    done = mlflow_runs.reconcile_runs(shared, s, exp_id, parent_id, lambda t: None)
    table, _ = front.write_front(shared.study, s, tmp_path / "out", 1000.0, None, mlflow_runs.backfilled_runs(shared))
    assert list(table["mlflow_run_id"]) == [done[trial.number]] and done[trial.number]
