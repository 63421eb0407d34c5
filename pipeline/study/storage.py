"""Opening the Optuna storage and the study every worker shares.

RDB storages (SQLite, PostgreSQL, ...) get heartbeats: a RUNNING trial whose process
died (SIGKILL, a lost machine) is failed after `search.grace_period` seconds and retried
with the same params. A journal file (`journal:<file>`) needs no database server but has
no heartbeats.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import OBJECTIVE_DIRECTIONS, SearchConfig
from pipeline.study.identity import StudyIdentity
from pipeline.study.identity import check as check_identity
from pipeline.tracking.masking import mask_logs, mask_secrets
from pipeline.tracking.stores import StoreError, file_lock, prepare_sqlite_store

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
    sampler_seed: int = 0
    created: bool = False  # this process created the study
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


def open_storage(
    url: str,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    on_lost: OnLost | None = None,
):
    """An Optuna storage from a URL: RDB (sqlite:///, postgresql://, ...) or `journal:<file>`.

    A URL whose database driver is not installed fails at once, naming the driver and the
    extra that installs it; passwords never appear in the message.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    mask_logs()
    shown = mask_secrets(url)
    if url.startswith("journal:"):
        try:
            from optuna.storages.journal import JournalFileBackend

            path = Path(url[len("journal:") :])
            path.parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except Exception as err:  # noqa: BLE001 - any backend error becomes one clear message
            raise ValueError(f"cannot open Optuna storage {shown!r}: {err}") from err
    missing = missing_driver(url)
    if missing:
        raise ValueError(f"cannot open Optuna storage {shown!r}: {missing}")
    try:
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
                    RetryHeartbeatStaleTrialCallback(), on_lost
                ),
            }
        with file_lock(lock, "Optuna study store", "search.storage"):
            if lock is not None:  # created complete or not at all (pipeline.tracking.stores.prepare_sqlite_store)
                prepare_sqlite_store(db, "Optuna study store", "search.storage", _create_optuna_store)
            return optuna.storages.RDBStorage(url, **kwargs)
    except StoreError:
        raise
    except Exception as err:  # noqa: BLE001 - any backend error becomes one clear message
        raise ValueError(
            f"cannot open Optuna storage {shown!r}: {mask_secrets(str(err))} (valid: "
            "sqlite:///<file>, an SQLAlchemy URL such as postgresql://user:pw@host/db (the postgres "
            "extra), or journal:<file>)"
        ) from None  # the chained error's text may hold the URL


POSTGRES_HINT = (
    "install the postgres extra (psycopg 3): pip install -e '.[postgres]' in the safecompress "
    "checkout (make install does), or pip install 'psycopg[binary]'"
)
# SQLAlchemy backend (or backend+driver) -> how to install its default driver
DRIVER_HINTS = {
    "postgresql": POSTGRES_HINT,
    "postgresql+psycopg": POSTGRES_HINT,
    "postgresql+psycopg2": "pip install psycopg2-binary (or write postgresql:// with the postgres "
    "extra)",
    "mysql": "pip install mysqlclient",
    "mysql+pymysql": "pip install pymysql",
}


def missing_driver(url: str) -> str | None:
    """Why the database driver of SQLAlchemy URL `url` cannot be imported, None when it can."""
    try:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        dialect = u.get_dialect()
    except Exception:  # noqa: BLE001 - a malformed URL or unknown backend: RDBStorage says why
        return None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        name = u.drivername
        module = getattr(err, "name", None) or str(err)
        hint = DRIVER_HINTS.get(name) or DRIVER_HINTS.get(u.get_backend_name())
        return (
            f"the database driver of {name}:// ({module!r}) is not installed; "
            + (hint or f"install the Python package that provides {module!r}")
        )
    return None


def _create_optuna_store(url: str) -> None:
    """Create and migrate an Optuna SQLite storage at `url`."""
    import optuna

    optuna.storages.RDBStorage(url).engine.dispose()


def heartbeat_interval_of(storage) -> int | None:
    """The storage's heartbeat interval in seconds, None when it has no heartbeats."""
    from optuna.storages import RDBStorage

    if not isinstance(storage, RDBStorage):
        return None
    return storage.get_heartbeat_interval()


# what happens to a lost trial's tracked run (`mlflow_runs.close_lost_run`: marked KILLED);
# given by the caller, so that the storage knows nothing of MLflow
OnLost = Callable[[Any], None]


