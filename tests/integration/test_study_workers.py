"""Several commands on one study, started at the same instant, against real storages.

- PostgreSQL + `mlflow server` on it (three "machines": each its own `paths.root`): three
  `python -m pipeline` processes start together, one is SIGKILLed in the middle of a trial, the
  other two finish the study. Exactly `n_trials` COMPLETE, all parameter sets distinct, one MLflow
  parent run, every nested run terminal, the killed trial failed and retried with its params, and
  the database password in no MLflow param, tag or artifact, nor in the console output.
- SQLite and Optuna's journal file (one machine: one `paths.root`): the same simultaneous start,
  without the kill.

The processes are the real CLI; nothing is mocked. Servers come from the fixtures below.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from servers import (
    REPO,
    MlflowServer,
    Postgres,
    group_alive,
    start_mlflow_server,
    start_postgres,
    stop_group,
    stop_postgres,
    tail,
)

N_WORKERS = 3
N_TRIALS = 6
TIMEOUT_S = 420  # per group of workers; a smoke-sized trial takes seconds

STUDY_OVERRIDES = [
    "experiment=smoke",
    f"search.n_trials={N_TRIALS}",
    "search.population_size=2",
    "search.heartbeat_interval=1",  # a killed worker's trial is stale after grace_period s
    "search.grace_period=5",
    "runtime.log_level=INFO",
    "runtime.n_threads=1",  # three processes on this machine's cores
]
LONGER_TRIALS = "compress.epochs=12"  # a few seconds per trial: time to kill one in the middle


# Fixtures live here, not in a conftest.py: a second `conftest` module on sys.path would
# shadow tests/conftest.py for the tests that `from conftest import make_cfg`.
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


def start_workers(folder: Path, per_worker: list[list[str]]) -> list[tuple[subprocess.Popen, Path]]:
    """Start one `python -m pipeline` per override list, all at once; output to folder/worker-i.log."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    procs = []
    for i, overrides in enumerate(per_worker):
        log = folder / f"worker-{i}.log"
        with open(log, "w") as out:
            cmd = [sys.executable, "-m", "pipeline", *STUDY_OVERRIDES, *overrides]
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        procs.append((proc, log))
    return procs


def logs(procs: list[tuple[subprocess.Popen, Path]]) -> str:
    return "\n".join(f"--- {log.name} (exit {p.returncode}):\n{tail(log)}" for p, log in procs)


def kill_left(procs: list[tuple[subprocess.Popen, Path]]) -> None:
    """SIGKILL (by PID) and reap every process still running."""
    for p, _ in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def wait_all(procs: list[tuple[subprocess.Popen, Path]], timeout: float) -> None:
    """Wait for every process; kill them all (by PID) and fail on a timeout."""
    deadline = time.monotonic() + timeout
    try:
        for p, _ in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_left(procs)
        pytest.fail(f"workers still running after {timeout:.0f} s:\n{logs(procs)}")


def kill_during_trial(
    procs: list[tuple[subprocess.Popen, Path]], study: optuna.Study, client: MlflowClient, exp: str
) -> tuple[int, dict]:
    """SIGKILL the first of our processes seen running a trial (its MLflow run started);
    returns the trial's number and params."""
    by_pid = {p.pid: p for p, _ in procs}
    deadline = time.monotonic() + TIMEOUT_S
    host = socket.gethostname()
    while time.monotonic() < deadline:
        if all(p.poll() is not None for p in by_pid.values()):
            break
        running = {
            t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        }
        for run in client.search_runs([exp], "attributes.status = 'RUNNING'"):
            number, worker = run.data.tags.get("trial_number"), run.data.tags.get("worker", "")
            name, _, pid = worker.rpartition(":")
            trial = running.get(int(number)) if number and number.isdigit() else None
            if trial is None or not trial.params or name != host or not pid.isdigit():
                continue
            proc = by_pid.get(int(pid))
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return trial.number, dict(trial.params)
        time.sleep(0.2)
    pytest.fail(f"no worker was seen running a trial:\n{logs(procs)}")


