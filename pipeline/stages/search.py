"""Stage 5 — search: Optuna NSGA-II over the sparsity schedule and regrowth ratio.

Optuna is driven directly with ask/tell (the Hydra Optuna sweeper pins optuna<3).
Each trial applies its suggestions to a copy of the config and runs compress +
attack; teacher and shadows are computed once and shared by every trial. The
objectives (default: maximize validation `accuracy`, minimize `attack_auc`) use
the same names in Optuna and MLflow. Tracking: one MLflow parent run per study,
one nested run per trial; the Pareto front is printed, and logged to the parent
as `pareto.csv` and `pareto.png`. The study lives in an Optuna RDB storage
(default `sqlite:///mlruns/optuna.db`) and resumes where it stopped.

This module holds the objective (one trial: compress + audit) and the Pareto outputs;
storage, worker processes, heartbeats, retries and the MLflow run lifecycle live in
`pipeline.study`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline.analysis.pareto import hypervolume, nondominated_ranks, normalised_objectives
from pipeline.config import OBJECTIVE_DIRECTIONS, SearchConfig, SearchParam, to_schema
from pipeline.context import RunContext
from pipeline.study import identity, mlflow_runs, storage, workers
from pipeline.tracking import plumbing as tracking
from pipeline.tracking.masking import config_yaml, mask_secrets
from training import interrupt, progress

log = logging.getLogger(__name__)

TRACKED_METRICS = (
    "accuracy",
    "attack_auc",
    "attack_tpr_at_0.1pct_fpr",
    "model_size_bytes",
    "density",
)


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    storage: str
    n_complete: int
    pareto: pd.DataFrame  # one row per Pareto-optimal trial
    parent_run_id: str | None
    pareto_csv: Path | None


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
    trial_cfg = OmegaConf.create(config_yaml(cfg, masked=False))  # resolved, paths relocatable
    for k, v in params.items():
        OmegaConf.update(trial_cfg, k, v, merge=False)
    return trial_cfg


def run(ctx: RunContext, trial_work) -> SearchResult:
    """Run (or resume) the study until `search.n_trials` trials are complete.

    `trial_work` (`pipeline.flow.Trial`) is the per-trial compress + audit, wired above the
    stages: `prepare(ctx, worker_index, n_workers)` makes the teacher and shadows every trial shares,
    `trial_work(trial_cfg, teacher, shadows)` one trial's (compress, attack) results, and
    `dense_size_bytes(ctx, teacher)` the size the model-size objective is normalised by. A
    trial is a config (the run's, with the trial's parameters); `trial_work` makes its run context.
    """
    cfg = ctx.cfg
    s = to_schema(SearchConfig, cfg.search)  # checked by the entry point's validate (run_stage)
    shared = storage.open_study(
        s, ctx.seed, identity=study_identity(cfg, s), on_lost=mlflow_runs.close_lost_run
    )
    s = dataclasses.replace(s, study_name=shared.study.study_name)  # search.on_mismatch=new may derive it
    workers.recover_running_without_heartbeat(shared)
    exp_id = tracking.setup(ctx.tracking)
    parent_id = mlflow_runs.ensure_parent(s, exp_id, shared)

    # The other workers start now, not after teacher and shadows: each needs both, and the
    # stage cache's build lock makes a worker wait for an entry another one is building.
    body = functools.partial(_worker_body, trial_work=trial_work)
    procs = workers.spawn(cfg, s.n_workers - 1, parent_id, body)
    try:
        with mlflow_runs.maybe_run(parent_id):
            teacher, shadows = trial_work.prepare(ctx, 0, s.n_workers)
    except BaseException:  # no teacher or shadows here: stop the workers too
        workers.interrupt_all(procs)
        workers.join(procs)
        raise
    try:
        with progress.collapsed_warnings("this study's trials"):  # a per-trial warning once, counted
            _work(cfg, s, shared, teacher, shadows, exp_id, parent_id, trial_work)
    except KeyboardInterrupt:
        # a terminal's Ctrl-C reaches them anyway; a `kill -INT` of this process does not
        workers.interrupt_all(procs)
        raise
    except Exception as err:  # e.g. trials failing in a row: the study's parent run says why
        mlflow_runs.fail_parent(parent_id, err)
        raise
    finally:
        workers.join(procs)
        if exp_id is None and tracking.offline() and tracking.reconnect():
            exp_id = tracking.setup(ctx.tracking)  # the server was down when the command started
            parent_id = mlflow_runs.ensure_parent(s, exp_id, shared)
        run_ids: dict[int, str] = {}
        if parent_id is not None:
            run_ids = mlflow_runs.reconcile_runs(
                shared, s, exp_id, parent_id, lambda t: _log_stored_trial(cfg, t, teacher, shadows)
            )
    workers.raise_if_failed(procs, parent_id)
    out_dir = Path(ctx.paths.output_dir) / "studies" / s.study_name
    with mlflow_runs.maybe_run(parent_id):
        pareto, csv = _pareto(
            shared.study, s, out_dir, float(trial_work.dense_size_bytes(ctx, teacher)), run_ids,
            mlflow_runs.backfilled_runs(shared),
        )
    if ctx.tracking.enabled and (parent_id is None or tracking.offline()):
        log.warning(
            "MLflow tracking at %s could not be reached: the study's results are complete in its "
            "Optuna storage, but MLflow is missing some of them. Rerun the same command once the "
            "server is back: it runs no trial again and logs what is missing.",
            mask_secrets(ctx.tracking.uri),
        )
    return SearchResult(
        s.study_name, s.storage, workers.counts(shared.study)[0], pareto, parent_id, csv
    )


def _worker_body(cfg: DictConfig, parent_id: str | None, index: int, trial_work=None) -> None:
    """What a spawned worker process runs (inside `workers.worker_main`): the same loop."""
    ctx = RunContext.build(cfg)  # a spawned worker's entry: its own run context
    s = to_schema(SearchConfig, cfg.search)
    shared = storage.open_study(
        s, ctx.seed, worker=index, identity=study_identity(cfg, s), on_lost=mlflow_runs.close_lost_run
    )
    s = dataclasses.replace(s, study_name=shared.study.study_name)
    exp_id = tracking.setup(ctx.tracking)
    teacher, shadows = trial_work.prepare(ctx, index, s.n_workers)
    with progress.collapsed_warnings(f"worker {index}'s trials"):
        _work(cfg, s, shared, teacher, shadows, exp_id, parent_id, trial_work)


def study_identity(cfg: DictConfig, s: SearchConfig) -> identity.StudyIdentity:
    """What this command's trials depend on: the config but the searched and run-time keys, and the
    data; a user's model class and checkpoint by their content (as in the cache keys), not their path."""
    from pipeline.context import PATH_KEYS, checkpoint_path, data_key, model_spec
    from training import checkpoints

    plain = OmegaConf.to_container(cfg, resolve=True)
    plain["model"] = model_spec(cfg)
    path = checkpoint_path(cfg)
    if path is not None:
        plain.setdefault("teacher", {})["checkpoint"] = f"sha256:{checkpoints.sha256(path)}"
    return identity.identity_of(plain, [p.key for p in s.space], data_key(cfg), PATH_KEYS)


