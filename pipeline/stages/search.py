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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from pipeline import interrupt, tracking
from pipeline.config import OBJECTIVE_DIRECTIONS, SearchConfig, SearchParam, to_schema
from pipeline.stages import attack as attack_stage
from pipeline.stages import compress as compress_stage
from pipeline.stages import shadows as shadows_stage
from pipeline.stages import teacher as teacher_stage

log = logging.getLogger(__name__)

# Optuna marks heartbeats, set_metric_names and fail_stale_trials experimental, and warns that
# heartbeats are "supposed to be used with Study.optimize": we drive them ourselves (ask/tell).
warnings.filterwarnings("ignore", category=UserWarning, message="Heartbeat of storage")
try:
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
except ImportError:  # pragma: no cover
    pass

PARENT_TAG = "safecompress.study"
TRACKED_METRICS = (
    "accuracy",
    "attack_auc",
    "attack_tpr_at_0.1pct_fpr",
    "model_size_bytes",
    "density",
)
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
                raise ValueError(
                    f"search space key {p.key!r}: a log range must have low > 0, got {p.low}"
                )
        elif p.type == "categorical":
            if not p.choices:
                raise ValueError(
                    f"search space key {p.key!r}: categorical needs a non-empty choices list"
                )
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
    trial_cfg = OmegaConf.create(tracking.config_yaml(cfg))  # resolved, paths relocatable
    for k, v in params.items():
        OmegaConf.update(trial_cfg, k, v, merge=False)
    return trial_cfg


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """An Optuna storage from a URL: RDB (sqlite:///, postgresql://, ...) or `journal:<file>`.

    RDB storages get heartbeats: a RUNNING trial whose process died (SIGKILL, a lost
    machine) is failed after `grace_period` seconds and retried with the same params.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    try:
        if url.startswith("journal:"):
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        lock = None
        if url.startswith("sqlite:///"):
            db = Path(url[len("sqlite:///") :])
            db.parent.mkdir(parents=True, exist_ok=True)
            lock = db.with_name(
                db.name + ".lock"
            )  # parallel jobs creating one new file: one at a time
        kwargs: dict[str, Any] = {}
        if heartbeat_interval:
            kwargs = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "heartbeat_stale_trial_callback": _RetryAndCloseRun(
                    RetryHeartbeatStaleTrialCallback()
                ),
            }
        with tracking.file_lock(lock):
            return optuna.storages.RDBStorage(url, **kwargs)
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear message
        raise ValueError(
            f"cannot open Optuna storage {url!r}: {err} (valid: sqlite:///<file>, an SQLAlchemy URL such as "
            "postgresql://user:pw@host/db with its driver installed, or journal:<file>)"
        ) from err


class _RetryAndCloseRun:
    """Stale-trial callback: re-enqueue the trial's params and mark its MLflow run KILLED."""

    def __init__(self, retry):
        self.retry = retry

    def __call__(self, study, trial) -> None:
        log.warning(
            "trial %d lost its worker (no heartbeat): failed, retrying its params", trial.number
        )
        self.retry(study, trial)
        _close_mlflow_run(trial.user_attrs.get("mlflow_run_id"), "KILLED")


def _close_mlflow_run(run_id: str | None, status: str) -> None:
    if not run_id:
        return
    import mlflow

    try:
        mlflow.MlflowClient().set_terminated(run_id, status=status)
    except Exception as err:  # noqa: BLE001 - tracking problems must not stop the study
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, err)


