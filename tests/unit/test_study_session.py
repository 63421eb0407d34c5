"""The search's study session (issue 28): a trial's tracking is steered by the link the session
carries, not by module state; the trial metrics are declared once and the rest derives from them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.config import OBJECTIVE_DIRECTIONS, SearchConfig
from pipeline.results import METRIC_NAMES, SUMMARY_METRICS, TRIAL_METRICS
from pipeline.stages import search
from pipeline.study import mlflow_runs
from pipeline.tracking import plumbing as tracking


@pytest.fixture
def started(monkeypatch):
    calls = []
    monkeypatch.setattr(mlflow_runs, "start_trial_run", lambda *args: calls.append(args) or "a run")
    return calls


def _session(link, experiment_id="1"):
    return search.StudySession(
        ctx=None, search=SearchConfig(study_name="s"), shared=SimpleNamespace(trial_id=lambda n: 100 + n),
        link=link, experiment_id=experiment_id, parent_run_id="parent", trial_work=None, teacher=None,
        shadows=None,
    )


def test_a_trial_run_starts_by_the_sessions_link(monkeypatch, started):
    link = tracking.TrackingLink()
    link.outage = "ConnectionError: server down"
    monkeypatch.setattr(link, "reconnect", lambda: False)  # still down
    monkeypatch.setattr(tracking.LINK, "outage", None)  # the module's link answers: not asked
    trial = SimpleNamespace(number=3)
    assert search._start_run(_session(link), trial) is None and not started

    monkeypatch.setattr(link, "reconnect", lambda: setattr(link, "outage", None) or True)  # back
    assert search._start_run(_session(link), trial) == "a run"
    (args,) = started
    assert args[:5] == ("1", "parent", "s", 3, 103)
    assert search._start_run(_session(link, experiment_id=None), trial) is None  # tracking off


def test_the_trial_metrics_are_declared_once():
    assert METRIC_NAMES == tuple(m.name for m in TRIAL_METRICS)
    assert len(set(METRIC_NAMES)) == len(METRIC_NAMES)
    assert set(SUMMARY_METRICS) == set(METRIC_NAMES) - {"audit_auc"}
    # what the search may optimise or constrain: the validation metrics, never the test ones
    assert list(OBJECTIVE_DIRECTIONS) == ["accuracy", "attack_auc", "attack_tpr_at_0.1pct_fpr", "model_size_bytes",
                                          "density"]
    assert OBJECTIVE_DIRECTIONS["accuracy"] == "maximize" and OBJECTIVE_DIRECTIONS["attack_auc"] == "minimize"