def _work(cfg, s: SearchConfig, shared, teacher, shadows, exp_id, parent_id, trial_work) -> None:
    """The study's ask/run/tell loop with this stage's search space and objective."""
    workers.work(
        shared,
        s,
        suggest=lambda trial: suggest(trial, s.space),
        run_trial=lambda trial, params: _run_trial(
            cfg, s, shared, trial, params, teacher, shadows, exp_id, parent_id, trial_work
        ),
    )


def _short(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith("compress.") else key


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _trial_config(cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    trial_cfg = apply_params(cfg, params)
    # trials audit against dense references (fast); a chosen model's final audit uses attack.reference
    OmegaConf.update(trial_cfg, "attack.reference", str(cfg.attack.get("search_reference", "dense")), merge=False)
    return trial_cfg


def _log_trial_inputs(trial_cfg: DictConfig, params: dict[str, Any], teacher, shadows) -> None:
    """What a trial's run records before it trains (into the active run): the drawn params, and
    the reference models its audit used (what `compare.study` names beside each trial)."""
    tracking.log_params({**params, "attack.reference": str(trial_cfg.attack.reference)})
    tracking.set_tags(
        {
            "git_commit": tracking.git_commit(),
            "teacher_key": teacher.key,
            "shadow_keys": ",".join(shadows.keys),
        }
    )
    tracking.log_text(config_yaml(trial_cfg), "config.yaml")


def _log_trial_outputs(
    trial_cfg: DictConfig, values: dict[str, Any] | None, keys: dict[str, str], wall: float
) -> None:
    """What a trial's run records once it is done (into the active run). `values`: its final
    metrics, when not logged already (a trial's own run logs them first, `summary_first`)."""
    tracking.set_tags({**keys, "stage": "search", **tracking.run_tags(trial_cfg)})
    if values is not None:
        # the objectives are on validation data; test accuracy sits beside the audit's test numbers
        tracking.log_metrics({k: values[k] for k in (*TRACKED_METRICS, "test_accuracy") if k in values})
    tracking.log_metrics({"trial_wall_s": wall})


def _log_stored_trial(cfg: DictConfig, t, teacher, shadows) -> None:
    """A complete trial's run, written afterwards from what the study stored (its worker lost
    the tracking server): params, final metrics, tags and config.yaml."""
    trial_cfg = _trial_config(cfg, t.params)
    _log_trial_inputs(trial_cfg, t.params, teacher, shadows)
    keys = {k: str(t.user_attrs[k]) for k in ("compress_key", "attack_key") if k in t.user_attrs}
    _log_trial_outputs(trial_cfg, t.user_attrs, keys, float(t.user_attrs.get("wall_s", math.nan)))


def _run_trial(cfg, s, shared, trial, params, teacher, shadows, exp_id, parent_id, trial_work) -> bool:
    """Run one trial inside its nested MLflow run; the run ends only after Optuna was told.

    Every number the run logs is also stored in the trial (user attrs), so that a trial
    whose tracking server was unreachable is logged later (`mlflow_runs.reconcile_runs`).
    """
    import time

    from optuna.trial import TrialState

    t0 = time.perf_counter()
    trial_cfg = _trial_config(cfg, params)
    study = shared.study
    run = None
    if exp_id is not None and (not tracking.offline() or tracking.reconnect()):
        run = mlflow_runs.start_trial_run(
            exp_id, parent_id, s.study_name, trial.number, shared.trial_id(trial.number),
            workers.worker_name(),
        )
    told = False
    try:
        if run is not None:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            _log_trial_inputs(trial_cfg, params, teacher, shadows)
        elif trial.user_attrs.get("mlflow_run_id"):  # a retry queued by an older version inherited it
            trial.set_user_attr("mlflow_run_id", "")  # its own run comes from the backfill
        try:
            # the objectives lead the run's metrics (MLflow lists them in logging order)
            with tracking.summary_first() as summary:
                comp, att = trial_work(trial_cfg, teacher, shadows)
                values = {**comp.metrics, **att.metrics}
                # the objectives are on validation data; test accuracy sits beside the audit's test numbers
                for k in (*s.objectives, *TRACKED_METRICS, "test_accuracy"):
                    if k in values:
                        summary[k] = values[k]
            objective = [float(values[o]) for o in s.objectives]
            if not all(math.isfinite(v) for v in objective):
                raise FloatingPointError(
                    f"non-finite objective values {dict(zip(s.objectives, objective, strict=True))}"
                )
        except Exception as err:  # noqa: BLE001 - a failing trial is recorded and the study goes on
            log.warning(
                "trial %d failed: %s: %s", trial.number, type(err).__name__, err, exc_info=True
            )
            tracking.set_tags({"error": f"{type(err).__name__}: {err}"[:4000]})
            study.tell(trial, state=TrialState.FAIL)
            told = True
            mlflow_runs.end_run(run, "FAILED")
            return False
        keys = {"compress_key": comp.key, "attack_key": att.key}
        for k, v in keys.items():
            trial.set_user_attr(k, v)
        for k in (*TRACKED_METRICS, "test_accuracy", "audit_auc"):
            if k in values:
                trial.set_user_attr(k, float(values[k]))
        for name, bound in s.constraints.items():
            metric, _, kind = name.rpartition("_")
            # feasible when <= 0
            trial.set_constraint(
                name,
                float(bound - values[metric]) if kind == "min" else float(values[metric] - bound),
            )
        wall = time.perf_counter() - t0
        trial.set_user_attr("wall_s", wall)
        _log_trial_outputs(trial_cfg, None, keys, wall)
        try:
            interrupt.check()  # a Ctrl-C swallowed during the trial fails it rather than completing it
            study.tell(trial, objective)
            told = True
        except Exception as err:  # noqa: BLE001 - e.g. failed as stale by another worker meanwhile
            log.warning(
                "trial %d could not be told complete (%s); its run is marked KILLED",
                trial.number,
                err,
            )
            mlflow_runs.end_run(run, "KILLED")
            return False
    except KeyboardInterrupt:
        mlflow_runs.end_run(run, "FINISHED" if told else "KILLED")
        raise
    mlflow_runs.end_run(run, "FINISHED")
    complete = workers.counts(study)[0]
    log.info(
        "trial %d done in %.1f s [%d/%d complete]: %s | %s",
        trial.number,
        wall,
        complete,
        s.n_trials,
        " ".join(f"{o}={v:.4f}" for o, v in zip(s.objectives, objective, strict=True)),
        " ".join(f"{_short(k)}={_fmt(v)}" for k, v in params.items()),
    )
    return True


def _pareto(
    study, s: SearchConfig, out: Path, dense_bytes: float, run_ids: dict[int, str] | None = None,
    backfilled: dict[int, str] | None = None,
) -> tuple[pd.DataFrame, Path | None]:
    """The Pareto table; a trial's run is the one reconciled now, else its own, else the backfill's."""
    import mlflow
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    rows = []
    for t in done:
        row = {"trial": t.number, **{o: v for o, v in zip(s.objectives, t.values, strict=True)}}
        for k in (
            "accuracy",
            "attack_auc",
            "attack_tpr_at_0.1pct_fpr",
            "model_size_bytes",
            "density",
            "test_accuracy",
            "audit_auc",
        ):
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
    _plot(table, out / "pareto.png")
    for f in ("pareto.csv", "trials.csv", "pareto.png"):
        tracking.log_artifact(out / f)
    n_dup = workers.n_duplicates(study)
    if n_dup:
        log.info("%d proposed trial(s) repeated an earlier trial's params and were not run", n_dup)
    tracking.log_metrics(
        {"n_pareto": float(len(pareto)), "n_trials_complete": float(len(table)), "n_duplicates": float(n_dup)}
    )
    return pareto, csv


def _plot(table: pd.DataFrame, path: Path) -> None:
    """Accuracy vs attack AUC per trial, Pareto-optimal trials ringed in red and joined.

    Points are coloured by model size when sizes differ (at a fixed density they differ by a
    few bytes, and a colour bar over them only shows matplotlib's offset); otherwise the title
    gives the one size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = table["model_size_bytes"].to_numpy(float)
    finite = sizes[np.isfinite(sizes)]
    varied = len(finite) > 1 and finite.max() - finite.min() > 0.01 * finite.max()
    sc = ax.scatter(
        table["attack_auc"],
        table["accuracy"],
        c=sizes if varied else "tab:blue",
        cmap="viridis" if varied else None,
        s=40,
        edgecolors=np.where(table["pareto_rank"] == 0, "red", "none"),
        linewidths=1.5,
    )
    front = table[table["pareto_rank"] == 0].sort_values("attack_auc")
    if len(front) > 1:
        ax.plot(front["attack_auc"], front["accuracy"], "r--", lw=1, label="Pareto front")
    ax.scatter([], [], s=40, facecolors="none", edgecolors="red", linewidths=1.5, label="Pareto-optimal trial")
    if varied:
        fig.colorbar(sc, ax=ax, label="model size (bytes)", format=FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title(f"{len(table)} trials", fontsize=10)
    elif len(finite):
        ax.set_title(f"{len(table)} trials, all of model size ≈ {np.median(finite):,.0f} bytes", fontsize=10)
    ax.set_xlabel("attack AUC (val, lower is safer)")
    ax.set_ylabel("accuracy (val)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
