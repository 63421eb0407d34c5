"""Worker processes on one study: the ask/run/tell loop, heartbeats and trial retries.

Every process (the command's own, the extra ones of `search.n_workers`, other machines)
runs `work` against the shared storage. A process asks for a new trial only while fewer
than `n_trials` are complete or running, so the workers stop at exactly `n_trials`. A
trial whose worker died is failed and its params queued again: by its missing heartbeat
(RDB storages), by the user's Ctrl-C at once (`give_back`), or, without heartbeats, when
the next command starts (`recover_running_without_heartbeat`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from pipeline import interrupt, tracking
from pipeline.config import SearchConfig
from pipeline.study import mlflow_runs
from pipeline.study.storage import SharedStudy

log = logging.getLogger(__name__)

# runs one asked trial (suggest its params, train, audit, tell); True when it completed
RunTrial = Callable[[object], bool]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def counts(study) -> tuple[int, int]:
    """(complete, running) trials of the study."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete


class Heartbeat:
    """Records a trial's heartbeat every `interval` seconds in a background thread."""

    def __init__(self, storage, trial_id: int, interval: int):
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


def work(shared: SharedStudy, s: SearchConfig, run_trial: RunTrial) -> None:
    """Ask, run and tell trials until `n_trials` are complete (several processes may share this).

    With heartbeats a process that has nothing left to ask waits for the others, so that
    a trial whose worker died is retried here.
    """
    from optuna.storages import fail_stale_trials

    study = shared.study
    n_failed = 0
    while True:
        interrupt.check()
        if shared.has_heartbeat:
            fail_stale_trials(study)
        complete, running = counts(study)
        if complete >= s.n_trials:
            return
        if complete + running >= s.n_trials:
            if not shared.has_heartbeat:
                return  # nothing left to ask; the other workers finish theirs
            time.sleep(min(2.0, s.heartbeat_interval))
            continue
        trial = study.ask()
        beat = (
            Heartbeat(shared.storage, shared.trial_id(trial.number), s.heartbeat_interval)
            if shared.has_heartbeat
            else None
        )
        try:
            if is_surplus(shared, trial, s.n_trials):
                continue
            ok = run_trial(trial)
        except KeyboardInterrupt:
            give_back(shared, trial)
            raise
        finally:
            if beat is not None:
                beat.stop()
        n_failed = 0 if ok else n_failed + 1
        if n_failed >= max(3, s.n_trials):
            raise RuntimeError(
                f"{n_failed} trials failed in a row; see the failed MLflow runs for the errors"
            )


def is_surplus(shared: SharedStudy, trial, n_trials: int) -> bool:
    """Two workers that asked at the same moment may overshoot `n_trials`; the later trial yields.

    Trial numbers are given out in creation order, so the later of two racing
    asks always sees the earlier one here. A surplus trial is failed unrun (its
    params, if queued, are queued again) and marked with the user attr `surplus`.
    """
    from optuna.trial import TrialState

    study = shared.study
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    earlier = sum(t.number < trial.number for t in trials)
    if earlier < n_trials:
        return False
    frozen = shared.frozen(trial.number)
    fixed = frozen.system_attrs.get("fixed_params") or frozen.params  # queued, or a stale trial's retry
    retry_of = frozen.user_attrs.get("retry_of", frozen.system_attrs.get("failed_trial"))
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    if fixed:
        study.enqueue_trial(fixed, user_attrs={} if retry_of is None else {"retry_of": retry_of})
    log.info("trial %d not run: %d trials are already complete or running", trial.number, earlier)
    return True


def give_back(shared: SharedStudy, trial) -> None:
    """Interrupted by the user: fail the trial now and queue its params again, so the next run
    retries it at once instead of waiting for its heartbeat to go stale."""
    from optuna.trial import TrialState

    study = shared.study
    frozen = shared.frozen(trial.number)
    if frozen.state != TrialState.RUNNING:
        return  # told already (complete or failed): nothing to give back
    study.tell(trial, state=TrialState.FAIL)
    params = frozen.params or frozen.system_attrs.get("fixed_params")
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": trial.number})
    log.warning("trial %d interrupted: failed, its params queued to be retried", trial.number)
    mlflow_runs.close_run(frozen.user_attrs.get("mlflow_run_id"), "KILLED")


def recover_running_without_heartbeat(shared: SharedStudy) -> None:
    """Storages without heartbeats (journal): RUNNING trials at start are failed and re-enqueued.

    Correct for one command at a time (its spawned workers start after this); a second
    command on a journal storage already in use would fail the first one's trials.
    """
    from optuna.trial import TrialState

    if shared.has_heartbeat:
        return
    study = shared.study
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        log.warning(
            "trial %d was left running by an interrupted run: failing and retrying it", t.number
        )
        study.tell(t.number, state=TrialState.FAIL)
        params = t.params or t.system_attrs.get("fixed_params")
        if params:
            study.enqueue_trial(params, user_attrs={"retry_of": t.number})
        mlflow_runs.close_run(t.user_attrs.get("mlflow_run_id"), "KILLED")


# a worker's body: (cfg, parent run id, worker index) -> None, run inside `worker_main`
WorkerBody = Callable[[DictConfig, "str | None", int], None]


def spawn(cfg: DictConfig, n: int, parent_id: str | None, body: WorkerBody) -> list:
    """Start `n` more processes (spawned, so no state is shared) that run `body` on the study.

    `body` must be a module-level function: it is pickled by name.
    """
    if n <= 0:
        return []
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    text = tracking.config_yaml(cfg)
    level = logging.getLogger().getEffectiveLevel()
    procs = [
        ctx.Process(target=worker_main, args=(text, parent_id, i + 1, level, body), daemon=False)
        for i in range(n)
    ]
    for p in procs:
        p.start()
    log.info("started %d extra search worker process(es)", n)
    return procs


def interrupt_all(workers: list) -> None:
    """SIGINT the worker processes still alive (a `kill -INT` of the command reaches only it)."""
    import signal

    for w in workers:
        if w.is_alive() and w.pid is not None:
            try:
                os.kill(w.pid, signal.SIGINT)
            except ProcessLookupError:
                pass


def join(workers: list) -> None:
    for w in workers:
        w.join()


def raise_if_failed(workers: list) -> None:
    """After `join`: raise when one of the workers exited with an error."""
    bad = [w.exitcode for w in workers if w.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} search worker process(es) failed (exit codes {bad})")


def worker_main(
    cfg_yaml: str, parent_id: str | None, index: int, level: int, body: WorkerBody
) -> None:
    """Entry point of a spawned worker: logging, threads and Ctrl-C handling around `body`."""
    logging.basicConfig(level=level, format=f"[worker {index}] %(levelname)s %(name)s: %(message)s")
    cfg = OmegaConf.create(cfg_yaml)
    if cfg.runtime.get("n_threads"):
        import torch

        torch.set_num_threads(int(cfg.runtime.n_threads))
    try:
        with interrupt.guarded():
            body(cfg, parent_id, index)
    except KeyboardInterrupt:
        log.warning("worker %d interrupted", index)
        sys.exit(130)
