"""Issue 24's "done when": a model class and data files created outside the package run through
`stage=search` and `stage=attack` (every attack) from config alone, and a model trained outside
the package is audited on the members it really trained on (`teacher.checkpoint` + user membership)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.__main__ import run_stage
from pipeline.context import load_data

pytestmark = pytest.mark.smoke

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _make_data():
    spec = importlib.util.spec_from_file_location("make_data_t24", EXAMPLES / "make_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make


@pytest.fixture
def user_dir(tmp_path, monkeypatch):
    """The user's folder, outside the package: their model file and their CSV."""
    folder = tmp_path / "user"
    folder.mkdir()
    shutil.copy(EXAMPLES / "my_model.py", folder / "my_model_t24.py")
    _make_data()(str(folder / "data.csv"), n=900, noise=4.0, member=True)
    monkeypatch.syspath_prepend(str(folder))
    return folder


def _tracked(cfg) -> dict[str, float]:
    """The metrics of the latest tracked run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])[0].data.metrics


def _own(folder: Path, *extra: str, hidden: tuple[str, ...] = ()) -> list[str]:
    return ["experiment=smoke", "~model.hidden_sizes", "model=custom", "model._target_=my_model_t24.TabularNet",
            "+model.n_features=20", *hidden, "shadows.n_models=4", "dataset=files", "dataset.format=csv", f"dataset.path={folder / 'data.csv'}",
            "~dataset.n_samples", "dataset.feature_columns=[" + ",".join(f"f{i}" for i in range(20)) + "]", *extra]


def test_own_model_and_csv_through_every_attack_and_the_search(cfg_factory, user_dir):
    cfg = cfg_factory(*_own(user_dir, "stage=attack", "attack=full", "attack.audit.rmia.offline_a=0.3", "compress.variant=wmia"))
    result = run_stage(cfg)
    attacks = ("loss", "confidence", "entropy", "modified_entropy", "nn_blackbox", "nn_whitebox", "shadow",
               "lira_offline", "rmia")
    missing = [a for a in attacks if not np.isfinite(result.metrics.get(f"audit_{a}_auc", np.nan))]
    assert not missing, f"attacks without an AUC on the user's model: {missing}"
    assert abs(_tracked(cfg)["density"] - 0.2) < 0.01  # the sparse engine masked its Linear weights
    search = run_stage(cfg_factory(*_own(user_dir, "stage=search")))
    assert search.n_complete == 2
    exported = run_stage(cfg_factory(*_own(user_dir, "stage=export")))
    import my_model_t24

    theirs = my_model_t24.TabularNet(n_features=20, n_classes=4)  # the user's class takes the file as it is
    theirs.load_state_dict(torch.load(exported.out_dir / "state_dict.pt", weights_only=True))


def test_audit_an_existing_model_on_its_real_members(cfg_factory, user_dir):
    table = pd.read_csv(user_dir / "data.csv")
    members = table[table["member"] == 1]
    import my_model_t24

    torch.manual_seed(0)
    model = my_model_t24.TabularNet(n_features=20, n_classes=4, hidden=256)  # trained outside the package
    x = torch.tensor(members[[f"f{i}" for i in range(20)]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(members["label"].to_numpy())
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(400):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    train_acc = float((model(x).argmax(1) == y).float().mean())
    torch.save(model.state_dict(), user_dir / "weights.pt")
    overrides = _own(user_dir, "stage=attack", "compress=dense", f"teacher.checkpoint={user_dir / 'weights.pt'}",
                     "dataset.member_column=member", hidden=("+model.hidden=256",))
    cfg = cfg_factory(*overrides)
    bundle = load_data(cfg)
    assert set(bundle.splits.train) == set(members.index)  # the audit's members are the model's members
    result = run_stage(cfg)
    assert abs(_tracked(cfg)["teacher_train_accuracy"] - train_acc) < 1e-6  # audited as given, not retrained
    assert result.metrics["audit_auc"] > 0.6  # a model fitted hard on its members leaks: the audit sees it
    from pipeline.stages import teacher

    key = teacher.key(cfg)
    torch.save({k: v + 1 for k, v in model.state_dict().items()}, user_dir / "weights.pt")
    assert teacher.key(cfg) != key  # the checkpoint's content is in the key
    pruned = run_stage(cfg_factory(*overrides, "compress=oneshot", "compress.density=0.3"))
    assert np.isfinite(pruned.metrics["audit_auc"])
    assert abs(_tracked(cfg)["density"] - 0.3) < 0.01  # pruned from the user's weights
    search = run_stage(cfg_factory(*[o for o in overrides if o != "stage=attack"], "stage=search",
                                   "compress.init=teacher"))  # compress the user's model
    assert search.n_complete == 2
