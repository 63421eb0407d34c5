"""Stage 5 — search: Optuna NSGA-II over the sparsity schedule and regrowth ratio.

Optuna is driven directly with ask/tell (the Hydra Optuna sweeper pins optuna<3).
Each trial applies its suggestions to a copy of the config and runs compress +
attack; teacher and shadows are computed once and shared by every trial. The
objectives (default: maximize validation `accuracy`, minimize `attack_auc`) use
the same names in Optuna and MLflow. Tracking: one MLflow parent run per study,
one nested run per trial; the Pareto front is printed, and logged to the parent
as `pareto.csv` and `pareto.png`. The study lives in an Optuna RDB storage
(default `sqlite:///mlruns/optuna.db`) and resumes where it stopped.

This module holds the study session (`StudySession`: what every trial of one process needs,
built once) and the one trial's work (`run_trial`: compress + audit, recording the
`pipeline.results.TRIAL_METRICS`); storage, worker processes, heartbeats, retries, the MLflow
run lifecycle and the Pareto outputs (`front`) live in `pipeline.study`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline.config import SearchConfig, SearchParam, as_dict, as_dictconfig, to_schema
from pipeline.context import RunContext
from pipeline.results import METRIC_NAMES, SUMMARY_METRICS
from pipeline.study import front, identity, mlflow_runs, storage, workers
from pipeline.study.storage import SharedStudy
from pipeline.tracking import plumbing as tracking
from pipeline.tracking.masking import config_yaml, mask_secrets
from training import interrupt, progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    study_name: str
    storage: str
    n_complete: int
    pareto: pd.DataFrame  # one row per Pareto-optimal trial
    parent_run_id: str | None
    pareto_csv: Path | None


@dataclass(frozen=True)
class StudySession:
    """What one process's trials share, built once per process (`run`, `_worker_body`): the
    study, its settings and tracking, and the teacher and shadows every trial audits against."""

    ctx: RunContext  # the command's (a spawned worker's own)
    search: SearchConfig  # `study_name`: the name the study was opened under
    shared: SharedStudy  # the Optuna study and the storage it was opened on
    link: tracking.TrackingLink  # this process's link to MLflow: paused while the server is down
    experiment_id: str | None  # None: tracking off, or the server unreachable when it was set up
    parent_run_id: str | None  # the study's MLflow parent run
    trial_work: Any  # `pipeline.flow.Trial`: one trial's compress + audit
    teacher: Any
    shadows: Any

    @property
    def cfg(self) -> DictConfig:
        return self.ctx.cfg

    @property
    def study(self):
        return self.shared.study

    @property
    def objectives(self) -> tuple[str, ...]:
        return tuple(self.search.objectives)

    def reattached(self) -> StudySession:
        """After the trials: when the server was down as the command started and answers now,
        the session with the experiment and parent run made now (else this one)."""
        if self.experiment_id is not None or not self.link.offline or not self.link.reconnect():
            return self
        exp_id = tracking.setup(self.ctx.tracking)
        parent_id = mlflow_runs.ensure_parent(self.search, exp_id, self.shared)
        return dataclasses.replace(self, experiment_id=exp_id, parent_run_id=parent_id)


def suggest(trial, space: list[SearchParam]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for p in space:
        if p.type == "float":
            low, high = p.bounds()
            params[p.key] = trial.suggest_float(p.key, float(low), float(high), log=p.log)
        elif p.type == "int":
            low, high = p.bounds()
            params[p.key] = trial.suggest_int(p.key, int(low), int(high), log=p.log)
        else:
            params[p.key] = trial.suggest_categorical(p.key, p.choice_list())
    return params


def apply_params(cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    trial_cfg = as_dictconfig(OmegaConf.create(config_yaml(cfg, masked=False)))  # resolved, paths relocatable
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
    s, shared = _open_study(ctx, worker=0)
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
    session = StudySession(ctx, s, shared, tracking.LINK, exp_id, parent_id, trial_work, teacher, shadows)
    try:
        with progress.collapsed_warnings("this study's trials"):  # a per-trial warning once, counted
            _work(session)
    except KeyboardInterrupt:
        # a terminal's Ctrl-C reaches them anyway; a `kill -INT` of this process does not
        workers.interrupt_all(procs)
        raise
    except Exception as err:  # e.g. trials failing in a row: the study's parent run says why
        mlflow_runs.fail_parent(session.parent_run_id, err)
        raise
    finally:
        workers.join(procs)
        session = session.reattached()  # the server was down when the command started
        run_ids: dict[int, str] = {}
        if session.parent_run_id is not None and session.experiment_id is not None:  # (a parent has an experiment)
            run_ids = mlflow_runs.reconcile_runs(
                shared, s, session.experiment_id, session.parent_run_id,
                functools.partial(_log_stored_trial, session),
            )
    parent_id = session.parent_run_id
    workers.raise_if_failed(procs, parent_id)
    out_dir = Path(ctx.paths.output_dir) / "studies" / s.study_name
    with mlflow_runs.maybe_run(parent_id):
        pareto, csv = front.write_front(
            shared.study, s, out_dir, float(trial_work.dense_size_bytes(ctx, teacher)), run_ids,
            mlflow_runs.backfilled_runs(shared),
        )
    if ctx.tracking.enabled and (parent_id is None or session.link.offline):
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
    s, shared = _open_study(ctx, worker=index)
    exp_id = tracking.setup(ctx.tracking)
    teacher, shadows = trial_work.prepare(ctx, index, s.n_workers)
    session = StudySession(ctx, s, shared, tracking.LINK, exp_id, parent_id, trial_work, teacher, shadows)
    with progress.collapsed_warnings(f"worker {index}'s trials"):
        _work(session)


def _open_study(ctx: RunContext, worker: int) -> tuple[SearchConfig, SharedStudy]:
    """The search settings (checked by the entry point's validate, `run_stage`) and the study they
    name, opened by `worker` (0: the command's own process); the settings carry the name the study
    was opened under (`search.on_mismatch=new` may derive it)."""
    s = to_schema(SearchConfig, ctx.cfg.search)
    shared = storage.open_study(
        s, ctx.seed, worker=worker, identity=study_identity(ctx.cfg, s), on_lost=mlflow_runs.close_lost_run
    )
    return dataclasses.replace(s, study_name=shared.study.study_name), shared


def study_identity(cfg: DictConfig, s: SearchConfig) -> identity.StudyIdentity:
    """What this command's trials depend on: the config but the searched and run-time keys, and the
    data; a user's model class and checkpoint by their content (as in the cache keys), not their path."""
    from pipeline.context import PATH_KEYS, checkpoint_path, data_key, model_spec
    from training import checkpoints

    plain = as_dict(cfg)
    plain["model"] = model_spec(cfg)
    path = checkpoint_path(cfg)
    if path is not None:
        plain.setdefault("teacher", {})["checkpoint"] = f"sha256:{checkpoints.sha256(path)}"
    return identity.identity_of(plain, [p.key for p in s.space], data_key(cfg), PATH_KEYS)


def _work(session: StudySession) -> None:
    """The study's ask/run/tell loop with this stage's search space and objective."""
    space = session.search.space
    workers.work(
        session.shared, session.search, suggest=lambda trial: suggest(trial, space),
        run_trial=functools.partial(run_trial, session),
    )


def _trial_config(cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    trial_cfg = apply_params(cfg, params)
    # trials audit against dense references (fast); a chosen model's final audit uses attack.reference
    OmegaConf.update(trial_cfg, "attack.reference", str(cfg.attack.get("search_reference", "dense")), merge=False)
    return trial_cfg


def run_trial(session: StudySession, trial, params: dict[str, Any]) -> bool:
    """One trial's work: compress + audit with `params` inside the trial's nested MLflow run,
    then tell Optuna (the run ends only after Optuna was told). True when the trial completed.

    Every number the run logs is also stored in the trial (user attrs, `TRIAL_METRICS`), so that
    a trial whose tracking server was unreachable is logged later (`mlflow_runs.reconcile_runs`).
    """
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    trial_cfg = _trial_config(session.cfg, params)
    run = _start_run(session, trial)
    told = False
    try:
        if run is not None:
            trial.set_user_attr(mlflow_runs.RUN_ATTR, run.info.run_id)
            _log_trial_inputs(session, trial_cfg, params)
        elif trial.user_attrs.get(mlflow_runs.RUN_ATTR):  # a retry queued by an older version inherited it
            trial.set_user_attr(mlflow_runs.RUN_ATTR, "")  # its own run comes from the backfill
        try:
            comp, att, values = _measure(session, trial_cfg)
        except Exception as err:  # noqa: BLE001 - a failing trial is recorded and the study goes on
            log.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err, exc_info=True)
            tracking.set_tags({"error": f"{type(err).__name__}: {err}"[:4000]})
            session.study.tell(trial, state=TrialState.FAIL)
            told = True
            mlflow_runs.end_run(run, "FAILED")
            return False
        wall = _record(session, trial, trial_cfg, comp.key, att.key, values, t0)
        told = _tell_complete(session, trial, values, run)
        if not told:
            return False
    except KeyboardInterrupt:
        mlflow_runs.end_run(run, "FINISHED" if told else "KILLED")
        raise
    mlflow_runs.end_run(run, "FINISHED")
    log.info(
        "trial %d done in %.1f s [%d/%d complete]: %s | %s", trial.number, wall,
        workers.counts(session.study)[0], session.search.n_trials,
        " ".join(f"{o}={float(values[o]):.4f}" for o in session.objectives),
        " ".join(f"{_short(k)}={_fmt(v)}" for k, v in params.items()),
    )
    return True


def _start_run(session: StudySession, trial):
    """The trial's nested MLflow run, or None (tracking off, or the server still unreachable)."""
    if session.experiment_id is None or not session.link.usable():
        return None
    return mlflow_runs.start_trial_run(
        session.experiment_id, session.parent_run_id, session.search.study_name, trial.number,
        session.shared.trial_id(trial.number), workers.worker_name(),
    )


def _measure(session: StudySession, trial_cfg: DictConfig) -> tuple[Any, Any, dict[str, Any]]:
    """The trial's compress + audit: (compress result, attack result, their metrics); raises
    when an objective is not finite."""
    # the objectives lead the run's metrics (MLflow lists them in logging order)
    with session.link.summary_first() as summary:
        comp, att = session.trial_work(trial_cfg, session.teacher, session.shadows)
        values = {**comp.metrics, **att.metrics}
        summary.update({k: values[k] for k in (*session.objectives, *SUMMARY_METRICS) if k in values})
    objective = {o: float(values[o]) for o in session.objectives}
    if not all(math.isfinite(v) for v in objective.values()):
        raise FloatingPointError(f"non-finite objective values {objective}")
    return comp, att, values


def _record(
    session: StudySession, trial, trial_cfg: DictConfig, compress_key: str, attack_key: str,
    values: dict[str, Any], t0: float,
) -> float:
    """Store what the trial measured in the Optuna trial (keys, `TRIAL_METRICS`, constraints, wall
    time) and tag its run; returns the wall time."""
    keys = {"compress_key": compress_key, "attack_key": attack_key}
    for k, v in keys.items():
        trial.set_user_attr(k, v)
    for k in METRIC_NAMES:
        if k in values:
            trial.set_user_attr(k, float(values[k]))
    for name, bound in session.search.constraints.items():
        metric, _, kind = name.rpartition("_")
        # feasible when <= 0
        trial.set_constraint(
            name, float(bound - values[metric]) if kind == "min" else float(values[metric] - bound)
        )
    wall = time.perf_counter() - t0
    trial.set_user_attr("wall_s", wall)
    _log_trial_outputs(trial_cfg, None, keys, wall)
    return wall


def _tell_complete(session: StudySession, trial, values: dict[str, Any], run) -> bool:
    """Tell Optuna the trial is complete; False (its run then KILLED) when it cannot be."""
    try:
        interrupt.check()  # a Ctrl-C swallowed during the trial fails it rather than completing it
        session.study.tell(trial, [float(values[o]) for o in session.objectives])
        return True
    except Exception as err:  # noqa: BLE001 - e.g. failed as stale by another worker meanwhile
        log.warning("trial %d could not be told complete (%s); its run is marked KILLED", trial.number, err)
        mlflow_runs.end_run(run, "KILLED")
        return False


def _short(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith("compress.") else key


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _log_trial_inputs(session: StudySession, trial_cfg: DictConfig, params: dict[str, Any]) -> None:
    """What a trial's run records before it trains (into the active run): the drawn params, and
    the reference models its audit used (what `compare.study` names beside each trial)."""
    tracking.log_params({**params, "attack.reference": str(trial_cfg.attack.reference)})
    tracking.set_tags(
        {
            "git_commit": tracking.git_commit(),
            "teacher_key": session.teacher.key,
            "shadow_keys": ",".join(session.shadows.keys),
        }
    )
    tracking.log_text(config_yaml(trial_cfg), "config.yaml")


def _log_trial_outputs(
    trial_cfg: DictConfig, values: dict[str, Any] | None, keys: dict[str, str], wall: float
) -> None:
    """What a trial's run records once it is done (into the active run). `values`: the numbers the
    study stored, for a run written afterwards — every `TRIAL_METRICS` entry, `audit_auc` included
    (a trial's own run logs them itself: the summary first, `summary_first`, then the audit's)."""
    tracking.set_tags({**keys, "stage": "search", **tracking.run_tags(trial_cfg)})
    if values is not None:
        tracking.log_metrics({k: values[k] for k in METRIC_NAMES if k in values})
    tracking.log_metrics({"trial_wall_s": wall})


def _log_stored_trial(session: StudySession, t) -> None:
    """A complete trial's run, written afterwards from what the study stored (its worker lost
    the tracking server): params, final metrics, tags and config.yaml."""
    trial_cfg = _trial_config(session.cfg, t.params)
    _log_trial_inputs(session, trial_cfg, t.params)
    keys = {k: str(t.user_attrs[k]) for k in ("compress_key", "attack_key") if k in t.user_attrs}
    _log_trial_outputs(trial_cfg, t.user_attrs, keys, float(t.user_attrs.get("wall_s", math.nan)))
