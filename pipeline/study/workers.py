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

from pipeline import threads
from pipeline.config import SearchConfig, as_dictconfig
from pipeline.study import mlflow_runs
from pipeline.study.storage import SharedStudy
from pipeline.tracking.masking import config_yaml, mask_logs
from training import interrupt

log = logging.getLogger(__name__)

# suggests an asked trial's params (the search space) -> {key: value}
Suggest = Callable[[object], dict]
# runs one trial with its params (train, audit, tell); True when it completed
RunTrial = Callable[[object, dict], bool]
# the sampler proposing only parameter sets already tried this many times in a row: stop
MAX_DUPLICATES_IN_ROW = 100


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


def work(shared: SharedStudy, s: SearchConfig, suggest: Suggest, run_trial: RunTrial) -> None:
    """Ask, run and tell trials until `n_trials` are complete (several processes may share this).

    With heartbeats a process that has nothing left to ask waits for the others, so that
    a trial whose worker died is retried here. A proposed parameter set already complete,
    running or queued is not trained again (see `duplicate_of`).
    """
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    study = shared.study
    n_failed = n_duplicates = 0
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
        trial.set_user_attr("worker", worker_name())  # whose it is, for `recover_running_without_heartbeat`
        beat = (
            Heartbeat(shared.storage, shared.trial_id(trial.number), s.heartbeat_interval)
            if shared.has_heartbeat
            else None
        )
        try:
            if is_surplus(shared, trial, s.n_trials):
                continue
            params = suggest(trial)
            trial.set_user_attr("sampler_seed", shared.sampler_seed)
            same = duplicate_of(shared, trial.number, params, wait_s=float(s.grace_period))
            if same is not None:
                trial.set_user_attr("duplicate_of", same)
                study.tell(trial, state=TrialState.PRUNED)
                n_duplicates += 1
                log.info(
                    "trial %d not run: its params are trial %d's (%d such repeat(s) in a row); "
                    "it does not count toward n_trials",
                    trial.number,
                    same,
                    n_duplicates,
                )
                if n_duplicates >= MAX_DUPLICATES_IN_ROW:
                    raise RuntimeError(
                        f"the sampler proposed {n_duplicates} parameter sets in a row that were "
                        "already tried: the search space is probably exhausted; lower "
                        "search.n_trials or widen search.space"
                    )
                continue
            n_duplicates = 0
            ok = run_trial(trial, params)
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


def duplicate_of(shared: SharedStudy, number: int, params: dict, wait_s: float) -> int | None:
    """The number of a trial that already has `params` (so trial `number` must not run them).

    Compared with: COMPLETE trials, WAITING (queued) trials, and RUNNING trials with a
    smaller number. Never with a RUNNING trial of a larger number: of two identical
    trials asked at the same instant, the later one yields and the earlier one runs, so
    exactly one of them survives whatever order the two checks run in. A RUNNING trial
    with a smaller number whose params are still being written (asked, not yet fully
    suggested) is waited for, at most `wait_s` (then its worker is presumed dead: the
    heartbeat fails it).
    """
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    deadline = time.monotonic() + wait_s
    while True:
        pending = False
        for t in shared.study.get_trials(deepcopy=False, states=states):
            if t.number == number or (t.state == TrialState.RUNNING and t.number > number):
                continue
            other = t.params if t.state != TrialState.WAITING else params_of(t)
            if other == params:
                return t.number
            if t.state == TrialState.RUNNING and not set(params) <= set(other):
                pending = True
        if not pending or time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def n_duplicates(study) -> int:
    """Trials of the study not run because their params repeated an earlier trial's."""
    return sum("duplicate_of" in t.user_attrs for t in study.get_trials(deepcopy=False))


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
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    # not a failure of its own: it carries on the retry it was, if it was one
    requeue(study, frozen, frozen.user_attrs.get("retry_of", frozen.system_attrs.get("failed_trial")))
    log.info("trial %d not run: %d trials are already complete or running", trial.number, earlier)
    return True


