"""Every compress method and SafeCompress variant runs through the stage; adversarial regularization works."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from attacks.inputs import AttackInputs
from attacks.metrics import roc_auc
from attacks.nn import NNBlackBoxAttack
from attacks.signals import compute_signals
from pipeline.__main__ import run_stage
from pipeline.config import TrainConfig
from training.adversarial import Adversary
from training.compress.steps import Losses, masked_step
from training.embedded import load_synthetic
from training.loops import TrainState, make_optimizer, set_lr
from training.models import MLP

pytestmark = pytest.mark.smoke

SAME = ("accuracy", "test_accuracy", "train_accuracy", "density", "model_size_bytes")


@pytest.mark.parametrize("method", ["dense", "oneshot", "gmp", "dst", "dst_adv", "safecompress", "dpsgd"])
def test_every_method_runs_through_the_stage_and_logs_the_same_metrics(cfg_factory, method):
    cfg = cfg_factory("experiment=smoke", "stage=compress", f"compress={method}")
    result = run_stage(cfg)
    assert all(k in result.metrics for k in SAME)
    if method not in ("dense", "dpsgd"):
        assert abs(result.metrics["density"] - 0.2) < 0.005
        assert result.metrics["model_size_bytes"] < result.metrics["dense_size_bytes"]
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    (run,) = client.search_runs([exp.experiment_id])
    assert set(SAME) <= set(run.data.metrics)


@pytest.mark.parametrize("variant", ["metric", "bmia", "wmia", "mmia"])
def test_safecompress_variants_record_every_candidate(cfg_factory, variant):
    cfg = cfg_factory(
        "experiment=smoke", "stage=compress", f"compress.variant={variant}", "compress.n_candidates=3",
        "compress.safety.attacker_epochs=2", "compress.safety.attacker_refresh_epochs=1",
        "+compress.strategies=[{prune: magnitude, grow: random}, {prune: magnitude, grow: gradient}]",
    )
    result = run_stage(cfg)
    table = pd.read_csv(result.candidates_path)
    assert len(table) == 3 * table["update"].nunique() and table["update"].nunique() >= 2
    assert table["risk"].between(0, 1).all() and table["accuracy"].between(0, 1).all()
    assert (table.groupby("update")["chosen"].sum() == 1).all()
    assert set(table["strategy"]) == {"magnitude/random", "magnitude/gradient"}
    assert table.loc[table["chosen"], "reason"].str.len().gt(0).all()
    # the run says whether the safety test told its candidates apart, from the same table
    n_updates = table["update"].nunique()
    assert result.metrics["safety_updates"] == n_updates
    assert 0 <= result.metrics["safety_resolved_fraction"] <= 1
    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    (run,) = client.search_runs([client.get_experiment_by_name(str(cfg.tracking.experiment)).experiment_id])
    assert run.data.metrics["safety_median_risk_se"] == pytest.approx(result.metrics["safety_median_risk_se"])


def _train_with_adversary(lam: float, x, y, ref_x, ref_y, seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = MLP((x.shape[1],), int(y.max()) + 1, (128,))
    recipe = TrainConfig(epochs=60, batch_size=32, optimizer="adam", lr=2e-3, weight_decay=0.0, lr_schedule="constant")
    state = TrainState(model, make_optimizer(model.parameters(), recipe), None)
    losses = Losses(adversary=Adversary("bmia", int(y.max()) + 1, 128, ref_x, ref_y, lam=lam, seed=seed),
                     adversary_active=lam > 0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(recipe.epochs):
        for idx in torch.randperm(len(y), generator=g).split(recipe.batch_size):
            set_lr(state.optimizer, recipe, 0, 1)
            masked_step(state, x[idx], y[idx], losses)
    return model


def test_adversarial_regularization_lowers_the_black_box_attack(tmp_path):
    """Nasr et al.'s min-max: CE + λ·log h(member) with λ > 0 makes members harder to detect."""
    ds = load_synthetic(n_samples=1200, n_features=20, n_informative=10, n_classes=5, label_noise=0.1)
    x, y = ds.x, ds.y
    members, ref = slice(0, 300), slice(300, 600)
    aucs = {}
    for lam in (0.0, 2.0):
        model = _train_with_adversary(lam, x[members], y[members], x[ref], y[ref])
        # a fresh attacker, trained after the fact on half the members vs reference non-members
        m_fit = compute_signals(model, x[:150], y[:150])
        n_fit = compute_signals(model, x[300:450], y[300:450])
        attack = NNBlackBoxAttack(epochs=30, width_scale=0.25, seed=1).fit(
            AttackInputs(target=m_fit, known_members=m_fit, known_nonmembers=n_fit)
        )
        m_eval = compute_signals(model, x[150:300], y[150:300])
        n_eval = compute_signals(model, x[600:750], y[600:750])
        scores = np.r_[attack.score_signals(m_eval), attack.score_signals(n_eval)]
        loss_scores = np.r_[-m_eval.loss, -n_eval.loss]
        labels = np.r_[np.ones(150), np.zeros(150)]
        aucs[lam] = (roc_auc(scores, labels), roc_auc(loss_scores, labels))
    (bb0, loss0), (bb1, loss1) = aucs[0.0], aucs[2.0]
    assert bb0 > 0.6, aucs  # the unregularised model leaks
    assert bb1 < bb0 - 0.03 and loss1 < loss0, aucs


