"""One `requeue` (issue 28): a trial failed before it finished (surplus, interrupted by the user,
left running by a process that is gone) is queued again with exactly the params it ran. Its
`params` win over its `fixed_params`; before, the surplus path let `fixed_params` win and
re-ran other params than the trial had."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from pipeline.config import SearchConfig, SearchParam
from pipeline.study import storage, workers

SPACE = {"compress.density": FloatDistribution(0.1, 0.5), "compress.regrowth.ratio": IntDistribution(1, 4)}
RAN = {"compress.density": 0.3, "compress.regrowth.ratio": 2}


@pytest.fixture
def shared(tmp_path):
    s = SearchConfig(
        n_trials=1, study_name="requeue", storage=f"journal:{tmp_path}/journal.log",
        space=[SearchParam(key="compress.density", type="float", low=0.1, high=0.5)],
    )
    return storage.open_study(s, 0)


def _suggest(trial) -> dict:
    return {
        "compress.density": trial.suggest_float("compress.density", 0.1, 0.5),
        "compress.regrowth.ratio": trial.suggest_int("compress.regrowth.ratio", 1, 4),
    }


def _running_trial_whose_fixed_params_disagree(shared):
    """A trial as Optuna's heartbeat retry queues it: the lost trial's params stored, and the lost
    trial's own (older, partial) queue entry kept as `fixed_params`; then asked (RUNNING)."""
    shared.study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=RAN, distributions=SPACE,
        system_attrs={"fixed_params": {"compress.density": 0.3}, "failed_trial": 0},
    ))
    trial = shared.study.ask()
    assert _suggest(trial) == RAN  # what it runs: the stored params, not the fixed or a fresh draw
    assert shared.frozen(trial.number).params == RAN
    return trial


def _surplus(shared, trial):
    assert workers.is_surplus(shared, trial, n_trials=0)


def _interrupted(shared, trial):
    workers.give_back(shared, trial)


def _left_running(shared, trial):
    workers.recover_running_without_heartbeat(shared)  # journal: no heartbeat; no worker named


@pytest.mark.parametrize("fail", [_surplus, _interrupted, _left_running], ids=["surplus", "interrupted", "left_running"])
def test_a_requeued_trial_reruns_exactly_the_params_the_failed_one_ran(shared, fail):
    trial = _running_trial_whose_fixed_params_disagree(shared)
    fail(shared, trial)
    assert shared.frozen(trial.number).state == TrialState.FAIL
    (queued,) = shared.study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == RAN
    # the retry names the trial it retries; a surplus trial carries on the retry it was
    assert queued.user_attrs == {"retry_of": 0 if fail is _surplus else trial.number}
    retry = shared.study.ask()
    assert _suggest(retry) == RAN


def test_a_trial_that_suggested_nothing_is_requeued_with_its_queue_entry(shared):
    shared.study.enqueue_trial(RAN)
    trial = shared.study.ask()
    assert shared.frozen(trial.number).params == {}
    assert workers.requeue(shared.study, shared.frozen(trial.number), None) == RAN
    (queued,) = shared.study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == RAN and queued.user_attrs == {}


def test_a_trial_with_nothing_to_run_is_not_requeued(shared):
    trial = shared.study.ask()
    assert workers.requeue(shared.study, shared.frozen(trial.number), trial.number) is None
    assert not shared.study.get_trials(states=(TrialState.WAITING,))
