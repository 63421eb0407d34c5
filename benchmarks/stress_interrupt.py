"""Ctrl-C at random moments of a running study: does every interrupt stop it cleanly?

    python benchmarks/stress_interrupt.py --runs 30        # ~4 min on 2 cores

Starts the smoke study in a scratch root, waits until a trial is running, sends SIGINT after
a random delay inside the trial, and checks that the process exits within --timeout seconds.
Each interrupt must leave exactly one more FAIL trial, its params queued again (retried by the
next run), and nothing RUNNING. A hang is reported with the thread dump of the stuck process
(PYTHONFAULTHANDLER + SIGABRT). Found two hangs in 16 interrupts before `training/interrupt.py`
(a KeyboardInterrupt dropped in a GC callback; one raised inside an MLflow SQLite transaction).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
STUDY = "smoke-synthetic-seed0"


def trials(root: Path) -> list:
    db = root / "mlruns" / "optuna.db"
    if not db.exists():
        return []
    try:
        return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{db}").get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - the study's tables are still being created
        return []


def count(ts: list, state: TrialState) -> int:
    return sum(t.state == state for t in ts)


def one(root: Path, it: int, timeout: float, rng: random.Random) -> str:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONFAULTHANDLER": "1"}
    log = open(root / f"run{it}.log", "w")
    cmd = [sys.executable, "-m", "pipeline", "experiment=smoke", f"paths.root={root}", "search.n_trials=100000",
           "search.heartbeat_interval=1", "search.grace_period=3", "compress.epochs=60"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    before = trials(root)
    done0, failed0 = count(before, TrialState.COMPLETE), count(before, TrialState.FAIL)
    while True:  # a trial completed in this run, and the next one is running with its MLflow run
        ts = trials(root)
        if count(ts, TrialState.COMPLETE) > done0 and any(
            t.state == TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in ts
        ):
            break
        if proc.poll() is not None:
            return f"exited early ({proc.returncode}); see {log.name}"
        time.sleep(0.2)
    time.sleep(rng.uniform(0.0, 1.2))
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # the faulthandler writes every thread's stack to the log
        proc.wait()
        return f"HANG (thread dump in {log.name})"
    ts = trials(root)
    states = (count(ts, TrialState.FAIL) - failed0, count(ts, TrialState.WAITING), count(ts, TrialState.RUNNING))
    verdict = "clean" if states == (1, 1, 0) else f"left FAIL+{states[0]} WAITING {states[1]} RUNNING {states[2]}"
    return f"{verdict}, exit {proc.returncode} after {time.monotonic() - t0:.1f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--timeout", type=float, default=40.0, help="seconds allowed between SIGINT and exit")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="stress_interrupt_") as tmp:
        root = Path(tmp)
        results = []
        for it in range(args.runs):
            results.append(one(root, it, args.timeout, rng))
            print(f"{it:3d}: {results[-1]}", flush=True)
        clean = sum(r.startswith("clean") for r in results)
        print(f"summary: {clean}/{args.runs} interrupts clean (one failed trial queued again, no hang)")
        if clean != args.runs:
            bad = [f"run{i}.log" for i, r in enumerate(results) if not r.startswith("clean")]
            keep = REPO / "benchmarks" / "results" / "stress_interrupt_logs"
            keep.mkdir(parents=True, exist_ok=True)
            for name in bad:
                (keep / name).write_text((root / name).read_text())
            print(f"logs of the failures: {keep}")
            raise SystemExit(1)


if __name__ == "__main__":
    main()
