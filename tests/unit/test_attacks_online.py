"""Online LiRA at full strength and RMIA's calibrated a (issue 27)."""

import numpy as np
import pytest
import torch

from attacks.inputs import AttackInputs, MissingInputError
from attacks.lira import LiRAOnline, lira_online_scores, resolve_variance
from attacks.metrics import summarize
from attacks.rmia import RMIA, calibrate_offline_a
from attacks.signals import Signals, compute_signals


def test_online_lira_beats_the_loss_attack_at_low_fpr_on_an_overfit_model():
    """A small MLP overfit on half of a Purchase-like set; 16 references in complementary
    pairs on halves of the same points (each point IN for 8). Online LiRA calibrates every
    point's difficulty, which the loss threshold cannot."""
    from pipeline.config import TrainConfig
    from training.batched import train_grouped
    from training.embedded import load_purchase_synth
    from training.models import MLP

    d = load_purchase_synth(n_samples=1000, n_features=200, n_classes=20)
    n, k = len(d.y), 16
    member = np.zeros(n, bool)
    member[np.random.default_rng(0).permutation(n)[: n // 2]] = True
    rows = []
    for j in range(k // 2):
        r = np.zeros(n, bool)
        r[np.random.default_rng(100 + j).permutation(n)[: n // 2]] = True
        rows += [r, ~r]
    sets = [member, *rows]
    models = []
    for i in range(k + 1):
        torch.manual_seed(i)
        models.append(MLP((200,), 20, (128,)))
    recipe = TrainConfig(epochs=30, batch_size=32, optimizer="adam", lr=1e-3, weight_decay=0.0)
    idx = [torch.from_numpy(np.flatnonzero(s)) for s in sets]
    gens = [torch.Generator().manual_seed(i) for i in range(k + 1)]
    train_grouped(models, [d.x[i] for i in idx], [d.y[i] for i in idx], recipe, gens)
    sig = [compute_signals(m, d.x, d.y) for m in models]
    target, refs = sig[0], np.stack([s.logit_scaled for s in sig[1:]])
    labels = member.astype(int)
    loss = summarize(-target.loss, labels, fprs=(0.01,))
    online = summarize(lira_online_scores(target.logit_scaled, refs, np.stack(rows)), labels, fprs=(0.01,))
    assert loss["auc"] > 0.8  # the model does leak
    assert online["auc"] >= loss["auc"]
    assert online["tpr_at_1pct_fpr"] > 2 * loss["tpr_at_1pct_fpr"]  # measured: 0.76 vs 0.22


def test_auto_variance_is_per_example_from_the_threshold():
    balanced = np.argsort(np.random.default_rng(0).random((64, 10)), axis=0) < 32  # 32 IN, 32 OUT each
    assert resolve_variance("auto", balanced, True, 32) == "per_example"
    assert resolve_variance("auto", balanced[:62], True, 32) == "global"  # some point has < 32 IN or OUT
    assert resolve_variance("global", balanced, True, 32) == "global"
    with pytest.raises(ValueError, match="variance must be one of"):
        resolve_variance("pooled", balanced, True, 32)


def _sig(stat: np.ndarray) -> Signals:
    """Two-class signals whose logit-scaled confidence of label 0 is `stat`."""
    return Signals(np.stack([stat, np.zeros_like(stat)], 1).astype(np.float32), np.zeros(len(stat), int))


def test_augmented_views_enter_online_lira_as_extra_queries():
    """A view that carries the membership signal on points where the plain query does not:
    with the view the attack separates them, without it not."""
    rng = np.random.default_rng(0)
    n, k = 400, 16
    member = rng.random(n) < 0.5
    ref_in = np.argsort(rng.random((k, n)), axis=0) < k // 2
    plain = lambda m: rng.normal(0, 1, m.shape)  # noqa: E731  no signal
    flip = lambda m: 3.0 * m + rng.normal(0, 1, m.shape)  # noqa: E731
    refs = [_sig(plain(ref_in[j])) for j in range(k)]
    refs_flip = [_sig(flip(ref_in[j])) for j in range(k)]
    base = AttackInputs(target=_sig(plain(member)), references=refs, reference_in=ref_in)
    both = AttackInputs(target=base.target, references=refs, reference_in=ref_in,
                        target_views=[_sig(flip(member))], reference_views=[refs_flip])
    attack = LiRAOnline(variance="global")
    auc_plain = summarize(attack.score(base), member.astype(int))["auc"]
    auc_views = summarize(attack.score(both), member.astype(int))["auc"]
    assert auc_plain < 0.6 < 0.85 < auc_views
    assert attack.fitted["n_views"] == 2.0
    with pytest.raises(ValueError, match="come together"):
        AttackInputs(target=base.target, references=refs, reference_in=ref_in, target_views=[base.target])


def _planted_rmia(a_true: float, k: int = 8, m: int = 2000, seed: int = 0):
    """References' true-class probabilities: OUT near each point's difficulty, IN following RMIA's
    own model p_IN = 1 - a (1 - p_OUT), i.e. (p_IN + p_OUT) / 2 = ((1 + a) p_OUT + 1 - a) / 2."""
    rng = np.random.default_rng(seed)
    difficulty = rng.beta(2, 2, m)
    member = np.argsort(rng.random((k, m)), axis=0) < k // 2
    p_out = np.clip(difficulty + rng.normal(0, 0.03, (k, m)), 0.01, 0.99)
    p = np.where(member, 1 - a_true * (1 - p_out), p_out)
    return np.clip(p + rng.normal(0, 0.01, (k, m)), 0.001, 0.999), member


@pytest.mark.parametrize("a_true", [0.6, 0.9])
def test_calibration_recovers_the_planted_a(a_true):
    p, member = _planted_rmia(a_true)
    best, curve = calibrate_offline_a(p, member)
    assert abs(best - a_true) <= 0.1 + 1e-9
    assert curve[best] > max(curve[0.0], curve[1.0])


def test_rmia_auto_calibrates_offline_and_needs_the_membership():
    p, member = _planted_rmia(0.7, k=8, m=400)
    pop = [_sig(np.log(p[j] / (1 - p[j]))) for j in range(8)]
    target = _sig(np.log(p[0, :100] / (1 - p[0, :100])))
    refs = [_sig(np.log(p[j, :100] / (1 - p[j, :100]))) for j in range(1, 8)]
    inputs = AttackInputs(target=target, references=refs, population_target=pop[0],
                          population_references=pop[1:], population_reference_in=member[1:])
    attack = RMIA(offline_a="auto", population="given")
    s = attack.score(inputs)
    assert s.shape == (100,) and 0.0 <= attack.fitted["offline_a"] <= 1.0 and attack.fitted["online"] == 0.0
    without = AttackInputs(target=target, references=refs, population_target=pop[0], population_references=pop[1:])
    with pytest.raises(MissingInputError, match="population_reference_in"):
        RMIA(offline_a="auto").score(without)
    with pytest.raises(ValueError, match="'auto'"):
        RMIA(offline_a="best")
