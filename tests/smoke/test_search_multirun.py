"""Hydra multirun through the real CLI: a 2 x 2 sweep runs 4 jobs, each its own MLflow run;
also with the joblib launcher (parallel processes sharing one SQLite store)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([], id="basic", marks=pytest.mark.smoke),
        pytest.param(
            ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
            id="joblib",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_multirun_sweep_runs_every_job(tmp_path, launcher):
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "-m",
        "stage=compress",
        "experiment=smoke",
        "compress=dst,safecompress",
        "seed=0,1",
        f"paths.root={tmp_path}",
        *launcher,
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("safecompress")
    runs = client.search_runs([exp.experiment_id])
    assert all(r.info.status == "FINISHED" and r.info.run_name == "compress" for r in runs)
    jobs = sorted((r.data.params["compress.method"], r.data.params["seed"]) for r in runs)
    assert jobs == [("dst", "0"), ("dst", "1"), ("safecompress", "0"), ("safecompress", "1")]
