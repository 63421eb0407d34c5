"""The search against an `mlflow server` on 127.0.0.1: the test starts the server, finds the study's
parent and nested runs through the MLflow client, and stops the server by its process group.

Marked slow: the server alone needs ~30 s to start on 2 cores (`servers.start_mlflow_server`).
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from servers import group_alive, start_mlflow_server, stop_group

from pipeline.__main__ import run_stage

pytestmark = pytest.mark.slow


def test_search_logs_to_an_mlflow_server(cfg_factory, tmp_path):
    server = start_mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path)
    url = server.url
    try:
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
        stop_group(server.proc)
    assert not group_alive(server.proc.pid), "mlflow server processes were left running"
