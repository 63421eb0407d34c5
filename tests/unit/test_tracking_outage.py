"""A tracking server that cannot be reached: every MLflow call ends within `tracking.call_timeout_s`,
tracking pauses instead of raising, and resumes once the server answers."""

from __future__ import annotations

import socket
import time

import mlflow
import pytest

from pipeline.tracking import plumbing as tracking


@pytest.fixture
def fresh_tracking(monkeypatch):
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(tracking.LINK, "outage", None)
    yield
    mlflow.set_tracking_uri(None)


def test_bounds_are_derived_from_the_call_timeout(fresh_tracking):
    import os

    tracking.bound_http_calls(60)
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    timeout = int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
    backoff = int(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]) * 2 + float(
        os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"]
    ) * retries
    assert (retries + 1) * timeout + backoff <= 60
    with pytest.raises(ValueError, match="call_timeout_s must be > 0"):
        tracking.bound_http_calls(0)


def test_a_server_that_never_answers_costs_one_bounded_call(fresh_tracking, caplog):
    """A socket that accepts connections (the kernel's backlog) but never replies: MLflow's
    own defaults would wait 120 s per attempt, 8 attempts."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        port = server.getsockname()[1]
        tracking.bound_http_calls(6)
        mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
        t0 = time.monotonic()
        assert tracking.call(mlflow.MlflowClient().search_experiments) is None
        first = time.monotonic() - t0
        assert tracking.offline()
        t0 = time.monotonic()
        for _ in range(20):  # paused: no more waiting
            assert tracking.call(mlflow.MlflowClient().search_experiments) is None
        assert time.monotonic() - t0 < 1.0
    assert first < 6 + 3, f"one call took {first:.1f} s with tracking.call_timeout_s=6"
    assert "tracking paused" in caplog.text


def test_a_refused_connection_pauses_and_a_live_store_resumes(fresh_tracking, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    tracking.bound_http_calls(6)
    mlflow.set_tracking_uri(f"http://127.0.0.1:{port}")
    assert tracking.call(mlflow.MlflowClient().search_experiments) is None
    assert tracking.offline() and not tracking.reconnect()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # "the server is back"
    assert tracking.reconnect() and not tracking.offline()


def test_other_errors_are_not_outages(fresh_tracking, tmp_path):
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(MlflowException):
        tracking.call(mlflow.MlflowClient().get_run, "no-such-run")
    assert not tracking.offline()
