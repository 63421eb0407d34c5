"""The MLflow side of a study: one parent run per study, one nested run per trial.

Optuna's storage is the record of the study; MLflow mirrors it. Tracking problems are
logged and never stop the study: while the tracking server cannot be reached, tracking
pauses (`pipeline.tracking.plumbing.call`) and trials go on; `reconcile_runs` later gives every
COMPLETE trial its FINISHED nested run from what the study stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pipeline.config import SearchConfig
from pipeline.study.lock import storage_lock
from pipeline.study.storage import SharedStudy
from pipeline.tracking import plumbing as tracking
from pipeline.tracking.masking import mask_secrets

log = logging.getLogger(__name__)

PARENT_TAG = "safecompress.study"
PARENT_ATTR = "mlflow_parent_run_id"  # the study user attr holding the parent run id
RUN_ATTR = "mlflow_run_id"  # a trial's user attr: its nested run, set when the run starts
# the study user attr {trial number: run id} of runs the backfill made after their trial completed
# (a finished trial's user attrs cannot change any more)
BACKFILLED_ATTR = "mlflow_backfilled_runs"


def close_run(run_id: str | None, status: str) -> None:
    """Mark a run terminal (FINISHED, FAILED, KILLED) by its id, from any process."""
    if not run_id:
        return
    import mlflow

    try:
        tracking.call(mlflow.MlflowClient().set_terminated, run_id, status=status)
    except Exception as err:  # noqa: BLE001 - tracking problems must not stop the study
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, err)


def close_lost_run(trial) -> None:
    """A trial whose worker was lost (failed by heartbeat, interrupted, left RUNNING): its run KILLED."""
    close_run(trial.user_attrs.get(RUN_ATTR), "KILLED")


def trial_run_id(shared: SharedStudy, trial) -> str | None:
    """Trial `trial`'s own MLflow run: the one it started, else the one the backfill made for it."""
    own = trial.user_attrs.get(RUN_ATTR)
    if own:
        return own
    return backfilled_runs(shared).get(trial.number)


def backfilled_runs(shared: SharedStudy) -> dict[int, str]:
    """The runs the backfill made, by trial number (a finished trial's attrs cannot take them)."""
    links = shared.storage.get_study_user_attrs(shared.study_id).get(BACKFILLED_ATTR) or {}
    return {int(number): run_id for number, run_id in links.items()}


def fail_parent(run_id: str | None, err: BaseException) -> None:
    """The study failed (trials failing in a row, a worker process failing): its parent run ends
    FAILED with the `error` tag, from outside the run."""
    if not run_id:
        return
    import mlflow

    try:
        tracking.call(mlflow.MlflowClient().set_tag, run_id, "error", f"{type(err).__name__}: {err}"[:4000])
    except Exception as tag_err:  # noqa: BLE001 - tracking problems must not hide the study's error
        log.warning("could not tag MLflow run %s with the error: %s", run_id, tag_err)
    close_run(run_id, "FAILED")


def parent_run(study_name: str, exp_id: str) -> str | None:
    """The earliest parent run tagged with the study in experiment `exp_id` (studies tracked
    before the parent's id was kept in the study), None when there is none."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{study_name}'",
        output_format="list",
    )
    parents = [r for r in runs if r.data.tags.get("mlflow.parentRunId") is None]
    parents.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))
    return parents[0].info.run_id if parents else None


def new_parent(s: SearchConfig, exp_id: str) -> str:
    import mlflow

    with mlflow.start_run(experiment_id=exp_id, run_name=f"study-{s.study_name}") as run:
        tracking.set_tags({PARENT_TAG: s.study_name, "git_commit": tracking.git_commit()})
        tracking.log_params(
            {
                "n_trials": s.n_trials,
                "objectives": ",".join(s.objectives),
                "storage": mask_secrets(s.storage),
                "space": ",".join(p.key for p in s.space),
            }
        )
        return run.info.run_id


def ensure_parent(s: SearchConfig, exp_id: str | None, shared: SharedStudy) -> str | None:
    """The study's one parent run id; None when tracking is off.

    Kept in the study's user attr `mlflow_parent_run_id`. A process that finds none
    takes the study's storage lock (`lock.storage_lock`), looks again, and only then
    creates the run and records its id: of any number of processes started at the same
    instant, on any number of machines, exactly one creates the parent and the others
    adopt it. A recorded id that this tracking server does not know (the study moved to
    another server, or the run was deleted) is replaced the same way.
    """
    if exp_id is None:
        return None
    return tracking.call(_ensure_parent, s, exp_id, shared)


def _ensure_parent(s: SearchConfig, exp_id: str, shared: SharedStudy) -> str:
    run_id = _recorded_parent(shared, exp_id)
    if run_id is not None:
        return run_id
    with storage_lock(shared.storage, f"{s.study_name}#mlflow-parent", holder=_holder()):
        run_id = _recorded_parent(shared, exp_id)
        if run_id is None:
            run_id = parent_run(s.study_name, exp_id) or new_parent(s, exp_id)
            shared.storage.set_study_user_attr(shared.study_id, PARENT_ATTR, run_id)
            log.info("study %s: MLflow parent run %s", s.study_name, run_id)
    return run_id


def _holder() -> str:
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _recorded_parent(shared: SharedStudy, exp_id: str) -> str | None:
    """The parent run id recorded in the study, if this tracking server has it (not deleted)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    # read from the storage itself: a loaded study's user attrs may be cached
    run_id = shared.storage.get_study_user_attrs(shared.study_id).get(PARENT_ATTR)
    if not run_id:
        return None
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    if run.info.lifecycle_stage != "active" or run.info.experiment_id != exp_id:
        return None
    return run_id


