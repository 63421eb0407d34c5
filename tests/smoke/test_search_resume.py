"""Kill a running study (SIGINT, SIGKILL) and rerun the same command: it finishes with exactly
`n_trials` complete trials, none lost or run twice, and MLflow agrees with Optuna."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

pytestmark = pytest.mark.smoke

REPO = Path(__file__).resolve().parents[2]
STUDY = "smoke-synthetic-seed0"
N_TRIALS = 12


def search_cmd(root: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "experiment=smoke",
        f"paths.root={root}",
        f"search.n_trials={N_TRIALS}",
        "search.heartbeat_interval=1",
        "search.grace_period=3",
        # trials long enough (~1.5 s) that the one seen running is still running when the signal lands
        "compress.epochs=60",
        *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}


def load_trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=storage).get_trials(deepcopy=False)


def poll_trials(storage: str) -> list[optuna.trial.FrozenTrial]:
    """The trials so far; none while the running command is still creating its storage."""
    if not Path(storage[len("sqlite:///") :]).exists():
        return []  # opening it here would race the command creating its tables
    try:
        return load_trials(storage)
    except Exception:  # noqa: BLE001 - no study yet, or its tables are being created
        return []


def wait_for(storage: str, proc: subprocess.Popen, n_complete: int, timeout: float = 150) -> None:
    """Poll the Optuna storage until `n_complete` trials are complete and the next one is running
    with its MLflow run started (so the kill lands inside a trial)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the study exited early with code {proc.returncode}")
        trials = poll_trials(storage)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        busy = any(
            t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials
        )
        if done >= n_complete and busy:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {n_complete} trials complete after {timeout} s")


def retried(t: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial that `t` retries: queued after Ctrl-C, or re-created as stale."""
    return t.user_attrs.get("retry_of", t.system_attrs.get("failed_trial"))


def start_and_kill(
    root: Path, storage: str, n_complete: int, sig: signal.Signals, log_name: str
) -> None:
    """Start the study, wait for `n_complete` complete trials and a running one, send `sig`."""
    with open(root / log_name, "w") as out:
        proc = subprocess.Popen(
            search_cmd(root), cwd=REPO, env=env(), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_for(storage, proc, n_complete)
            proc.send_signal(sig)
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log = (root / log_name).read_text()[-4000:]
            raise AssertionError(f"the study did not stop within 60 s of {sig.name}; its log ends:\n{log}") from None
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode != 0


def test_killed_study_resumes_without_losing_or_repeating_trials(tmp_path):
    """One study, killed twice: Ctrl-C (SIGINT) after 4 trials, SIGKILL after 8, then run to the end.

    (One study rather than one per signal: it also covers resuming twice, in half the time.)
    """
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"

    start_and_kill(tmp_path, storage, 4, signal.SIGINT, "first.log")
    trials = load_trials(storage)
    states = [t.state for t in trials]
    # Ctrl-C: the running trial failed and its params queued again at once.
    assert states.count(TrialState.COMPLETE) >= 4
    assert states.count(TrialState.FAIL) == 1 and states.count(TrialState.WAITING) == 1
    assert states.count(TrialState.RUNNING) == 0
    (interrupted,) = [t for t in trials if t.state == TrialState.FAIL]

    start_and_kill(tmp_path, storage, 8, signal.SIGKILL, "second.log")
    trials = load_trials(storage)
    states = [t.state for t in trials]
    # SIGKILL: the trial is left RUNNING; only its missing heartbeat tells that its process is gone.
    assert states.count(TrialState.RUNNING) == 1 and states.count(TrialState.FAIL) == 1
    assert 8 <= states.count(TrialState.COMPLETE) < N_TRIALS
    (killed,) = [t for t in trials if t.state == TrialState.RUNNING]
    # The Ctrl-C'd trial was retried with its params in the second run.
    assert [
        t.params
        for t in trials
        if retried(t) == interrupted.number and t.state == TrialState.COMPLETE
    ] == [interrupted.params]
    before = {t.number for t in trials if t.state == TrialState.COMPLETE}

    again = subprocess.run(
        search_cmd(tmp_path), cwd=REPO, env=env(), capture_output=True, text=True, timeout=240
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]

    trials = load_trials(storage)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == N_TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # Exactly the two killed trials failed; each is retried by exactly one complete trial, same params.
    assert sorted(t.number for t in failed) == sorted([interrupted.number, killed.number])
    for dead in failed:
        retries = [t for t in complete if retried(t) == dead.number]
        assert len(retries) == 1 and retries[0].params == dead.params
    assert before <= {t.number for t in complete}  # trials completed before a kill are not rerun

    # MLflow agrees with Optuna: one parent; its FINISHED children are the complete trials.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("safecompress")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    finished = {r.info.run_id for r in children if r.info.status == "FINISHED"}
    assert finished == {t.user_attrs["mlflow_run_id"] for t in complete}
    status = {r.info.run_id: r.info.status for r in children}
    for dead in failed:
        assert status[dead.user_attrs["mlflow_run_id"]] in ("KILLED", "FAILED")
    assert "RUNNING" not in status.values()
    assert len(children) == N_TRIALS + 2
    # Every trial that trained has its run; a repeated parameter set (PRUNED, `duplicate_of`) is
    # recorded in the study only: it is never trained, so it has no run.
    trained = [t for t in trials if "duplicate_of" not in t.user_attrs]
    assert all(t.state == TrialState.PRUNED for t in trials if "duplicate_of" in t.user_attrs)
    assert {r.data.tags["trial_number"] for r in children} == {str(t.number) for t in trained}
