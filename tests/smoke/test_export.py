"""End to end: a smoke search logs every trial's model as an MLflow Model; `stage=export` ships
the best trial (ONNX checked, state_dict, .sc, card) and registers it; a separate Python process
loads the logged MLflow Model and the ONNX file and both give the compressed model's predictions.
Also a run by id, a trial by number, the rule's bound, each bad input, and an op ONNX lacks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import make_cfg
from mlflow import MlflowClient
from torch import nn

import sparse
from pipeline.__main__ import run_stage
from pipeline.context import RunContext, build_model
from pipeline.export import mlflow_model
from training import formats

pytestmark = pytest.mark.smoke

SMOKE = ["experiment=smoke"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A finished smoke search (2 trials) with tracking, shared by the tests here."""
    root = tmp_path_factory.mktemp("export")
    result = run_stage(make_cfg([*SMOKE, "stage=search"], root))
    assert result.n_complete == 2
    return root, result


def _cfg(root, *overrides):
    return make_cfg([*SMOKE, *overrides], root)


def _client(cfg):
    return MlflowClient(tracking_uri=str(cfg.tracking.uri))


def _sc_model(cfg, sc_path):
    """The compressed model as the tool itself loads it: its class, weights from the .sc export."""
    ctx = RunContext.build(cfg)
    return sparse.load_export(sc_path, build_model(ctx, ctx.data, "load")).eval()


def test_every_trial_logs_its_model_with_metadata(searched):
    root, result = searched
    cfg = _cfg(root, "stage=search")
    client = _client(cfg)
    trials = [r for r in client.search_runs([client.get_experiment_by_name("safecompress").experiment_id])
              if r.data.tags.get("trial_number")]
    assert len(trials) == 2
    for r in trials:
        info = __import__("mlflow").models.get_model_info(f"runs:/{r.info.run_id}/model")
        md = info.metadata
        for k in ("density", "model_size_bytes", "accuracy", "test_accuracy", "audit_auc", "audit_tpr_at_1pct_fpr",
                  "attack_auc"):
            assert md[k] == pytest.approx(r.data.metrics[k]), k
        assert md["compress_key"] == r.data.tags["compress_key"] and info.signature is not None