class _RetryAndCloseRun:
    """Stale-trial callback: re-enqueue the trial's params and close its tracked run (`on_lost`).

    The retry is a new trial: it inherits the params, not the lost trial's user attrs (its
    `mlflow_run_id`, `worker`, `sampler_seed` were the lost run's), and names the trial it
    retries (`retry_of`). Its own MLflow run id is set when its run starts, or, if tracking is
    paused then, linked by the backfill (`mlflow_runs.reconcile_runs`).
    """

    def __init__(self, retry, on_lost: OnLost | None = None):
        self.retry = retry
        self.on_lost = on_lost

    def __call__(self, study, trial) -> None:
        log.warning(
            "trial %d lost its worker (no heartbeat): failed, retrying its params", trial.number
        )
        fresh = copy.copy(trial)
        fresh.user_attrs = {"retry_of": trial.number}
        self.retry(study, fresh)
        if self.on_lost is not None:
            self.on_lost(trial)


def open_study(
    s: SearchConfig,
    root_seed: int,
    worker: int = 0,
    identity: StudyIdentity | None = None,
    on_lost: OnLost | None = None,
) -> SharedStudy:
    """Open `search.storage` and create (or load) the study `search.study_name` on it.

    With `identity` (what this command's trials depend on), a new study records it and an
    existing one must have it (`pipeline.study.identity.check`): otherwise the command is
    refused, or with `search.on_mismatch=new` the study of the derived name is used (the
    returned study's name is the one to use). `on_lost(trial)` is called for each trial whose
    worker stopped sending heartbeats, after it was failed and queued again.
    """
    storage = open_storage(s.storage, s.heartbeat_interval, s.grace_period, on_lost)
    study, created = create_study(s, storage)
    if identity is not None:
        where = mask_secrets(s.storage)
        other = check_identity(storage, study, created, identity, s.on_mismatch, where)
        if other is not None:
            s = dataclasses.replace(s, study_name=other)
            study, created = create_study(s, storage)
            check_identity(storage, study, created, identity, "refuse", where)
    seed = sampler_seed(root_seed, s, study, created and worker == 0)
    import optuna

    # A reloaded study keeps its trials but not its sampler: pass NSGA-II every time.
    study.sampler = optuna.samplers.NSGAIISampler(population_size=s.population_size, seed=seed)
    return SharedStudy(study, storage, heartbeat_interval_of(storage), seed, created)


def create_study(s: SearchConfig, storage):
    """(study, True) when this call created it, (study, False) when it existed.

    Creating a study is atomic in every Optuna storage (its name is unique), so of
    several processes opening a new study at once exactly one gets True.
    """
    import optuna
    from optuna.exceptions import DuplicatedStudyError

    directions = [OBJECTIVE_DIRECTIONS[o] for o in s.objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            study_name=s.study_name, storage=storage, directions=directions, load_if_exists=False
        )
        created = True
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        created = False
    if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in directions]:
        raise ValueError(
            f"study {s.study_name!r} exists with objectives {study.metric_names} "
            f"({[d.name.lower() for d in study.directions]}); use a new search.study_name for {list(s.objectives)}"
        )
    if created:
        study.set_metric_names(list(s.objectives))
    return study, created


def sampler_seed(root_seed: int, s: SearchConfig, study, reproducible: bool) -> int:
    """The NSGA-II seed of this process: never the same in two processes on one study.

    Only the process that created the study (the first worker of the first command)
    gets a seed derived from the root seed alone, so a fresh single-worker study is
    reproducible; study creation is atomic, so no other process can get it. Every other
    process (extra workers, other machines, a SLURM array, a resumed run) adds a token
    unique to itself (host, pid, clock, random uuid): two processes started at the same
    instant, even on hosts with the same name and pid, do not replay one random stream.
    """
    import uuid

    from training.seeds import derive_seed

    if reproducible:
        seed = derive_seed(root_seed, "search", s.study_name, 0, 0) % (2**32)
        log.info("sampler seed %d (this process created the study: reproducible)", seed)
        return seed
    token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}:{uuid.uuid4().hex}"
    n_existing = len(study.get_trials(deepcopy=False))
    seed = derive_seed(root_seed, "search", s.study_name, n_existing, token) % (2**32)
    log.info("sampler seed %d (unique to this process, %s)", seed, token)
    return seed