@contextmanager
def maybe_run(run_id: str | None) -> Iterator[object]:
    """Resume run `run_id` as the active run for the block (ended FINISHED, or FAILED/KILLED
    on an error/Ctrl-C); a no-op block for None or while tracking is paused."""
    import mlflow

    run = None if run_id is None else tracking.call(mlflow.start_run, run_id=run_id)
    status = "FINISHED"
    try:
        yield run
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as err:
        status = "FAILED"
        if run is not None and isinstance(err, Exception):
            tracking.tag_error(err)  # a FAILED parent run always says why
        raise
    finally:
        end_run(run, status)


def start_trial_run(
    exp_id: str, parent_id: str | None, study_name: str, number: int, trial_id: int, worker: str
):
    """Start (and make active) the nested run of trial `number`; None while tracking is paused.

    Tags are given at creation, so a run whose process dies at once still names its trial.
    """
    import mlflow

    return tracking.call(
        mlflow.start_run,
        experiment_id=exp_id,
        run_name=f"trial-{number}",
        parent_run_id=parent_id,
        tags={
            "study_name": study_name,
            "trial_number": str(number),
            "optuna_trial_id": str(trial_id),
            "worker": worker,
        },
    )


def end_run(run, status: str) -> None:
    """End the active run `run` (started by `start_trial_run`) with `status`; None is a no-op.

    MLflow takes the run off this process's stack of active runs before telling the server,
    so a server that cannot be reached leaves no run active here.
    """
    if run is None:
        return
    import mlflow

    try:
        mlflow.end_run(status=status)
    except Exception as err:  # noqa: BLE001 - tracking problems must not stop the study
        if tracking.is_outage(err):
            tracking.call(_raise, err)  # pauses tracking, with its one warning
        else:
            log.warning("could not end MLflow run %s: %s", run.info.run_id, err)


def _raise(err: BaseException) -> None:
    raise err


# a search's way to log one finished trial into the active run, from what the study stored
LogTrial = Callable[[object], None]


def reconcile_runs(
    shared: SharedStudy, s: SearchConfig, exp_id: str, parent_id: str, log_trial: LogTrial
) -> dict[int, str]:
    """Make the nested MLflow runs agree with the study: Optuna's storage is the record.

    - A COMPLETE trial without a FINISHED run holding its objectives (its process lost the
      tracking server, or was killed between telling Optuna and ending the run) gets one:
      its own run if MLflow has it, else a new nested run, filled by `log_trial` from the
      trial's stored params and values, tagged `tracking_backfilled`.
    - A run left RUNNING by a trial that failed (or was a repeat) is marked KILLED.
    - Runs of trials still running are left alone: another worker owns them.
    Done under the study's storage lock, so two machines ending at once log a trial once.
    Returns {trial number: run id} of the complete trials (those MLflow has now).
    """
    try:
        with storage_lock(shared.storage, f"{s.study_name}#mlflow-reconcile", holder=_holder()):
            return _reconcile(shared, s, exp_id, parent_id, log_trial)
    except Exception as err:  # noqa: BLE001 - tracking problems must not stop the study
        if not tracking.is_outage(err):
            raise
        tracking.call(_raise, err)
        return {}


def _reconcile(shared, s: SearchConfig, exp_id: str, parent_id: str, log_trial: LogTrial) -> dict[int, str]:
    import mlflow
    from optuna.trial import TrialState

    runs = tracking.call(
        mlflow.search_runs,
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
        search_all_experiments=True,
        output_format="list",
    )
    if runs is None:
        return {}
    by_number: dict[int, list] = {}
    for r in runs:
        number = r.data.tags.get("trial_number", "")
        if number.isdigit():
            by_number.setdefault(int(number), []).append(r)
    done: dict[int, str] = {}
    n_logged = 0
    for t in shared.study.get_trials(deepcopy=False):
        mine = by_number.get(t.number, [])
        if t.state == TrialState.COMPLETE:
            ok = [
                r for r in mine
                if r.info.status == "FINISHED" and all(o in r.data.metrics for o in s.objectives)
            ]
            if ok:
                done[t.number] = ok[0].info.run_id
                continue
            run_id = mine[0].info.run_id if mine else None
            if run_id is not None:
                run = tracking.call(mlflow.start_run, run_id=run_id)
            else:
                run = start_trial_run(
                    exp_id, parent_id, s.study_name, t.number, shared.trial_id(t.number),
                    str(t.user_attrs.get("worker", "")),
                )
            if run is None:
                break  # the server went away again
            try:
                log_trial(t)
                tracking.set_tags({"tracking_backfilled": "true"})
            finally:
                end_run(run, "FINISHED")
            if tracking.offline():
                break
            done[t.number] = run.info.run_id
            if t.user_attrs.get(RUN_ATTR) != run.info.run_id:
                _link_backfilled(shared, t.number, run.info.run_id)
            n_logged += 1
        elif t.state != TrialState.RUNNING:
            for r in mine:
                if r.info.status == "RUNNING":
                    log.info("MLflow run of trial %d was left RUNNING: marking it KILLED", t.number)
                    close_run(r.info.run_id, "KILLED")
    if n_logged:
        log.warning(
            "logged %d complete trial(s) to MLflow that their worker could not log (from the "
            "Optuna study: params, final metrics, tags, config.yaml; not the per-update curves)",
            n_logged,
        )
    return done


def _link_backfilled(shared: SharedStudy, number: int, run_id: str) -> None:
    """Record `run_id` as complete trial `number`'s run (under the reconcile lock: one writer)."""
    links = dict(shared.storage.get_study_user_attrs(shared.study_id).get(BACKFILLED_ATTR) or {})
    links[str(number)] = run_id
    shared.storage.set_study_user_attr(shared.study_id, BACKFILLED_ATTR, links)
