"""A run's logged config.yaml re-runs elsewhere (new paths.root, fresh cache) to the same numbers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.__main__ import run_stage

pytestmark = pytest.mark.smoke

REPO = Path(__file__).resolve().parents[2]


def _only_run(root: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("safecompress").experiment_id])
    return client, run


def test_logged_config_reruns_to_the_same_metrics(cfg_factory, tmp_path):
    first = tmp_path / "first"
    run_stage(cfg_factory("experiment=smoke", "stage=attack", "compress=dst", root=first))
    client, run = _only_run(first)
    logged = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
    assert "${paths.root}/.cache" in logged.read_text()  # relocatable: paths keep their interpolations
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "logged.yaml").write_text(logged.read_text())  # not config.yaml: conf/ would shadow it

    second = tmp_path / "second"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--config-dir", str(conf_dir), "--config-name", "logged",
         f"paths.root={second}", f"hydra.run.dir={second}/outputs/run"],  # not outputs/ in the checkout
        cwd=REPO, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert any((second / ".cache" / "compress").iterdir())  # trained anew in its own cache, not read from the first
    _, rerun = _only_run(second)
    for key in ("test_accuracy", "audit_auc", "audit_loss_auc", "model_size_bytes"):
        assert rerun.data.metrics[key] == run.data.metrics[key], key
