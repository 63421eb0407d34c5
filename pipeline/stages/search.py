"""Stage 5 — search: Optuna NSGA-II over the sparsity schedule and regrowth ratio.

Optuna is driven directly with ask/tell (the Hydra Optuna sweeper pins optuna<3).
Each trial applies its suggestions to a copy of the config and runs compress +
attack; teacher and shadows are computed once and shared by every trial. The
objectives (default: maximize validation `accuracy`, minimize `attack_auc`) use
the same names in Optuna and MLflow. Tracking: one MLflow parent run per study,
one nested run per trial; the Pareto front is printed, and logged to the parent
as `pareto.csv` and `pareto.png`. The study lives in an Optuna RDB storage
(default `sqlite:///mlruns/optuna.db`) and resumes where it stopped.
"""

from __future__ import annotations

import logging
import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import tracking
from pipeline.config import OBJECTIVE_DIRECTIONS, SearchConfig, SearchParam, to_schema
from pipeline.stages import attack as attack_stage
from pipeline.stages import compress as compress_stage
from pipeline.stages import shadows as shadows_stage
from pipeline.stages import teacher as teacher_stage

log = logging.getLogger(__name__)

PARENT_TAG = "safecompress.study"
TRACKED_METRICS = ("accuracy", "attack_auc", "attack_tpr_at_0.1pct_fpr", "model_size_bytes", "density")
_MISSING = object()


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    storage: str
    n_complete: int
    pareto: pd.DataFrame  # one row per Pareto-optimal trial
    parent_run_id: str | None
    pareto_csv: Path | None


def validate_space(cfg: DictConfig, space: list[SearchParam]) -> None:
    """Every key exists in the config and every range is sensible; raises before any trial runs."""
    for p in space:
        if OmegaConf.select(cfg, p.key, default=_MISSING) is _MISSING:
            raise ValueError(f"search space key {p.key!r} does not exist in the config")
        if p.type in ("float", "int"):
            if p.low is None or p.high is None:
                raise ValueError(f"search space key {p.key!r}: {p.type} needs low and high")
            if p.low > p.high:
                raise ValueError(f"search space key {p.key!r}: low={p.low} > high={p.high}")
            if p.log and p.low <= 0:
                raise ValueError(f"search space key {p.key!r}: a log range must have low > 0, got {p.low}")
        elif p.type == "categorical":
            if not p.choices:
                raise ValueError(f"search space key {p.key!r}: categorical needs a non-empty choices list")
        else:
            raise ValueError(
                f"search space key {p.key!r}: unknown type {p.type!r}; valid: ['float', 'int', 'categorical']"
            )


