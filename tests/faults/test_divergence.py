"""Training that stays finite but diverges stops with the same clear error as a NaN loss
(rule in `training.loops`), and a search records such a trial as failed."""

from __future__ import annotations

import math

import pytest

from pipeline.context import RunContext
from pipeline.stages import teacher as teacher_stage
from training.loops import DivergenceCheck, DivergenceError, NonFiniteLossError


def test_rule_loss_far_above_its_start():
    check = DivergenceCheck(4)
    check.step(1.2)  # reference: max(1.2, ln 4) = 1.386
    check.step(5.0)
    check.epoch(0, 13.0)  # < 10x
    with pytest.raises(DivergenceError, match=r"epoch 1's mean loss is 14.*more than 10x its start \(1.386\)"):
        check.epoch(1, 14.0)
    with pytest.raises(DivergenceError, match="a batch's loss is 1.3e\\+19"):
        check.step(1.3e19)
    assert issubclass(DivergenceError, NonFiniteLossError)  # handled wherever a NaN loss is


def test_rule_accuracy_at_chance_after_a_good_start():
    DivergenceCheck(10, chance=0.1).epoch(0, 2.0, accuracy=0.1)  # from scratch: no start accuracy
    DivergenceCheck(10, chance=0.1, start_accuracy=0.2).epoch(0, 2.0, accuracy=0.1)  # start near chance
    DivergenceCheck(10, chance=0.1, start_accuracy=0.9).epoch(0, 2.0, accuracy=0.5)  # worse, not chance
    with pytest.raises(DivergenceError, match="accuracy fell from 0.900 to 0.110"):
        DivergenceCheck(10, chance=0.1, start_accuracy=0.9).epoch(0, 2.0, accuracy=0.11)


def test_normal_training_is_not_stopped(cfg_factory):
    result = teacher_stage.run(RunContext.build(cfg_factory("experiment=smoke", "tracking.enabled=false")))
    assert all(math.isfinite(h["loss"]) for h in result.history)


@pytest.mark.smoke
def test_adam_at_lr_1e9_is_caught_and_nothing_is_cached(cfg_factory, tmp_path):
    cfg = cfg_factory("experiment=smoke", "tracking.enabled=false", "train.optimizer=adam", "train.lr=1e9")
    with pytest.raises(NonFiniteLossError, match=r"diverged|training loss is"):
        teacher_stage.run(RunContext.build(cfg))
    teacher_dir = tmp_path / ".cache" / "teacher"
    assert not teacher_dir.exists() or not [p for p in teacher_dir.iterdir() if not p.name.startswith(".")]


@pytest.mark.smoke
def test_a_diverging_search_trial_is_recorded_failed(cfg_factory, tmp_path):
    import mlflow
    import optuna

    from pipeline.__main__ import run_stage

    cfg = cfg_factory(
        "experiment=smoke", "stage=search", "search.n_trials=1", "train.optimizer=adam", "train.lr=0.01",
        "search.space=[{key: train.lr, type: categorical, choices: [1.0e9]}]",
    )
    with pytest.raises(RuntimeError, match="trials failed in a row"):
        run_stage(cfg)
    study = optuna.load_study(study_name=str(cfg.search.study_name), storage=str(cfg.search.storage))
    states = {t.state.name for t in study.trials}
    assert states == {"FAIL"}
    mlflow.set_tracking_uri(str(cfg.tracking.uri))
    runs = mlflow.search_runs(experiment_names=[str(cfg.tracking.experiment)], filter_string="tags.trial_number != ''")
    assert len(runs) == len(study.trials) and set(runs["status"]) == {"FAILED"}
    assert all("diverged" in e or "training loss is" in e for e in runs["tags.error"])
