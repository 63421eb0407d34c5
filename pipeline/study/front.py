"""A study's outputs once its trials are done: every complete trial's numbers (`trials.csv`, the
`TRIAL_METRICS` columns), the feasible Pareto front (`pareto.csv`), the plot (`pareto.png`), the
hypervolume after each trial and each trial run's `pareto_rank` tag."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.analysis.pareto import hypervolume, nondominated_ranks, normalised_objectives
from pipeline.analysis.plots import plot_study_trials
from pipeline.config import OBJECTIVE_DIRECTIONS, SearchConfig
from pipeline.results import METRIC_NAMES
from pipeline.study import mlflow_runs, workers
from pipeline.tracking import plumbing as tracking

log = logging.getLogger(__name__)


def write_front(
    study, s: SearchConfig, out: Path, dense_bytes: float, run_ids: dict[int, str] | None = None,
    backfilled: dict[int, str] | None = None,
) -> tuple[pd.DataFrame, Path | None]:
    """The Pareto table of the study's complete trials (and `pareto.csv`'s path; None without
    trials). Writes `trials.csv`, `pareto.csv` and `pareto.png` into `out`, logs them and the
    hypervolume after each trial to the active run, and tags each trial's run with its rank.
    A trial's run is the one reconciled now, else its own, else the backfill's."""
    import mlflow
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rows = []
    for t in done:
        row = {"trial": t.number, **{o: v for o, v in zip(s.objectives, t.values, strict=True)}}
        for k in METRIC_NAMES:
            row.setdefault(k, t.user_attrs.get(k, math.nan))
        row.update(t.params)
        row["mlflow_run_id"] = (
            (run_ids or {}).get(t.number) or t.user_attrs.get(mlflow_runs.RUN_ATTR) or (backfilled or {}).get(t.number, "")
        )
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table, None
    feasible = np.array([all(v <= 0 for v in t.constraints.values()) for t in done])
    table["feasible"] = feasible
    ranks = nondominated_ranks(
        table[list(s.objectives)].to_numpy(float),
        [OBJECTIVE_DIRECTIONS[o] for o in s.objectives],
        feasible,
    )
    table["pareto_rank"] = ranks
    # Hypervolume of the feasible front after each completed trial (normalised objectives, reference 1).
    norm = normalised_objectives(table, list(s.objectives), dense_bytes)
    order = np.argsort(table["trial"].to_numpy())
    for i in range(len(order)):
        seen = order[: i + 1]
        hv = hypervolume(norm[seen][feasible[seen]], np.ones(len(s.objectives)))
        tracking.log_metrics({"hypervolume": hv}, step=i + 1)
    client = mlflow.MlflowClient() if tracking.active() else None
    if client is not None:
        for run_id, rank in zip(table["mlflow_run_id"], ranks, strict=True):
            if run_id:
                tracking.call(client.set_tag, run_id, "pareto_rank", int(rank))
    pareto = (
        table[(table["pareto_rank"] == 0) & table["feasible"]]
        .sort_values(s.objectives[0])
        .reset_index(drop=True)
    )
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "pareto.csv"
    pareto.to_csv(csv, index=False)
    table.to_csv(out / "trials.csv", index=False)
    plot_study_trials(table, out / "pareto.png")
    for f in ("pareto.csv", "trials.csv", "pareto.png"):
        tracking.log_artifact(out / f)
    n_dup = workers.n_duplicates(study)
    if n_dup:
        log.info("%d proposed trial(s) repeated an earlier trial's params and were not run", n_dup)
    tracking.log_metrics(
        {"n_pareto": float(len(pareto)), "n_trials_complete": float(len(table)), "n_duplicates": float(n_dup)}
    )
    return pareto, csv

