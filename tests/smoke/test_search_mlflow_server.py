"""The search against an `mlflow server` on 127.0.0.1: the test starts the server, finds the study's
parent and nested runs through the MLflow client, and stops the server by its process group.

Marked slow: the server alone needs ~30 s to start on 2 cores (uvicorn + a job runner process).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.__main__ import run_stage

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy after {timeout} s")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (server, uvicorn worker, job runner); SIGKILL what is left."""
    pgid = proc.pid  # start_new_session: the server leads its own group
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 20
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_search_logs_to_an_mlflow_server(cfg_factory, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlbin = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlbin), "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
           "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    log = open(tmp_path / "server.log", "w")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(url, proc)
        cfg = cfg_factory("experiment=smoke", f"tracking.uri={url}")
        result = run_stage(cfg)
        assert result.n_complete == 2

        client = MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("safecompress")
        runs = client.search_runs([exp.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert [p.info.run_id for p in parents] == [result.parent_run_id]
        assert len(children) == 2
        assert all(c.data.tags["mlflow.parentRunId"] == result.parent_run_id for c in children)
        assert all(c.info.status == "FINISHED" and "accuracy" in c.data.metrics for c in children)
        artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
        assert {"pareto.csv", "pareto.png", "trials.csv"} <= artifacts
        assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # nothing went to the local store
    finally:
        stop_group(proc)
        log.close()
    assert not group_alive(proc.pid), "mlflow server processes were left running"