def test_adversary_trains_on_every_member_and_the_audit_on_none_it_saw(cfg_factory):
    """Issue 18: a defence protects every member, so Nasr's adversary plays on all of `train`
    (audit and search members included); the audit's own attackers never saw those."""
    from pipeline import compress_jobs as from_config
    from pipeline.context import RunContext, load_data
    from training.compress.loop import _losses, initial_state
    from training.compress.method import get_method

    cfg = cfg_factory("experiment=smoke", "compress=dst_adv")
    data = load_data(cfg)
    job = from_config.job(RunContext.build(cfg), data, dense_path=None)  # dst_adv starts from random weights
    method = get_method("dst_adv")
    losses = _losses(method, job, initial_state(method, job, method.start(job.c)[0]))
    xm, ym = losses.members
    x, y = data.part("train")
    assert torch.equal(xm, x) and torch.equal(ym, y)
    s = data.splits
    assert set(s.audit_members) | set(s.search_members) <= set(s.train)
    assert not (set(s.audit_members) | set(s.search_members)) & set(s.known_members)


def test_tuned_dpsgd_keeps_the_most_accurate_setting_on_validation(cfg_factory):
    """`compress.dp.tune_*`: one run per (lr, max_grad_norm), the best on val kept and recorded;
    the winner is the model a single run at its settings gives."""
    tuned = cfg_factory("experiment=smoke", "stage=compress", "compress=dpsgd", "compress.dp.epsilon=50",
                        "compress.dp.tune_lr=[0.01,0.5]", "compress.dp.tune_max_grad_norm=[1.0]")
    result = run_stage(tuned)
    table = pd.read_csv(result.candidates_path)
    assert list(table["lr"]) == [0.01, 0.5] and table["chosen"].sum() == 1
    best = table.loc[table["accuracy"].idxmax()]
    assert bool(best["chosen"]) and result.metrics["dp_lr"] == best["lr"]
    assert result.metrics["dp_max_grad_norm"] == 1.0 and result.metrics["dp_tuned_settings"] == 2.0
    assert result.metrics["accuracy"] == pytest.approx(best["accuracy"])
    single = run_stage(cfg_factory("experiment=smoke", "stage=compress", "compress=dpsgd", "compress.dp.epsilon=50",
                                   f"compress.dp.lr={best['lr']}", "compress.dp.max_grad_norm=1.0"))
    assert single.metrics["test_accuracy"] == result.metrics["test_accuracy"]
    with pytest.raises(ValueError, match=r"compress.dp.tune_lr values must be > 0"):
        run_stage(cfg_factory("experiment=smoke", "stage=compress", "compress=dpsgd", "compress.dp.tune_lr=[0.1,0]"))
