"""Export formats on hand-built models: ONNX checked against PyTorch, the module an ONNX export
fails in, the missing extra, state_dict zeros, check inputs, the card's interval, the choice rules,
and MLflow Model logging leaving every random stream where it was."""

from __future__ import annotations

import sys

import optuna
import pytest
import torch
from torch import nn

import sparse
from pipeline.config import ExportConfig, SearchConfig
from pipeline.export import card, choice
from training import formats
from training.models import MLP


def _pruned_mlp(density: float = 0.1, seed: int = 0) -> tuple[nn.Module, sparse.MaskSet]:
    torch.manual_seed(seed)
    model = MLP([20], 5, hidden_sizes=[16]).eval()
    masks = sparse.random_masks(model, density, "erk", torch.Generator().manual_seed(seed))
    masks.apply(model)
    return model, masks


def test_onnx_matches_torch_on_1000_inputs(tmp_path):
    model, _ = _pruned_mlp()
    x = torch.randn(300, 20)
    n_bytes = formats.write_onnx(model, x[:2], tmp_path / "m.onnx")
    assert n_bytes == (tmp_path / "m.onnx").stat().st_size > 0
    inputs, n_real = formats.check_inputs(x, 1000, torch.Generator().manual_seed(1))
    assert (len(inputs), n_real) == (1000, 300)
    check = formats.check_onnx(tmp_path / "m.onnx", model, inputs, bound=1e-4)
    assert check.n_inputs == 1000 and check.passed
    assert check.max_abs_diff <= 1e-5 and check.argmax_agreement == 1.0


def test_onnx_check_fails_when_the_file_is_another_model(tmp_path):
    model, _ = _pruned_mlp(seed=0)
    other, _ = _pruned_mlp(seed=1)
    formats.write_onnx(other, torch.randn(2, 20), tmp_path / "m.onnx")
    check = formats.check_onnx(tmp_path / "m.onnx", model, torch.randn(50, 20), bound=1e-4)
    assert not check.passed and check.max_abs_diff > 1e-3


class _SvdFeature(nn.Module):
    """An op ONNX has no export for (aten::linalg_svd)."""

    def forward(self, x):
        return x + 0 * torch.linalg.svd(x)[1].sum()


def test_an_op_onnx_cannot_express_is_named_by_its_module(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), _SvdFeature()), nn.Linear(4, 2)).eval()
    with pytest.raises(formats.OnnxExportError) as err:
        formats.write_onnx(model, torch.randn(2, 4), tmp_path / "m.onnx")
    assert err.value.module == "'1.1' (_SvdFeature)"  # the innermost failing module, not its parent
    assert "linalg_svd" in str(err.value) and "'1.1' (_SvdFeature)" in str(err.value)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_missing_extra_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(formats.MissingExtraError, match=r"`export` extra.*missing: onnxruntime.*\.\[export\]"):
        formats.require_onnx()
    model, _ = _pruned_mlp()
    with pytest.raises(formats.MissingExtraError):
        formats.write_onnx(model, torch.randn(2, 20), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_state_dict_keeps_pruned_zeros_in_place(tmp_path):
    model, masks = _pruned_mlp(density=0.1)
    formats.write_state_dict(model, tmp_path / "sd.pt")
    loaded = torch.load(tmp_path / "sd.pt", weights_only=True)
    assert loaded.keys() == model.state_dict().keys()
    for name, m in masks.masks.items():
        assert torch.equal(loaded[name], model.state_dict()[name])
        assert (loaded[name][~m] == 0).all() and loaded[name].shape == m.shape


def test_check_inputs_mix_records_and_keep_integral_data_integral():
    ids = torch.randint(0, 50, (10, 6)).float()
    inputs, n_real = formats.check_inputs(ids, 25, torch.Generator().manual_seed(0))
    assert (inputs.shape, n_real) == ((25, 6), 10)
    assert torch.equal(inputs[:10], ids)
    assert torch.equal(inputs, inputs.round()) and inputs.min() >= 0 and inputs.max() <= 49
    enough, n = formats.check_inputs(ids, 4, torch.Generator())
    assert n == 4 and torch.equal(enough, ids[:4])
    with pytest.raises(ValueError, match="no records"):
        formats.check_inputs(ids[:0], 4, torch.Generator())


def test_wilson_interval_by_hand():
    lo, hi = card.wilson_interval(0.5, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = card.wilson_interval(1.0, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-4)


# ---------------------------------------------------------------- choosing a trial


def _study(points: list[tuple[float, float]], failed: int = 0):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, auc in points:
        t = study.ask()
        t.set_user_attr("accuracy", acc)
        t.set_user_attr("attack_auc", auc)
        study.tell(t, [acc, auc])
    for _ in range(failed):
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    return study


POINTS = [(0.80, 0.70), (0.70, 0.60), (0.60, 0.55), (0.65, 0.65)]  # trial 3 is dominated by trial 1


def test_rules_pick_pareto_points_on_validation_objectives():
    study, s = _study(POINTS), SearchConfig()
    assert choice._by_rule(study, "x", s, ExportConfig())[0].number == 0
    assert choice._by_rule(study, "x", s, ExportConfig(max_attack_auc=0.6))[0].number == 1
    t, how = choice._by_rule(study, "x", s, ExportConfig(rule="min_attack_auc", min_accuracy=0.65))
    assert t.number == 1 and "accuracy >= 0.65" in how and "3 Pareto trial(s)" in how


def test_a_bound_no_pareto_trial_meets_lists_the_front():
    with pytest.raises(ValueError, match=r"attack_auc <= 0\.5; the front: trial 0: accuracy 0\.8000"):
        choice._by_rule(_study(POINTS), "x", SearchConfig(), ExportConfig(max_attack_auc=0.5))


def test_no_complete_trial_and_unknown_trial_are_refused():
    with pytest.raises(ValueError, match=r"has no complete trial \(\{'FAIL': 2\}\)"):
        choice._by_rule(_study([], failed=2), "x", SearchConfig(), ExportConfig())
    study = _study(POINTS[:2], failed=1)
    with pytest.raises(ValueError, match=r"no trial 7; its complete trials: \[0, 1\]"):
        choice._trial(study, "x", 7)
    with pytest.raises(ValueError, match=r"trial 2 of study 'x' is FAIL, not COMPLETE"):
        choice._trial(study, "x", 2)
