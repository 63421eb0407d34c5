"""The MLflow server goes away in the middle of a study and comes back.

A real `mlflow server` on 127.0.0.1 (SQLite backend in a temporary folder) is stopped by its
PID while `python -m pipeline` runs a study against it. The study goes on and finishes with
every trial in its Optuna storage; the command says that MLflow missed some. The server is
started again on the same port and store, and the same command is run again: it runs no
trial again, and MLflow ends complete and consistent with the study (one parent run, one
FINISHED nested run with the objectives per complete trial, none left RUNNING).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from servers import free_port, group_alive, start_mlflow_server, stop_group

from pipeline.results import METRIC_NAMES

pytestmark = pytest.mark.smoke

REPO = Path(__file__).resolve().parents[2]
N_TRIALS = 4
STUDY = "smoke-synthetic-seed0"


def study_cmd(root: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "pipeline", "experiment=smoke", f"paths.root={root}",
            f"tracking.uri=http://127.0.0.1:{port}", "tracking.call_timeout_s=10",
            f"search.n_trials={N_TRIALS}", "compress.epochs=12", "runtime.log_level=INFO"]


def env() -> dict[str, str]:
    e = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), e.get("PYTHONPATH")]))
    return e


def trials(root: Path) -> list[optuna.trial.FrozenTrial]:
    db = root / "mlruns" / "optuna.db"
    if not db.exists():
        return []
    try:
        return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - not created yet
        return []


def test_a_study_outlives_its_tracking_server(tmp_path):
    port = free_port()
    server = start_mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path, port, "server-1.log")
    log1 = tmp_path / "study-1.log"
    try:
        with open(log1, "w") as out:
            study = subprocess.Popen(study_cmd(tmp_path, port), cwd=REPO, env=env(),
                                     stdout=out, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 600
                while sum(t.state == TrialState.COMPLETE for t in trials(tmp_path)) < 1:
                    assert study.poll() is None, log1.read_text()[-3000:]
                    assert time.monotonic() < deadline, "no trial completed in 600 s"
                    time.sleep(0.3)
                stop_group(server.proc)  # in the middle of the study
                study.wait(timeout=900)
            finally:
                if study.poll() is None:
                    study.kill()
    finally:
        stop_group(server.proc)
    text = log1.read_text()
    assert study.returncode == 0, text[-3000:]
    assert "tracking paused" in text and "Rerun the same command once the server is back" in text
    done = [t for t in trials(tmp_path) if t.state == TrialState.COMPLETE]
    assert len(done) == N_TRIALS  # no result lost
    n_before = len(trials(tmp_path))

    server = start_mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path, port, "server-2.log")
    try:
        again = subprocess.run(study_cmd(tmp_path, port), cwd=REPO, env=env(),
                               capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert len(trials(tmp_path)) == n_before  # no trial ran again

        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        exp = client.get_experiment_by_name("safecompress")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1
        assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
        assert "RUNNING" not in {r.info.status for r in children}
        finished = [r for r in children if r.info.status == "FINISHED"]
        assert sorted(int(r.data.tags["trial_number"]) for r in finished) == sorted(t.number for t in done)
        stored = {t.number: t.user_attrs for t in done}
        for r in finished:
            attrs = stored[int(r.data.tags["trial_number"])]
            numbers = {k: float(attrs[k]) for k in METRIC_NAMES if k in attrs and math.isfinite(float(attrs[k]))}
            assert {"accuracy", "attack_auc", "audit_auc", "test_accuracy"} <= set(numbers), attrs
            # live and backfilled runs alike hold every finite number the study stored (audit_auc
            # included; NaN, e.g. a TPR at an FPR the few audit points cannot reach, is not logged)
            assert {k: r.data.metrics.get(k) for k in numbers} == pytest.approx(numbers), r.data
            assert r.data.params, r.data
        assert any(r.data.tags.get("tracking_backfilled") == "true" for r in finished)
        artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
        assert {"pareto.csv", "trials.csv"} <= artifacts
    finally:
        stop_group(server.proc)
    assert not group_alive(server.proc.pid)