def test_export_best_trial_registers_and_a_separate_process_loads_both(searched, tmp_path):
    root, result = searched
    cfg = _cfg(root, "stage=export", "export.register=smoke-model")
    out = run_stage(cfg)
    best = int(result.pareto.sort_values("accuracy").iloc[-1]["trial"])
    assert out.source.trial == best and out.out_dir.name == f"{result.study_name}-trial{best}"
    names = {p.name for p in out.files}
    assert {"model.onnx", "state_dict.pt", "model.sc", "MODEL_CARD.md", "config.yaml", "export.json"} <= names
    assert out.onnx_check.n_inputs >= 1000 and out.onnx_check.max_abs_diff <= 1e-4
    card = (out.out_dir / "MODEL_CARD.md").read_text()
    for part in ("## Data", "train 200", "95% Wilson interval", "| loss |", "| lira_offline |", "| dense |",
                 "Excess over the train-less frontier: not known", "Differential privacy: none", "```yaml"):
        assert part in card, part
    # the registry lists the version, with tags and the card
    client = _client(cfg)
    versions = client.search_model_versions("name='smoke-model'")
    assert [int(v.version) for v in versions] == [out.registered_version] == [1]
    v = versions[0]
    assert v.tags["source_run_id"] == out.source.run_id and float(v.tags["density"]) == pytest.approx(0.2005, abs=1e-3)
    assert "audit_auc" in v.tags and v.description.startswith("# Model card")

    # a separate process: the trial's logged MLflow Model and the ONNX file
    x = RunContext.build(cfg).data.part("test")[0].numpy()
    np.save(tmp_path / "x.npy", x)
    script = textwrap.dedent(f"""
        import numpy as np, mlflow, mlflow.pytorch, onnxruntime as ort, torch
        x = np.load({str(tmp_path / 'x.npy')!r})
        mlflow.set_tracking_uri({str(cfg.tracking.uri)!r})
        model = mlflow.pytorch.load_model("runs:/{out.source.run_id}/model")
        registered = mlflow.pytorch.load_model("models:/smoke-model/1")
        with torch.no_grad():
            a, r = model(torch.from_numpy(x)).numpy(), registered(torch.from_numpy(x)).numpy()
        s = ort.InferenceSession({str(out.out_dir / 'model.onnx')!r}, providers=["CPUExecutionProvider"])
        b = s.run(["logits"], {{"input": x}})[0]
        np.savez({str(tmp_path / 'y.npz')!r}, mlflow=a, registered=r, onnx=b)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    y = np.load(tmp_path / "y.npz")
    with torch.no_grad():
        ref = _sc_model(cfg, out.out_dir / "model.sc")(torch.from_numpy(x)).numpy()
    for k in ("mlflow", "registered", "onnx"):
        assert np.abs(y[k] - ref).max() <= 1e-5, k
        assert (y[k].argmax(1) == ref.argmax(1)).all(), k
    # the plain state_dict is the same model, zeros in place
    plain = build_model(RunContext.build(cfg), RunContext.build(cfg).data, "load")
    plain.load_state_dict(torch.load(out.out_dir / "state_dict.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(plain.eval()(torch.from_numpy(x)), torch.from_numpy(ref))


def test_export_by_trial_number_without_onnx(searched):
    root, _ = searched
    out = run_stage(_cfg(root, "stage=export", "export.trial=0", "export.onnx=false"))
    assert out.source.trial == 0 and "model.onnx" not in {p.name for p in out.files}
    assert "export.trial" in (out.out_dir / "MODEL_CARD.md").read_text()
    assert json.loads((out.out_dir / "export.json").read_text())["bytes"]["model.sc"] == out.bytes_per_format["model.sc"]


def test_attack_and_compress_runs_log_models_and_export_by_run_id(searched):
    root, _ = searched
    audit = run_stage(_cfg(root, "stage=attack", "compress=dst"))
    cfg = _cfg(root, "stage=export")
    client = _client(cfg)
    exp = client.get_experiment_by_name("safecompress").experiment_id
    run = client.search_runs([exp], "tags.stage = 'attack'")[0]
    md = __import__("mlflow").models.get_model_info(f"runs:/{run.info.run_id}/model").metadata
    assert md["audit_auc"] == pytest.approx(audit.metrics["audit_auc"]) and md["method"] == "dst"
    out = run_stage(_cfg(root, "stage=export", f"export.run_id={run.info.run_id}"))
    assert out.source.run_id == run.info.run_id and out.out_dir.name == f"run-{run.info.run_id[:8]}"
    assert "| loss |" in (out.out_dir / "MODEL_CARD.md").read_text()
    # stage=compress: a model without an audit; tracking.log_models=false: none
    run_stage(_cfg(root, "stage=compress", "compress=dst", "seed=1"))
    run_stage(_cfg(root, "stage=compress", "compress=dst", "seed=2", "tracking.log_models=false"))
    on, off = (client.search_runs([exp], f"tags.stage = 'compress' and tags.seed = '{s}'")[0] for s in (1, 2))
    md = __import__("mlflow").models.get_model_info(f"runs:/{on.info.run_id}/model").metadata
    assert "density" in md and "audit_auc" not in md
    assert mlflow_model.logged_model_id(str(cfg.tracking.uri), off.info.run_id) is None


def test_the_card_states_the_excess_over_a_tracked_frontier(searched):
    root, _ = searched
    dst = run_stage(_cfg(root, "stage=attack", "compress=dst")).metrics  # a frontier run: same data, density, seed
    dst["test_accuracy"] = run_stage(_cfg(root, "stage=compress", "compress=dst")).metrics["test_accuracy"]  # cached
    out = run_stage(_cfg(root, "stage=export", "export.trial=0", "export.onnx=false"))
    text = (out.out_dir / "MODEL_CARD.md").read_text()
    acc, auc = json.loads((out.out_dir / "export.json").read_text())["test_accuracy"], out.source.metrics["audit_auc"]
    if acc <= dst["test_accuracy"]:  # one frontier point: its AUC holds at every lower accuracy
        assert f"**{auc - dst['audit_auc']:+.4f}** (audit AUC {auc:.4f} against the frontier's {dst['audit_auc']:.4f}" in text
    else:
        assert "more accurate than every frontier run" in text


def test_the_card_states_epsilon_for_dp_sgd(searched):
    root, _ = searched
    run_stage(_cfg(root, "stage=attack", "compress=dpsgd", "compress.density=1.0", "compress.dp.epsilon=50", "seed=3"))
    cfg = _cfg(root, "stage=export")
    client = _client(cfg)
    exp = client.get_experiment_by_name("safecompress").experiment_id
    run = client.search_runs([exp], "tags.stage = 'attack' and tags.method = 'dpsgd'")[0]
    out = run_stage(_cfg(root, "stage=export", f"export.run_id={run.info.run_id}", "export.onnx=false"))
    text = (out.out_dir / "MODEL_CARD.md").read_text()
    spent = run.data.metrics["compress_epsilon"]
    assert f"DP-SGD (Opacus, RDP accountant) at target ε = 50, δ = {1 / 200:.3g}, ε spent by the accountant {spent:.3f}" in text


@pytest.mark.parametrize("overrides, message", [
    (["export.trial=99"], r"has no trial 99; its complete trials: \[0, 1\]"),
    (["export.max_attack_auc=0.01"], r"no Pareto trial of study .* has attack_auc <= 0\.01; the front: trial"),
    (["export.study_name=nope"], r"no study 'nope' in .*; studies there: \['smoke-synthetic-seed0'\]"),
    (["export.run_id=0123456789abcdef"], r"no tracked run '0123456789abcdef'"),
    (["export.trial=0", "export.run_id=abc"], r"name two models; give one"),
    (["export.rule=best"], r"unknown export.rule 'best'; valid: \['max_accuracy', 'min_attack_auc'\]"),
    (["export.register=x", "tracking.enabled=false"], r"export.register needs MLflow tracking"),
])
def test_bad_choices_are_refused_before_any_file(searched, overrides, message):
    root, _ = searched
    before = sorted((root / "outputs").rglob("*"))
    with pytest.raises(ValueError, match=message):
        run_stage(_cfg(root, "stage=export", *overrides))
    assert sorted((root / "outputs").rglob("*")) == before


def test_no_complete_trial_and_missing_extra(searched, monkeypatch):
    import optuna

    root, _ = searched
    cfg = _cfg(root, "stage=export", "search.study_name=empty")
    study = optuna.create_study(study_name="empty", storage=str(cfg.search.storage))
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(ValueError, match=r"study 'empty' has no complete trial \(\{'FAIL': 1\}\): run stage=search"):
        run_stage(cfg)
    monkeypatch.setitem(sys.modules, "onnx", None)  # the extra not installed: its import fails
    with pytest.raises(formats.MissingExtraError, match=r"`export` extra, which is not installed \(missing: onnx\)"):
        run_stage(_cfg(root, "stage=export"))
    out = run_stage(_cfg(root, "stage=export", "export.onnx=false"))  # without ONNX it still ships
    assert (out.out_dir / "state_dict.pt").is_file()


class _NoOnnx(nn.Module):
    """A user's op ONNX cannot express (aten::linalg_svd); the same outputs otherwise."""

    def forward(self, x):
        return torch.relu(x) + 0 * torch.linalg.svd(x)[1].sum()


def test_an_op_onnx_lacks_names_the_module_and_the_other_formats_are_written(searched, monkeypatch):
    from pipeline.stages import export

    root, _ = searched
    real = export.load_compressed

    def with_bad_op(*args):
        model = real(*args)
        model.body[2] = _NoOnnx()  # the ReLU after the hidden layer (no parameters: same state_dict)
        return model

    monkeypatch.setattr(export, "load_compressed", with_bad_op)
    with pytest.raises(formats.OnnxExportError, match=r"module 'body\.2' \(_NoOnnx\).*other formats were written") as err:
        run_stage(_cfg(root, "stage=export", "export.trial=1"))
    folder = root / "outputs" / "exports" / "smoke-synthetic-seed0-trial1"
    assert {p.name for p in folder.iterdir()} >= {"state_dict.pt", "model.sc", "MODEL_CARD.md"}
    assert not (folder / "model.onnx").exists() and "'body.2' (_NoOnnx)" in err.value.module
    assert "module 'body.2' (_NoOnnx) fails" in (folder / "MODEL_CARD.md").read_text()


def _draws() -> tuple[float, float, float]:
    return torch.rand(1).item(), float(np.random.rand()), random.random()


def test_logging_a_model_draws_from_no_random_stream(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    sc = tmp_path / "model.sc"
    sparse.save_export(model, sc)
    example = torch.randn(2, 20)
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    expected = _draws()
    exp_id = mlflow.create_experiment("draws")  # an id of this store (another test's may be active)
    with mlflow.start_run(experiment_id=exp_id) as run:
        torch.manual_seed(5), np.random.seed(5), random.seed(5)
        model_id = mlflow_model.log_model(model, sc, example, {"density": 1.0})
        assert _draws() == expected
    assert model_id == mlflow_model.logged_model_id(uri, run.info.run_id)
    loaded = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    x = torch.randn(7, 20)  # another batch size than the example's: the batch dimension stays free
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    info = mlflow.models.get_model_info(f"runs:/{run.info.run_id}/model")
    assert info.metadata["density"] == 1.0 and info.signature is not None
    assert mlflow_model.download_sc(uri, model_id, tmp_path / "dl").read_bytes() == sc.read_bytes()
