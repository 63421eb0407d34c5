"""Fixtures of the integration tests: a PostgreSQL server and an `mlflow server` backed by it,
one of each per test session, stopped by their PIDs (see integration_servers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from integration_servers import (
    MlflowServer,
    Postgres,
    group_alive,
    start_mlflow_server,
    start_postgres,
    stop_group,
    stop_postgres,
)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)
    assert server.proc.poll() is not None, "postgres was left running"


@pytest.fixture(scope="session")
def mlflow_on_postgres(postgres: Postgres, tmp_path_factory) -> Iterator[MlflowServer]:
    """An MLflow tracking server whose backend store is a database on the PostgreSQL server."""
    postgres.create_database("mlflow")
    server = start_mlflow_server(
        postgres.url("mlflow", driver="psycopg"), tmp_path_factory.mktemp("mlflow-server")
    )
    try:
        yield server
    finally:
        stop_group(server.proc)
    assert not group_alive(server.proc.pid), "mlflow server processes were left running"
