"""The study layer under races, without training: several processes opened on one study at
the same instant (a barrier releases them together), each as if it were its own command.

Their trials are stand-ins that take a fraction of a second (the study layer does not know
what a trial computes), so the races are dense: a search space of a few parameter sets
makes two processes propose the same set often. Checked on SQLite and on a journal file:
- no two processes share a sampler seed;
- exactly `n_trials` COMPLETE trials, all with distinct params; a repeated proposal is
  recorded as a PRUNED trial with `duplicate_of` and never trained;
- exactly one MLflow parent run, every nested run under it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.trial import TrialState

from pipeline.tracking import masking
from pipeline.tracking import plumbing as tracking

pytestmark = pytest.mark.smoke

N_PROCS = 4
N_TRIALS = 6
# 2 x 4 = 8 parameter sets for 6 trials: most proposals late in the study repeat one
SPACE = (
    "search.space=[{key: compress.regrowth.kind, type: categorical, choices: [cosine, linear]},"
    "{key: compress.density_schedule.kind, type: categorical, choices: [constant, linear, cubic, cosine]}]"
)


def _stand_in_process(cfg_yaml: str, barrier, trial_s: float) -> None:
    """One 'command' on the study: open it, agree on the parent run, run stand-in trials."""
    from pipeline.config import SearchConfig, TrackingConfig, to_schema
    from pipeline.study import mlflow_runs, storage, workers

    cfg = OmegaConf.create(cfg_yaml)
    s = to_schema(SearchConfig, cfg.search)
    barrier.wait(timeout=300)  # released together: they race to create the study and the parent
    shared = storage.open_study(s, int(cfg.seed))
    exp_id = tracking.setup(to_schema(TrackingConfig, cfg.tracking))
    parent_id = mlflow_runs.ensure_parent(s, exp_id, shared)
    barrier.wait(timeout=300)  # and again: every process asks its first trial at the same moment

    def suggest(trial):
        trial.set_user_attr("pid", os.getpid())
        return {p.key: trial.suggest_categorical(p.key, list(p.choices)) for p in s.space}

    def run_trial(trial, params) -> bool:
        run = mlflow_runs.start_trial_run(
            exp_id, parent_id, s.study_name, trial.number, shared.trial_id(trial.number),
            workers.worker_name(),
        )
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        time.sleep(trial_s)
        key = "|".join(str(params[k]) for k in sorted(params))
        shared.study.tell(trial, [len(key) / 100.0, (hash(key) % 1000) / 1000.0])
        mlflow_runs.end_run(run, "FINISHED")
        return True

    workers.work(shared, s, suggest, run_trial)


def _run_at_once(cfg, n_procs: int, trial_s: float = 1.0) -> None:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    text = masking.config_yaml(cfg)
    procs = [ctx.Process(target=_stand_in_process, args=(text, barrier, trial_s)) for _ in range(n_procs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    codes = [p.exitcode for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
    assert codes == [0] * n_procs, f"stand-in processes exited with {codes}"


def _storage(cfg, kind: str, tmp_path):
    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(f"{tmp_path}/journal.log"))
    return str(cfg.search.storage)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_processes_started_at_once_share_nothing_but_the_study(cfg_factory, tmp_path, kind):
    overrides = ["experiment=smoke", f"search.n_trials={N_TRIALS}", SPACE,
                 "search.heartbeat_interval=1", "search.grace_period=5"]
    if kind == "journal":
        overrides.append(f"search.storage=journal:{tmp_path}/journal.log")
    cfg = cfg_factory(*overrides)
    _run_at_once(cfg, N_PROCS)

    study = optuna.load_study(study_name=str(cfg.search.study_name), storage=_storage(cfg, kind, tmp_path))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == N_TRIALS
    sets = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(sets)) == N_TRIALS, f"a parameter set was trained twice: {sets}"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # what did not complete was either yielded unrun (surplus) or a recorded repeat
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("surplus"), t
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["duplicate_of"] != t.number
            assert tuple(sorted(t.params.items())) in set(sets)
    # one sampler seed per process, none shared
    seeds: dict[int, set[int]] = {}
    for t in trials:
        if "pid" in t.user_attrs:
            seeds.setdefault(t.user_attrs["pid"], set()).add(t.user_attrs["sampler_seed"])
    assert all(len(v) == 1 for v in seeds.values())
    flat = [next(iter(v)) for v in seeds.values()]
    assert len(flat) >= 2, "the processes did not overlap: no race was tested"
    assert len(set(flat)) == len(flat)
    # the lock study used to agree on the parent run is gone
    assert [st.study_name for st in optuna.get_all_study_summaries(_storage(cfg, kind, tmp_path))] == [
        str(cfg.search.study_name)
    ]

    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [p.info.run_id for p in parents]
    assert study.user_attrs["mlflow_parent_run_id"] == parents[0].info.run_id
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {r.info.run_id for r in children} == {t.user_attrs["mlflow_run_id"] for t in complete}


def test_a_repeated_proposal_is_not_trained_and_does_not_count(cfg_factory, tmp_path):
    """One process: NSGA-II's offspring repeat earlier trials in a small space; each repeat is
    a PRUNED trial naming the original, and the study still ends with n_trials distinct sets."""
    cfg = cfg_factory("experiment=smoke", f"search.n_trials={N_TRIALS}", SPACE)
    _run_at_once(cfg, 1, trial_s=0.0)
    study = optuna.load_study(study_name=str(cfg.search.study_name), storage=str(cfg.search.storage))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    repeats = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(complete) == N_TRIALS
    assert len({tuple(sorted(t.params.items())) for t in complete}) == N_TRIALS
    by_number = {t.number: t for t in trials}
    assert repeats, "with 8 sets for 6 trials the sampler repeats itself; no repeat was recorded"
    for t in repeats:
        original = by_number[t.user_attrs["duplicate_of"]]
        assert original.number < t.number and original.params == t.params
        assert "mlflow_run_id" not in t.user_attrs  # never trained, no MLflow run


def test_a_space_smaller_than_n_trials_is_refused(cfg_factory):
    from pipeline import validation
    from pipeline.config import SearchConfig, to_schema

    cfg = cfg_factory("experiment=smoke", "search.n_trials=9", SPACE)
    with pytest.raises(ValueError, match="only 8 distinct parameter sets"):
        validation.validate_search(cfg, to_schema(SearchConfig, cfg.search))