def nondominated_ranks(
    values: np.ndarray, directions: list[str], feasible: np.ndarray | None = None
) -> np.ndarray:
    """Pareto rank per row (0 = nondominated) by repeated nondominated sorting.

    Infeasible rows (constraints violated) rank after every feasible one.
    """
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    v = values * signs  # minimise everything
    n = len(v)
    ranks = np.full(n, -1)
    feasible = np.ones(n, dtype=bool) if feasible is None else feasible
    r = 0
    for group in (np.flatnonzero(feasible), np.flatnonzero(~feasible)):
        remaining = group
        while len(remaining):
            sub = v[remaining]
            dominated = np.array(
                [
                    bool(np.any(np.all(sub <= sub[i], axis=1) & np.any(sub < sub[i], axis=1)))
                    for i in range(len(sub))
                ]
            )
            ranks[remaining[~dominated]] = r
            remaining = remaining[dominated]
            r += 1
    return ranks


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume dominated by `points` (minimisation) up to `reference`; exact for 1-3 objectives."""
    pts = points[np.all(points < reference, axis=1)]
    if len(pts) == 0:
        return 0.0
    d = pts.shape[1]
    if d == 1:
        return float(reference[0] - pts[:, 0].min())
    if d == 2:
        pts = pts[np.argsort(pts[:, 0])]
        hv, best_y = 0.0, reference[1]
        for x, y in pts:
            if y < best_y:
                hv += (reference[0] - x) * (best_y - y)
                best_y = y
        return float(hv)
    if d == 3:  # slice along the last objective
        order = np.argsort(pts[:, 2])
        pts = pts[order]
        hv = 0.0
        for i in range(len(pts)):
            z_next = pts[i + 1, 2] if i + 1 < len(pts) else reference[2]
            hv += hypervolume(pts[: i + 1, :2], reference[:2]) * (z_next - pts[i, 2])
        return float(hv)
    raise ValueError(f"hypervolume supports 1-3 objectives, got {d}")


def normalised_objectives(
    table: pd.DataFrame, objectives: list[str], dense_bytes: float
) -> np.ndarray:
    """Objectives mapped to minimisation in [0, 1] with reference point (1, ..., 1)."""
    cols = []
    for o in objectives:
        v = table[o].to_numpy(float)
        if o == "accuracy":
            v = 1.0 - v
        elif o == "model_size_bytes":
            v = v / dense_bytes
        cols.append(v)
    return np.stack(cols, axis=1)


def _storage_has_heartbeat(storage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def _create_study(cfg: DictConfig, s: SearchConfig, storage, worker: int = 0):
    import optuna

    from pipeline.seeds import derive_seed

    directions = [OBJECTIVE_DIRECTIONS[o] for o in s.objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=s.study_name, storage=storage, directions=directions, load_if_exists=True
    )
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise ValueError(
            f"study {s.study_name!r} exists with objectives {study.metric_names} "
            f"({[d.name.lower() for d in study.directions]}); use a new search.study_name for {list(s.objectives)}"
        )
    # A reloaded study keeps its trials but not its sampler: pass NSGA-II every time. Its seed
    # depends on the trials so far and the worker, so a resumed run or a second worker does
    # not replay the first run's random generation (same params twice); a fresh study with
    # one worker is reproducible.
    n_existing = len(study.get_trials(deepcopy=False))
    seed = derive_seed(int(cfg.seed), "search", s.study_name, n_existing, worker) % (2**32)
    study.sampler = optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed)
    study.set_metric_names(list(s.objectives))
    return study


def validate_search(cfg: DictConfig, s: SearchConfig) -> None:
    """Space, objectives and constraints are checked before any storage, run or trial exists."""
    validate_space(cfg, s.space)
    for name in s.objectives:
        if name not in OBJECTIVE_DIRECTIONS:
            raise ValueError(f"unknown objective {name!r}; valid: {list(OBJECTIVE_DIRECTIONS)}")
    if len(set(s.objectives)) != len(s.objectives):
        raise ValueError(f"search.objectives lists an objective twice: {list(s.objectives)}")
    for name in s.constraints:
        metric, _, bound = name.rpartition("_")
        if bound not in ("min", "max") or metric not in OBJECTIVE_DIRECTIONS:
            raise ValueError(
                f"unknown search constraint {name!r}; write <metric>_min or <metric>_max with a metric in "
                f"{list(OBJECTIVE_DIRECTIONS)}"
            )
    if s.n_trials < 1 or s.n_workers < 1:
        raise ValueError(
            f"search.n_trials and search.n_workers must be >= 1, got {s.n_trials}, {s.n_workers}"
        )
    keys = {p.key: p for p in s.space}
    if "compress.selection.lam" in keys:
        rule = keys.get("compress.selection.rule")
        rules = set(rule.choices or []) if rule is not None else {str(cfg.compress.selection.rule)}
        if "weighted" not in rules:
            raise ValueError(
                f"search space key 'compress.selection.lam' only acts under compress.selection.rule=weighted, "
                f"but every trial would use {sorted(rules)}; set compress.selection.rule=weighted or search it"
            )


def run(cfg: DictConfig) -> SearchResult:
    """Run (or resume) the study until `search.n_trials` trials are complete."""
    s = to_schema(SearchConfig, cfg.search)
    validate_search(cfg, s)
    storage = open_storage(s.storage, s.heartbeat_interval, s.grace_period)
    study = _create_study(cfg, s, storage)
    if not _storage_has_heartbeat(storage):
        _recover_running_without_heartbeat(study)
    exp_id = tracking.setup(cfg)
    parent_id = (_parent_run(s.study_name, exp_id) or _new_parent(s, exp_id)) if exp_id else None

    with _maybe_run(parent_id):
        teacher = teacher_stage.run(cfg)
        shadows = shadows_stage.run(cfg)
    workers = _spawn_workers(cfg, s.n_workers - 1, parent_id)
    try:
        work(cfg, study, s, parent_id, teacher, shadows, exp_id)
    except KeyboardInterrupt:
        _interrupt(
            workers
        )  # a terminal's Ctrl-C reaches them anyway; a `kill -INT` of this process does not
        raise
    finally:
        for w in workers:
            w.join()
        if parent_id is not None:
            _reconcile_runs(study, parent_id)
    bad = [w.exitcode for w in workers if w.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} search worker process(es) failed (exit codes {bad})")
    out_dir = Path(str(cfg.paths.output_dir)) / "studies" / s.study_name
    with _maybe_run(parent_id):
        pareto, csv = _pareto(study, s, out_dir, float(teacher_dense_bytes(cfg, teacher)))
    return SearchResult(s.study_name, s.storage, _counts(study)[0], pareto, parent_id, csv)


def teacher_dense_bytes(cfg: DictConfig, teacher) -> int:
    import sparse

    return sparse.dense_size_bytes(teacher_stage.load(cfg, teacher))


def _spawn_workers(cfg: DictConfig, n: int, parent_id: str | None) -> list:
    if n <= 0:
        return []
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    text = tracking.config_yaml(cfg)
    level = logging.getLogger().getEffectiveLevel()
    procs = [
        ctx.Process(target=_worker_main, args=(text, parent_id, i + 1, level), daemon=False)
        for i in range(n)
    ]
    for p in procs:
        p.start()
    log.info("started %d extra search worker process(es)", n)
    return procs


def _interrupt(workers: list) -> None:
    import os
    import signal

    for w in workers:
        if w.is_alive() and w.pid is not None:
            try:
                os.kill(w.pid, signal.SIGINT)
            except ProcessLookupError:
                pass


def _worker_main(
    cfg_yaml: str, parent_id: str | None, index: int, level: int = logging.INFO
) -> None:
    """Entry point of a spawned worker: the same loop against the shared storage."""
    import sys

    logging.basicConfig(level=level, format=f"[worker {index}] %(levelname)s %(name)s: %(message)s")
    cfg = OmegaConf.create(cfg_yaml)
    if cfg.runtime.get("n_threads"):
        import torch

        torch.set_num_threads(int(cfg.runtime.n_threads))
    s = to_schema(SearchConfig, cfg.search)
    try:
        with interrupt.guarded():
            storage = open_storage(s.storage, s.heartbeat_interval, s.grace_period)
            study = _create_study(cfg, s, storage, worker=index)
            exp_id = tracking.setup(cfg)
            teacher = teacher_stage.run(cfg)  # cache hits: the main process trained them
            shadows = shadows_stage.run(cfg)
            work(cfg, study, s, parent_id, teacher, shadows, exp_id)
    except KeyboardInterrupt:
        log.warning("worker %d interrupted", index)
        sys.exit(130)


def _counts(study) -> tuple[int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete


def work(cfg, study, s: SearchConfig, parent_id, teacher, shadows, exp_id) -> None:
    """Ask, run and tell trials until `n_trials` are complete (several processes may share this).

    A process asks for a new trial only while fewer than `n_trials` are complete or
    running, so parallel workers stop at exactly `n_trials`; with heartbeats it then
    waits for the others, so that a trial whose worker died is retried here.
    """
    import time

    from optuna.storages import fail_stale_trials

    heartbeat = _storage_has_heartbeat(study._storage)
    n_failed = 0
    while True:
        interrupt.check()
        if heartbeat:
            fail_stale_trials(study)
        complete, running = _counts(study)
        if complete >= s.n_trials:
            return
        if complete + running >= s.n_trials:
            if not heartbeat:
                return  # nothing left to ask; the other workers finish theirs
            time.sleep(min(2.0, s.heartbeat_interval))
            continue
        trial = study.ask()
        beat = (
            _Heartbeat(study._storage, trial._trial_id, s.heartbeat_interval) if heartbeat else None
        )
        try:
            if _is_surplus(study, trial, s.n_trials):
                continue
            params = suggest(trial, s.space)
            ok = _run_trial(cfg, s, study, trial, params, teacher, shadows, exp_id, parent_id)
        except KeyboardInterrupt:
            _give_back(study, trial)
            raise
        finally:
            if beat is not None:
                beat.stop()
        n_failed = 0 if ok else n_failed + 1
        if n_failed >= max(3, s.n_trials):
            raise RuntimeError(
                f"{n_failed} trials failed in a row; see the failed MLflow runs for the errors"
            )


def _is_surplus(study, trial, n_trials: int) -> bool:
    """Two workers that asked at the same moment may overshoot `n_trials`; the later trial yields.

    Trial numbers are given out in creation order, so the later of two racing
    asks always sees the earlier one here. A surplus trial is failed unrun (its
    params, if queued, are queued again) and marked with the user attr `surplus`.
    """
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    earlier = sum(t.number < trial.number for t in trials)
    if earlier < n_trials:
        return False
    frozen = study._storage.get_trial(trial._trial_id)
    fixed = (
        frozen.system_attrs.get("fixed_params") or frozen.params
    )  # queued, or a stale trial's retry
    retry_of = frozen.user_attrs.get("retry_of", frozen.system_attrs.get("failed_trial"))
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    if fixed:
        study.enqueue_trial(fixed, user_attrs={} if retry_of is None else {"retry_of": retry_of})
    log.info("trial %d not run: %d trials are already complete or running", trial.number, earlier)
    return True


def _give_back(study, trial) -> None:
    """Interrupted by the user: fail the trial now and queue its params again, so the next run
    retries it at once instead of waiting for its heartbeat to go stale."""
    from optuna.trial import TrialState

    frozen = study._storage.get_trial(trial._trial_id)
    if frozen.state != TrialState.RUNNING:
        return  # told already (complete or failed): nothing to give back
    study.tell(trial, state=TrialState.FAIL)
    params = frozen.params or study._storage.get_trial_system_attrs(trial._trial_id).get(
        "fixed_params"
    )
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
    log.warning("trial %d interrupted: failed, its params queued to be retried", trial.number)
    _close_mlflow_run(frozen.user_attrs.get("mlflow_run_id"), "KILLED")


class _Heartbeat:
    """Records a trial's heartbeat every `interval` seconds in a background thread."""

    def __init__(self, storage, trial_id: int, interval: int):
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._beat, args=(storage, trial_id, interval), daemon=True
        )
        self._thread.start()

    def _beat(self, storage, trial_id: int, interval: int) -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as err:  # noqa: BLE001 - a missed beat is retried next interval
                log.debug("heartbeat failed: %s", err)
            if self._stop.wait(interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _recover_running_without_heartbeat(study) -> None:
    """Storages without heartbeats (journal): RUNNING trials at start are failed and re-enqueued.

    Correct for one command at a time (its spawned workers start after this); a second
    command on a journal storage already in use would fail the first one's trials.
    """
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning(
            "trial %d was left running by an interrupted run: failing and retrying it", t.number
        )
        study.tell(t.number, state=TrialState.FAIL)
        params = t.params or t.system_attrs.get("fixed_params")
        if params:
            study.enqueue_trial(params, user_attrs={"retry_of": t.number})
        _close_mlflow_run(t.user_attrs.get("mlflow_run_id"), "KILLED")


def _reconcile_runs(study, parent_id: str) -> None:
    """Make the nested MLflow runs agree with the study: Optuna's storage is the record.

    A process killed between starting a trial's run and telling Optuna leaves the run
    RUNNING; once its trial is finished (told, or failed as stale) the run is marked
    FINISHED (trial COMPLETE) or KILLED (trial FAIL). Runs of trials still running are
    left alone: another worker may own them.
    """
    import mlflow
    from optuna.trial import TrialState

    try:
        runs = mlflow.search_runs(
            filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'",
            search_all_experiments=True,
            output_format="list",
        )
    except Exception as err:  # noqa: BLE001 - tracking problems must not stop the study
        log.warning("could not list the study's MLflow runs: %s", err)
        return
    if not runs:
        return
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    for r in runs:
        number = r.data.tags.get("trial_number")
        t = by_number.get(int(number)) if number is not None and number.isdigit() else None
        if t is None or t.state == TrialState.RUNNING:
            continue
        status = "FINISHED" if t.state == TrialState.COMPLETE else "KILLED"
        log.info("MLflow run of trial %d was left RUNNING: marking it %s", t.number, status)
        _close_mlflow_run(r.info.run_id, status)


def _parent_run(study_name: str, exp_id: str) -> str | None:
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{study_name}'",
        output_format="list",
    )
    parents = [r for r in runs if r.data.tags.get("mlflow.parentRunId") is None]
    return parents[0].info.run_id if parents else None


