"""Two worker processes share one study (SQLite with heartbeats, or a journal file): exactly
`n_trials` complete trials, none lost or run twice, one MLflow run per trial."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from pipeline.__main__ import run_stage

pytestmark = pytest.mark.smoke


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_complete_the_study_exactly_once(cfg_factory, tmp_path, kind):
    overrides = [
        "experiment=smoke",
        "search.n_trials=6",
        "search.n_workers=2",
        "search.heartbeat_interval=1",
        "search.grace_period=5",
    ]
    if kind == "journal":
        overrides.append(f"search.storage=journal:{tmp_path}/journal.log")
    cfg = cfg_factory(*overrides)
    result = run_stage(cfg)
    assert result.n_complete == 6

    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(f"{tmp_path}/journal.log"))
    else:
        storage = str(cfg.search.storage)
    trials = optuna.load_study(study_name=result.study_name, storage=storage).get_trials(
        deepcopy=False
    )
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # The only failed trials allowed are ones yielded unrun when both workers asked at once.
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)

    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    runs = client.search_runs([exp.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1
    assert {r.info.run_id for r in children if r.info.status == "FINISHED"} == {
        t.user_attrs["mlflow_run_id"] for t in complete
    }
    assert len(children) == 6  # no trial ran twice
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == sorted(
        t.number for t in complete
    )
    workers = {r.data.tags["worker"] for r in children}
    assert 1 <= len(workers) <= 2
