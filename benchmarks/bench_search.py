"""Benchmark: the search's wall time per trial, cold vs warm stage cache, and 1 vs 2 worker processes.

A 6-trial study on digits (SafeCompress, 4 candidates, epochs lowered so a trial takes a few
seconds), run through the real CLI (`python -m pipeline`) in fresh folders:

- cold: empty stage cache and a new study;
- warm: the same study name again with the Optuna and MLflow stores deleted but the stage
  cache kept: a fresh study with the same seed asks the same params, so every compress and
  attack result is a cache hit (what a rerun or a resumed study gets);
- 1 vs 2 workers: `search.n_workers=1` vs `2` on a cold cache, trials' span measured from
  the first trial's start to the last trial's end (teacher and shadows excluded).

Every process uses one torch thread (`runtime.n_threads=1`), so 2 workers use the 2 cores
that 1 worker leaves half idle. `--default-threads` adds a run of 1 worker with torch's
default threads (on a loaded 2-core machine its spinning intra-op threads can be far slower).

Trial times come from the Optuna storage (`datetime_start`, `datetime_complete`). Prints the
ratios measured in one run and writes them to benchmarks/results/search.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
N_TRIALS = 6
STUDY = "bench-digits-seed0"
BASE = [
    "dataset=digits",
    "experiment_name=bench",
    "train.epochs=12",
    "shadows.n_models=2",
    f"search.n_trials={N_TRIALS}",
    "search.population_size=3",
    "runtime.progress=false",
    "runtime.log_level=WARNING",
    "runtime.n_threads=1",
]


def run_study(root: Path, *extra: str) -> dict[str, float]:
    cmd = [sys.executable, "-m", "pipeline", f"paths.root={root}", *BASE, *extra]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{root}/mlruns/optuna.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == N_TRIALS, f"{len(done)} complete trials"
    per_trial = sorted(t.user_attrs["wall_s"] for t in done)  # measured inside the trial
    span = (
        max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
    ).total_seconds()
    return {
        "wall": wall,
        "per_trial": per_trial[len(per_trial) // 2],  # median: robust to one slow trial
        "span": span,
        "params": [tuple(sorted(t.params.items())) for t in sorted(done, key=lambda t: t.number)],
    }


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench_search_"))
    try:
        root = tmp / "one"
        cold = run_study(root)
        print(
            f"cold:  {cold['per_trial']:.2f} s/trial, trials span {cold['span']:.1f} s, command {cold['wall']:.1f} s"
        )
        for store in ("optuna.db", "mlflow.db", "artifacts"):
            p = root / "mlruns" / store
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        warm = run_study(root)
        same = warm["params"] == cold["params"]
        print(
            f"warm:  {warm['per_trial']:.2f} s/trial, trials span {warm['span']:.1f} s, command {warm['wall']:.1f} s"
            f" (same params as cold: {same})"
        )
        two = run_study(tmp / "two", "search.n_workers=2")
        print(
            f"2 workers: trials span {two['span']:.1f} s ({two['per_trial']:.2f} s/trial), command {two['wall']:.1f} s"
        )
        dflt = (
            run_study(tmp / "dflt", "runtime.n_threads=null")
            if "--default-threads" in sys.argv
            else None
        )
        if dflt:
            print(
                f"1 worker, default threads: {dflt['per_trial']:.2f} s/trial, trials span {dflt['span']:.1f} s, "
                f"command {dflt['wall']:.1f} s"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()
    rows = [
        ("cold cache, 1 worker", cold),
        ("warm cache, 1 worker", warm),
        ("cold cache, 2 workers", two),
    ]
    ratios = {
        "cold / warm, time per trial": cold["per_trial"] / warm["per_trial"],
        "1 / 2 workers, trials span": cold["span"] / two["span"],
        "1 / 2 workers, whole command": cold["wall"] / two["wall"],
    }
    if dflt:
        rows.append(("cold cache, 1 worker, torch default threads", dflt))
        ratios["default threads / 1 thread, time per trial"] = dflt["per_trial"] / cold["per_trial"]
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    lines = [
        f"# Search: {N_TRIALS}-trial study on digits (SafeCompress, 4 candidates, 12 epochs), {os.cpu_count()} cores,"
        " one torch thread per process",
        "",
        f"Command: `python benchmarks/bench_search.py` (overrides: `{' '.join(BASE)}`).",
        f"Load average during the run: {load[0]:.1f} (other processes share the cores; ratios are from one run).",
        "",
        "| run | s per trial (median) | trials span (s) | command (s) |",
        "|---|---|---|---|",
        *[
            f"| {name} | {r['per_trial']:.2f} | {r['span']:.1f} | {r['wall']:.1f} |"
            for name, r in rows
        ],
        "",
        "| ratio | value |",
        "|---|---|",
        *[f"| {k} | {v:.2f}x |" for k, v in ratios.items()],
        "",
        f"Warm run asked the same params as the cold run: {same} (fresh study, same seed).",
        "The command time includes interpreter start, teacher and shadows (cached in the warm run)",
        "and, with 2 workers, the second process's start (spawn, imports, cache reads).",
        "A second worker pays off only with a free core: when the load average exceeds the cores",
        "(other jobs), its trials run slower by about as much as they run in parallel.",
        "",
    ]
    out = REPO / "benchmarks" / "results" / "search.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