def suggest(trial, space: list[SearchParam]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for p in space:
        if p.type == "float":
            params[p.key] = trial.suggest_float(p.key, float(p.low), float(p.high), log=p.log)
        elif p.type == "int":
            params[p.key] = trial.suggest_int(p.key, int(p.low), int(p.high), log=p.log)
        else:
            params[p.key] = trial.suggest_categorical(p.key, list(p.choices))
    return params


def apply_params(cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    trial_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for k, v in params.items():
        OmegaConf.update(trial_cfg, k, v, merge=False)
    return trial_cfg


def open_storage(url: str):
    """An Optuna storage from a URL: RDB (sqlite:///, postgresql://...) or `journal:<file>`."""
    import optuna

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear message
        raise ValueError(f"cannot open Optuna storage {url!r}: {err}") from err


def nondominated_ranks(values: np.ndarray, directions: list[str]) -> np.ndarray:
    """Pareto rank per row (0 = nondominated) by repeated nondominated sorting."""
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    v = values * signs  # minimise everything
    n = len(v)
    ranks = np.full(n, -1)
    remaining = np.arange(n)
    r = 0
    while len(remaining):
        sub = v[remaining]
        dominated = np.zeros(len(sub), dtype=bool)
        for i in range(len(sub)):
            dominated[i] = bool(np.any(np.all(sub <= sub[i], axis=1) & np.any(sub < sub[i], axis=1)))
        front = remaining[~dominated]
        ranks[front] = r
        remaining = remaining[dominated]
        r += 1
    return ranks


def run(cfg: DictConfig) -> SearchResult:
    import mlflow
    import optuna
    from optuna.trial import TrialState

    s = to_schema(SearchConfig, cfg.search)
    validate_space(cfg, s.space)
    for name in s.objectives:
        if name not in OBJECTIVE_DIRECTIONS:
            raise ValueError(f"unknown objective {name!r}; valid: {list(OBJECTIVE_DIRECTIONS)}")
    directions = [OBJECTIVE_DIRECTIONS[o] for o in s.objectives]
    storage = open_storage(s.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A reloaded study keeps its trials but not its sampler: pass NSGA-II every time.
    sampler = optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=int(cfg.seed))
    study = optuna.create_study(
        study_name=s.study_name, storage=storage, directions=directions, sampler=sampler, load_if_exists=True
    )
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise ValueError(
            f"study {s.study_name!r} exists with other objectives; use a new search.study_name"
        )
    study.set_metric_names(list(s.objectives))
    exp_id = tracking.setup(cfg)
    _recover_stale(study, TrialState)

    parent_id = _parent_run(s.study_name, exp_id) if exp_id is not None else None
    with _maybe_run(parent_id, exp_id, s.study_name) as parent:
        parent_id = parent.info.run_id if parent else None
        tracking.set_tags({PARENT_TAG: s.study_name, "git_commit": tracking.git_commit()})
        tracking.log_params({"n_trials": s.n_trials, "objectives": ",".join(s.objectives)})
        teacher = teacher_stage.run(cfg)
        shadows = shadows_stage.run(cfg)
        n_failed = 0
        while _n_complete(study, TrialState) < s.n_trials:
            trial = study.ask()
            params = suggest(trial, s.space)
            ok = _run_trial(cfg, s, study, trial, params, teacher, shadows, exp_id)
            if not ok:
                n_failed += 1
                if n_failed >= s.n_trials:
                    raise RuntimeError(
                        f"{n_failed} trials failed in a row; see the failed MLflow runs for the errors"
                    )
            else:
                n_failed = 0
        out_dir = Path(str(cfg.paths.output_dir)) / "studies" / s.study_name
        pareto, csv = _pareto(study, s, TrialState, out_dir)
    return SearchResult(s.study_name, s.storage, _n_complete(study, TrialState), pareto, parent_id, csv)


def _n_complete(study, TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _recover_stale(study, TrialState) -> None:
    """Trials left RUNNING by a crashed process are failed and re-enqueued (single worker)."""
    import mlflow

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning("trial %d was left running by an interrupted run: failing and retrying it", t.number)
        study.tell(t.number, state=TrialState.FAIL)
        if t.params:
            study.enqueue_trial(t.params)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and tracking.active() is False:
            try:
                mlflow.MlflowClient().set_terminated(run_id, status="KILLED")
            except Exception:  # noqa: BLE001 - tracking must not stop the recovery
                pass


def _parent_run(study_name: str, exp_id: str) -> str | None:
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{study_name}'",
        output_format="list",
    )
    parents = [r for r in runs if r.data.tags.get("mlflow.parentRunId") is None]
    return parents[0].info.run_id if parents else None


class _NullRun:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _maybe_run(run_id, exp_id, name):
    import mlflow

    if exp_id is None:
        return _NullRun()
    if run_id is not None:
        return mlflow.start_run(run_id=run_id)
    return mlflow.start_run(experiment_id=exp_id, run_name=f"study-{name}")


def _run_trial(cfg, s, study, trial, params, teacher, shadows, exp_id) -> bool:
    import mlflow
    from optuna.trial import TrialState

    trial_cfg = apply_params(cfg, params)
    run_ctx = (
        mlflow.start_run(experiment_id=exp_id, run_name=f"trial-{trial.number}", nested=True)
        if exp_id is not None
        else _NullRun()
    )
    with run_ctx as run:
        if run is not None:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
        tracking.log_params(params)
        tracking.set_tags(
            {"study_name": s.study_name, "trial_number": trial.number, "git_commit": tracking.git_commit(),
             "teacher_key": teacher.key, "shadow_keys": ",".join(shadows.keys)}
        )
        if run is not None:
            mlflow.log_text(OmegaConf.to_yaml(trial_cfg), "config.yaml")
        try:
            comp = compress_stage.run(trial_cfg, teacher)
            att = attack_stage.run(trial_cfg, comp, shadows)
        except Exception as err:  # noqa: BLE001 - a failing trial is recorded and the study goes on
            log.exception("trial %d failed", trial.number)
            tracking.set_tags({"error": f"{type(err).__name__}: {err}"[:4000]})
            if run is not None:
                mlflow.end_run(status="FAILED")
            study.tell(trial, state=TrialState.FAIL)
            return False
        values = {**comp.metrics, **att.metrics}
        tracking.set_tags({"compress_key": comp.key, "attack_key": att.key})
        tracking.log_metrics({k: values[k] for k in TRACKED_METRICS if k in values})
        objective = [float(values[o]) for o in s.objectives]
        for k in TRACKED_METRICS:
            if k in values:
                trial.set_user_attr(k, float(values[k]))
        trial.set_user_attr("test_accuracy", float(values.get("test_accuracy", math.nan)))
        trial.set_user_attr("audit_auc", float(values.get("audit_auc", math.nan)))
    if not all(math.isfinite(v) for v in objective):
        study.tell(trial, state=TrialState.FAIL)
        return False
    study.tell(trial, objective)
    log.info(
        "trial %d: %s", trial.number, ", ".join(f"{o}={v:.4f}" for o, v in zip(s.objectives, objective))
    )
    return True


def _pareto(study, s: SearchConfig, TrialState, out: Path) -> tuple[pd.DataFrame, Path | None]:
    import mlflow

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rows = []
    for t in done:
        row = {"trial": t.number, **{o: v for o, v in zip(s.objectives, t.values)}}
        for k in ("accuracy", "attack_auc", "attack_tpr_at_0.1pct_fpr", "model_size_bytes", "density",
                  "test_accuracy", "audit_auc"):
            row.setdefault(k, t.user_attrs.get(k, math.nan))
        row.update(t.params)
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id", "")
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table, None
    ranks = nondominated_ranks(table[list(s.objectives)].to_numpy(float), [OBJECTIVE_DIRECTIONS[o] for o in s.objectives])
    table["pareto_rank"] = ranks
    client = mlflow.MlflowClient() if tracking.active() else None
    if client is not None:
        for run_id, rank in zip(table["mlflow_run_id"], ranks):
            if run_id:
                client.set_tag(run_id, "pareto_rank", int(rank))
    pareto = table[table["pareto_rank"] == 0].sort_values(s.objectives[0]).reset_index(drop=True)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "pareto.csv"
    pareto.to_csv(csv, index=False)
    table.to_csv(out / "trials.csv", index=False)
    _plot(table, out / "pareto.png")
    for f in ("pareto.csv", "trials.csv", "pareto.png"):
        tracking.log_artifact(out / f)
    tracking.log_metrics({"n_pareto": float(len(pareto)), "n_trials_complete": float(len(table))})
    return pareto, csv


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    sc = ax.scatter(
        table["attack_auc"], table["accuracy"], c=table["model_size_bytes"], cmap="viridis", s=40,
        edgecolors=np.where(table["pareto_rank"] == 0, "red", "none"), linewidths=1.5,
    )
    front = table[table["pareto_rank"] == 0].sort_values("attack_auc")
    ax.plot(front["attack_auc"], front["accuracy"], "r--", lw=1, label="Pareto front")
    fig.colorbar(sc, ax=ax, label="model size (bytes)")
    ax.set_xlabel("attack AUC (val, lower is safer)")
    ax.set_ylabel("accuracy (val)")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