def check_study(study: optuna.Study, client: MlflowClient, n_trials: int) -> list:
    """What must hold however the workers were started; returns the study's trials."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials, [(t.number, t.state.name) for t in trials]
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    param_sets = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(param_sets)) == n_trials, (
        "two COMPLETE trials trained the same parameter set: "
        f"{[(t.number, t.params) for t in complete]}"
    )

    exp = client.get_experiment_by_name("safecompress")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    study_runs = [
        r
        for r in runs
        if r.data.tags.get("safecompress.study") == study.study_name
        or r.data.tags.get("study_name") == study.study_name
    ]
    parents = [r for r in study_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, f"{len(parents)} MLflow parent runs for study {study.study_name!r}"
    parent_id = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    assert len(children) == len(study_runs) - 1, "a trial's run is not nested under the parent"
    not_terminal = [
        (r.data.tags.get("trial_number"), r.info.status)
        for r in children
        if r.info.status not in ("FINISHED", "KILLED", "FAILED")
    ]
    assert not not_terminal, f"nested runs not ended: {not_terminal}"
    finished = {r.info.run_id for r in children if r.info.status == "FINISHED"}
    assert finished == {t.user_attrs.get("mlflow_run_id") for t in complete}
    return trials


def test_three_workers_on_postgres_with_one_killed(
    postgres: Postgres, mlflow_on_postgres: MlflowServer, tmp_path
):
    postgres.create_database("optuna")
    storage_url = postgres.url("optuna")  # as README writes it: postgresql://user:pw@host/db
    study_name = "integration-postgres"
    per_worker = [
        [
            f"paths.root={tmp_path / f'machine{i}'}",
            f"search.storage={storage_url}",
            f"search.study_name={study_name}",
            f"tracking.uri={mlflow_on_postgres.url}",
            LONGER_TRIALS,
        ]
        for i in range(N_WORKERS)
    ]
    procs = start_workers(tmp_path, per_worker)
    client = MlflowClient(tracking_uri=mlflow_on_postgres.url)
    try:
        # Wait for the experiment and the study to exist (the workers create them).
        deadline = time.monotonic() + TIMEOUT_S
        study = exp = None
        while study is None or exp is None:
            if time.monotonic() > deadline or all(p.poll() is not None for p, _ in procs):
                pytest.fail(f"the workers did not create the study:\n{logs(procs)}")
            time.sleep(0.5)
            exp = exp or client.get_experiment_by_name("safecompress")
            try:
                study = optuna.load_study(study_name=study_name, storage=storage_url)
            except KeyError:
                study = None
        killed_number, killed_params = kill_during_trial(procs, study, client, exp.experiment_id)
        wait_all(procs, TIMEOUT_S)
    finally:
        kill_left(procs)
    codes = sorted(p.returncode for p, _ in procs)
    assert codes == [-signal.SIGKILL, 0, 0], logs(procs)

    trials = check_study(study, client, N_TRIALS)
    by_number = {t.number: t for t in trials}
    killed = by_number[killed_number]
    assert killed.state == TrialState.FAIL, (
        f"the killed trial {killed_number} ended {killed.state.name}: it finished before the kill landed"
    )
    retries = [
        t
        for t in trials
        if t.number > killed_number
        and killed_number in (t.system_attrs.get("failed_trial"), t.user_attrs.get("retry_of"))
    ]
    assert retries, f"trial {killed_number} was not retried"
    assert any(t.state == TrialState.COMPLETE for t in retries)
    assert all(t.params == killed_params for t in retries)
    killed_run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert killed_run.info.status == "KILLED"
    for t in retries:  # a retry is its own trial with its own run, never the killed one's (issue 26)
        assert t.user_attrs.get("mlflow_run_id") != killed_run.info.run_id
        assert t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial")) == killed_number

    # The password: in no param or tag of any run, nor in any artifact file the server stored.
    secret = postgres.password
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=1000
    )
    assert runs
    for r in runs:
        for kind, items in (("param", r.data.params), ("tag", r.data.tags)):
            leaked = [k for k, v in items.items() if secret in k or secret in str(v)]
            assert not leaked, f"password in {kind}s {leaked} of run {r.info.run_name}"
    files = [f for f in mlflow_on_postgres.artifacts.rglob("*") if f.is_file()]
    assert any(f.name == "config.yaml" for f in files), "no config.yaml artifact was stored"
    leaked_files = [str(f) for f in files if secret.encode() in f.read_bytes()]
    assert not leaked_files, f"password in artifacts: {leaked_files}"
    leaked_logs = [log.name for _, log in procs if secret in log.read_text(errors="replace")]
    assert not leaked_logs, f"password in the console output of {leaked_logs}"


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_three_commands_started_at_once_on_one_machine(tmp_path, kind):
    root = tmp_path / "root"
    storage_override = (
        [f"search.storage=journal:{root}/mlruns/optuna.journal"] if kind == "journal" else []
    )
    procs = start_workers(tmp_path, [[f"paths.root={root}", *storage_override]] * N_WORKERS)
    try:
        wait_all(procs, TIMEOUT_S)
    finally:
        kill_left(procs)
    assert [p.returncode for p, _ in procs] == [0] * N_WORKERS, logs(procs)

    if kind == "journal":
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(
            JournalFileBackend(f"{root}/mlruns/optuna.journal")
        )
    else:
        storage = f"sqlite:///{root}/mlruns/optuna.db"
    study = optuna.load_study(study_name="smoke-synthetic-seed0", storage=storage)
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    check_study(study, client, N_TRIALS)