def _new_parent(s: SearchConfig, exp_id: str) -> str:
    import mlflow

    with mlflow.start_run(experiment_id=exp_id, run_name=f"study-{s.study_name}") as run:
        tracking.set_tags({PARENT_TAG: s.study_name, "git_commit": tracking.git_commit()})
        tracking.log_params(
            {
                "n_trials": s.n_trials,
                "objectives": ",".join(s.objectives),
                "storage": s.storage,
                "space": ",".join(p.key for p in s.space),
            }
        )
        return run.info.run_id


class _NullRun:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _maybe_run(run_id):
    import mlflow

    return _NullRun() if run_id is None else mlflow.start_run(run_id=run_id)


def _end_run(run, status: str) -> None:
    if run is None:
        return
    import mlflow

    try:
        mlflow.end_run(status=status)
    except Exception as err:  # noqa: BLE001 - tracking problems must not stop the study
        log.warning("could not end MLflow run %s: %s", run.info.run_id, err)


def _worker_name() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _short(key: str) -> str:
    return key.split(".", 1)[1] if key.startswith("compress.") else key


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _run_trial(cfg, s, study, trial, params, teacher, shadows, exp_id, parent_id) -> bool:
    """Run one trial inside its nested MLflow run; the run ends only after Optuna was told."""
    import time

    import mlflow
    from optuna.trial import TrialState

    t0 = time.perf_counter()
    trial_cfg = apply_params(cfg, params)
    # trials audit against dense references (fast); a chosen model's final audit uses attack.reference
    OmegaConf.update(trial_cfg, "attack.reference", str(cfg.attack.get("search_reference", "dense")), merge=False)
    run = None
    if exp_id is not None:
        # Tags given at creation, so a run whose process dies at once still names its trial.
        run = mlflow.start_run(
            experiment_id=exp_id,
            run_name=f"trial-{trial.number}",
            parent_run_id=parent_id,
            tags={
                "study_name": s.study_name,
                "trial_number": str(trial.number),
                "optuna_trial_id": str(trial._trial_id),
                "worker": _worker_name(),
            },
        )
    told = False
    try:
        if run is not None:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            tracking.log_params(params)
            tracking.set_tags(
                {
                    "git_commit": tracking.git_commit(),
                    "teacher_key": teacher.key,
                    "shadow_keys": ",".join(shadows.keys),
                }
            )
            mlflow.log_text(tracking.config_yaml(trial_cfg), "config.yaml")
        try:
            comp = compress_stage.run(trial_cfg, teacher)
            att = attack_stage.run(trial_cfg, comp, shadows)
            values = {**comp.metrics, **att.metrics}
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
            _end_run(run, "FAILED")
            return False
        tracking.set_tags({"compress_key": comp.key, "attack_key": att.key, "stage": "search", **tracking.run_tags(trial_cfg)})
        # the objectives are on validation data; test accuracy sits beside the audit's test numbers
        tracking.log_metrics({k: values[k] for k in (*TRACKED_METRICS, "test_accuracy") if k in values})
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
        tracking.log_metrics({"trial_wall_s": wall})
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
            _end_run(run, "KILLED")
            return False
    except KeyboardInterrupt:
        _end_run(run, "FINISHED" if told else "KILLED")
        raise
    _end_run(run, "FINISHED")
    complete = _counts(study)[0]
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
    study, s: SearchConfig, out: Path, dense_bytes: float
) -> tuple[pd.DataFrame, Path | None]:
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
        row["mlflow_run_id"] = t.user_attrs.get("mlflow_run_id", "")
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
                client.set_tag(run_id, "pareto_rank", int(rank))
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
    tracking.log_metrics({"n_pareto": float(len(pareto)), "n_trials_complete": float(len(table))})
    return pareto, csv


def _plot(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    sc = ax.scatter(
        table["attack_auc"],
        table["accuracy"],
        c=table["model_size_bytes"],
        cmap="viridis",
        s=40,
        edgecolors=np.where(table["pareto_rank"] == 0, "red", "none"),
        linewidths=1.5,
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