def requeue(study, frozen, retry_of: int | None) -> dict | None:
    """Queue the parameters of `frozen` (a trial being failed unfinished, `params_of`) as a new
    trial; returns them (None: it had none to queue). The new trial names `retry_of` (user attr),
    when given. The one way this module retries a trial (surplus, interrupted, left running)."""
    params = params_of(frozen)
    if params:
        study.enqueue_trial(params, user_attrs={} if retry_of is None else {"retry_of": retry_of})
    return params or None


def params_of(frozen) -> dict:
    """The parameters trial `frozen` runs (or ran): its `params` win over its `fixed_params`.

    A requeued trial must re-run exactly the parameters the failed one ran, and those are its
    `params`: drawn, or taken from its queue entry value for value (when Optuna suggests a key,
    a stored param wins over a fixed one). Its `fixed_params` (system attr) are what it was
    queued with, which may be fewer keys or other ones: a partial `enqueue_trial`, or a trial
    that Optuna's heartbeat retry queued with the lost trial's params, keeping the lost trial's
    older `fixed_params` beside them. Only a trial that has suggested nothing yet (a queued,
    WAITING one; a surplus one, failed before it suggests) has no params: then its
    `fixed_params` are what it would run. (The heartbeat retry, `storage._RetryAndCloseRun`,
    queues `params` as well.)
    """
    return frozen.params or frozen.system_attrs.get("fixed_params") or {}


def give_back(shared: SharedStudy, trial) -> None:
    """Interrupted by the user: fail the trial now and queue its params again, so the next run
    retries it at once instead of waiting for its heartbeat to go stale."""
    from optuna.trial import TrialState

    study = shared.study
    frozen = shared.frozen(trial.number)
    if frozen.state != TrialState.RUNNING:
        return  # told already (complete or failed): nothing to give back
    study.tell(trial, state=TrialState.FAIL)
    requeue(study, frozen, trial.number)
    log.warning("trial %d interrupted: failed, its params queued to be retried", trial.number)
    mlflow_runs.close_lost_run(frozen)


def recover_running_without_heartbeat(shared: SharedStudy) -> None:
    """Storages without heartbeats (journal): RUNNING trials whose process is gone are failed
    and their params queued again.

    A trial names its process (user attr `worker`, host:pid). One of this host whose process
    no longer exists is failed; one of another host is left alone (its process cannot be
    checked from here: it is failed when the study is next opened on that host); one without
    a name (asked by an older version) is failed, as before.
    """
    from optuna.trial import TrialState

    if shared.has_heartbeat:
        return
    study = shared.study
    here = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        host, _, pid = str(t.user_attrs.get("worker", "")).rpartition(":")
        if host and host != here:
            log.info("trial %d is running on %s; left to that host", t.number, host)
            continue
        if host and pid.isdigit() and _process_alive(int(pid)):
            continue  # another command on this host is running it
        log.warning(
            "trial %d was left running by an interrupted run: failing and retrying it", t.number
        )
        study.tell(t.number, state=TrialState.FAIL)
        requeue(study, t, t.number)
        mlflow_runs.close_lost_run(t)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a trial "of this process" at start is one of an earlier process with our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


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
    text = config_yaml(cfg, masked=False)  # the workers must connect
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


def raise_if_failed(workers: list, parent_id: str | None = None) -> None:
    """After `join`: raise when one of the workers exited with an error (the study's parent run
    `parent_id` then ends FAILED with the error)."""
    bad = [w.exitcode for w in workers if w.exitcode != 0]
    if bad:
        err = RuntimeError(f"{len(bad)} search worker process(es) failed (exit codes {bad})")
        mlflow_runs.fail_parent(parent_id, err)
        raise err


def worker_main(
    cfg_yaml: str, parent_id: str | None, index: int, level: int, body: WorkerBody
) -> None:
    """Entry point of a spawned worker: logging, threads and Ctrl-C handling around `body`."""
    logging.basicConfig(level=level, format=f"[worker {index}] %(levelname)s %(name)s: %(message)s")
    mask_logs()
    cfg = as_dictconfig(OmegaConf.create(cfg_yaml), "a search worker's config")
    threads.configure(cfg)  # runtime.n_threads=auto: this worker's share of the cores
    try:
        with interrupt.guarded():
            body(cfg, parent_id, index)
    except KeyboardInterrupt:
        log.warning("worker %d interrupted", index)
        sys.exit(130)
