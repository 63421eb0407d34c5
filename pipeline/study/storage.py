"""Opening the Optuna storage and the study every worker shares.

RDB storages (SQLite, PostgreSQL, ...) get heartbeats: a RUNNING trial whose process
died (SIGKILL, a lost machine) is failed after `search.grace_period` seconds and retried
with the same params. A journal file (`journal:<file>`) needs no database server but has
no heartbeats.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline import tracking
from pipeline.config import OBJECTIVE_DIRECTIONS, SearchConfig
from pipeline.study import mlflow_runs

log = logging.getLogger(__name__)

# Optuna marks heartbeats, set_metric_names and fail_stale_trials experimental, and warns that
# heartbeats are "supposed to be used with Study.optimize": we drive them ourselves (ask/tell).
warnings.filterwarnings("ignore", category=UserWarning, message="Heartbeat of storage")
try:
    from optuna.exceptions import ExperimentalWarning

    warnings.filterwarnings("ignore", category=ExperimentalWarning)
except ImportError:  # pragma: no cover
    pass


@dataclass
class SharedStudy:
    """A study and the storage object it was opened on.

    Keeping the storage we opened spares the private `study._storage`; a trial's storage
    id comes from the public `BaseStorage` lookups rather than the private `trial._trial_id`.
    """

    study: Any  # optuna.Study
    storage: Any  # optuna.storages.BaseStorage
    heartbeat_interval: int | None  # None: this storage has no heartbeats
    _study_id: int | None = field(default=None, repr=False)

    @property
    def has_heartbeat(self) -> bool:
        return self.heartbeat_interval is not None

    @property
    def study_id(self) -> int:
        if self._study_id is None:
            self._study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return self._study_id

    def trial_id(self, number: int) -> int:
        """The storage's id of trial `number` (what heartbeats and `get_trial` take)."""
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def frozen(self, number: int):
        """Trial `number` as stored now (state, params, attrs), read from the storage."""
        return self.storage.get_trial(self.trial_id(number))


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None):
    """An Optuna storage from a URL: RDB (sqlite:///, postgresql://, ...) or `journal:<file>`."""
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
            lock = db.with_name(db.name + ".lock")  # parallel jobs creating one new file: one at a time
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


def heartbeat_interval_of(storage) -> int | None:
    """The storage's heartbeat interval in seconds, None when it has no heartbeats."""
    from optuna.storages import RDBStorage

    if not isinstance(storage, RDBStorage):
        return None
    return storage.get_heartbeat_interval()


class _RetryAndCloseRun:
    """Stale-trial callback: re-enqueue the trial's params and mark its MLflow run KILLED."""

    def __init__(self, retry):
        self.retry = retry

    def __call__(self, study, trial) -> None:
        log.warning(
            "trial %d lost its worker (no heartbeat): failed, retrying its params", trial.number
        )
        self.retry(study, trial)
        mlflow_runs.close_run(trial.user_attrs.get("mlflow_run_id"), "KILLED")


def open_study(cfg: DictConfig, s: SearchConfig, worker: int = 0) -> SharedStudy:
    """Open `search.storage` and create (or load) the study `search.study_name` on it."""
    storage = open_storage(s.storage, s.heartbeat_interval, s.grace_period)
    study = create_study(cfg, s, storage, worker)
    return SharedStudy(study, storage, heartbeat_interval_of(storage))


def create_study(cfg: DictConfig, s: SearchConfig, storage, worker: int = 0):
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
