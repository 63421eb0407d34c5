"""The MLflow side of a study: one parent run per study, one nested run per trial.

Optuna's storage is the record of the study; MLflow mirrors it. Tracking problems are
logged and never stop the study.
"""

from __future__ import annotations

import logging

from pipeline import tracking
from pipeline.config import SearchConfig

log = logging.getLogger(__name__)

PARENT_TAG = "safecompress.study"


def close_run(run_id: str | None, status: str) -> None:
    """Mark a run terminal (FINISHED, FAILED, KILLED) by its id, from any process."""
    if not run_id:
        return
    import mlflow

    try:
        mlflow.MlflowClient().set_terminated(run_id, status=status)
    except Exception as err:  # noqa: BLE001 - tracking problems must not stop the study
        log.warning("could not mark MLflow run %s %s: %s", run_id, status, err)


def parent_run(study_name: str, exp_id: str) -> str | None:
    """The id of the study's parent run in experiment `exp_id`, None when there is none yet."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_ids=[exp_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{study_name}'",
        output_format="list",
    )
    parents = [r for r in runs if r.data.tags.get("mlflow.parentRunId") is None]
    return parents[0].info.run_id if parents else None


def new_parent(s: SearchConfig, exp_id: str) -> str:
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


def ensure_parent(s: SearchConfig, exp_id: str | None) -> str | None:
    """The study's parent run id (found, or created); None when tracking is off."""
    if exp_id is None:
        return None
    return parent_run(s.study_name, exp_id) or new_parent(s, exp_id)


class _NullRun:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def maybe_run(run_id: str | None):
    """`mlflow.start_run(run_id=...)` as a context, or a no-op context for None."""
    import mlflow

    return _NullRun() if run_id is None else mlflow.start_run(run_id=run_id)


def start_trial_run(
    exp_id: str, parent_id: str | None, study_name: str, number: int, trial_id: int, worker: str
):
    """Start (and make active) the nested run of trial `number`.

    Tags are given at creation, so a run whose process dies at once still names its trial.
    """
    import mlflow

    return mlflow.start_run(
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
    """End the active run `run` (started by `start_trial_run`) with `status`; None is a no-op."""
    if run is None:
        return
    import mlflow

    try:
        mlflow.end_run(status=status)
    except Exception as err:  # noqa: BLE001 - tracking problems must not stop the study
        log.warning("could not end MLflow run %s: %s", run.info.run_id, err)


def reconcile_runs(study, parent_id: str) -> None:
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
        close_run(r.info.run_id, status)
