"""MLflow plumbing: the tracking URI and experiment from config, and logging that is a no-op
when no run is active (stages called from tests or scripts need no MLflow run)."""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# MLflow 3 records what an experiment is for in this tag; "custom_model_development" (model
# training, not GenAI) is the kind whose UI leads with the runs table. MLflow 3.17's UI decides
# by its own GenAI / Model training switch instead (`?workflowType=machine_learning`, see ui_url).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def setup(cfg: DictConfig) -> str | None:
    """Point MLflow at `tracking.uri` and make sure the experiment exists; returns its id.

    Always sets the URI from config: without it MLflow writes `mlflow.db` into the
    working folder. A remote server's HTTP calls are bounded by `tracking.call_timeout_s`;
    when it cannot be reached this returns None and tracking is paused (see `call`).
    """
    mask_logs()
    if not bool(cfg.tracking.get("enabled", True)):
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = str(cfg.tracking.uri)
    bound_http_calls(float(cfg.tracking.get("call_timeout_s", DEFAULT_CALL_TIMEOUT_S)))
    lock_path = db_path = None
    if uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///") :])
        _make_store_folder(db_path, "MLflow tracking store", "tracking.uri")
        lock_path = db_path.with_name(db_path.name + ".lock")
    mlflow.set_tracking_uri(uri)
    # Parallel jobs (Hydra's joblib launcher) opening a new SQLite store at once race in
    # MLflow's schema migration ("duplicate column name"): one process at a time creates it.
    with file_lock(lock_path, "MLflow tracking store", "tracking.uri"):
        if db_path is None:
            return call(_experiment_id, cfg, uri)
        artifact_root = Path(str(cfg.tracking.artifact_dir)).resolve().as_uri()
        prepare_sqlite_store(
            db_path, "MLflow tracking store", "tracking.uri", lambda url: _create_mlflow_store(url, artifact_root)
        )
        try:
            return call(_experiment_id, cfg, uri)
        except Exception as err:  # noqa: BLE001 - a store that cannot be written: one clear message
            raise StoreError(_store_message(db_path, "MLflow tracking store", "tracking.uri", err, "open")) from err


class StoreError(RuntimeError):
    """A tracking or study store that cannot be created, migrated or written."""


def _store_advice(folder: Path, setting: str, err: BaseException) -> str:
    text = f"{err}".lower()
    if isinstance(err, OSError) and err.errno == errno.ENOSPC or "disk is full" in text or "no space" in text:
        return f"the disk is full: free space on {folder} (or set {setting} to a store on another disk)"
    if (isinstance(err, OSError) and err.errno in (errno.EROFS, errno.EACCES, errno.EPERM)) or "readonly" in text \
            or "read-only" in text or "unable to open database" in text:
        return f"{folder} is not writable: make it writable (or set {setting} to a writable place)"
    return f"check that {folder} has free space and is writable (or set {setting} elsewhere)"


def _store_message(db_path: Path, what: str, setting: str, err: BaseException, verb: str) -> str:
    return (
        f"cannot {verb} the {what} {db_path}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
        f"What to do: {_store_advice(db_path.parent, setting, err)}, then run the same command again"
    )


def _make_store_folder(db_path: Path, what: str, setting: str) -> None:
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StoreError(_store_message(db_path, what, setting, err, "create the folder of")) from err


def _remove_sqlite_files(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove %s%s: %s", path, suffix, err)


def prepare_sqlite_store(db_path: Path, what: str, setting: str, create: Callable[[str], None]) -> None:
    """Make sure the SQLite store `db_path` exists, fully migrated, and can be written.

    A new store is created and migrated by `create(url)` in a temporary file beside it and moved
    in place (`os.replace`) only when complete, so a disk that fills up or a folder that turns out
    read-only leaves nothing behind (before, a half-made store kept `_alembic_tmp_*` tables that
    failed every later run). An existing store left half-migrated by an older version is repaired
    when that is safe (`repair_interrupted_migration`). Errors name the file and what to do.
    Call it under the store's lock.
    """
    if db_path.exists() and db_path.stat().st_size > 0:
        for path in (db_path, db_path.parent):
            if not os.access(path, os.W_OK):
                raise StoreError(
                    f"the {what} {db_path} is read-only ({path} is not writable). What to do: make it writable "
                    f"(or set {setting} to a writable place), then run the same command again"
                )
        repair_interrupted_migration(db_path, what)
        return
    tmp = db_path.with_name(f".{db_path.name}.creating.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        create(f"sqlite:///{tmp}")
        os.replace(tmp, db_path)
    except BaseException as err:
        _remove_sqlite_files(tmp)
        if isinstance(err, Exception):
            raise StoreError(_store_message(db_path, what, setting, err, "create")) from err
        raise
    log.info("created the %s %s", what, db_path)


def repair_interrupted_migration(db_path: Path, what: str) -> None:
    """Drop `_alembic_tmp_<table>` copies an interrupted schema migration left behind, when
    `<table>` itself is intact; refuse (naming the file) when only the copy is left."""
    import sqlite3

    con = sqlite3.connect(str(db_path), timeout=60)
    try:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        leftovers = sorted(n for n in names if n.startswith("_alembic_tmp_"))
        for tmp in leftovers:
            table = tmp[len("_alembic_tmp_") :]
            if table not in names:
                raise StoreError(
                    f"the {what} {db_path} was left half-migrated: table {table!r} exists only as its "
                    f"migration copy {tmp!r}. What to do: restore the file from a backup, or move it away "
                    "to start a new store, then run the same command again"
                )
            con.execute(f'DROP TABLE "{tmp}"')
            log.warning("%s %s: dropped %s, left by an interrupted schema migration", what, db_path, tmp)
        con.commit()
    except sqlite3.DatabaseError as err:
        raise StoreError(_store_message(db_path, what, "the store setting", err, "read")) from err
    finally:
        con.close()


def _create_mlflow_store(url: str, artifact_root: str) -> None:
    """Create and migrate an MLflow SQLite tracking store at `url`."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(url, artifact_root)
    store.engine.dispose()


# --- tracking server outages ---------------------------------------------------------------
# One MLflow call against a server that is down would retry for ~4 minutes with MLflow's
# defaults (7 retries, exponential backoff, 120 s timeout per request). `bound_http_calls`
# caps it; `call` turns an unreachable server into a pause of tracking in this process
# (the study goes on: Optuna's storage keeps every result) instead of an error, and
# `reconnect` ends the pause once the server answers. The search then logs what the
# pause missed (`pipeline.study.mlflow_runs.reconcile_runs`).

DEFAULT_CALL_TIMEOUT_S = 60.0
_HTTP_RETRIES = 2  # retries after the first attempt
_HTTP_BACKOFF_FACTOR = 1  # urllib3: no sleep before the first retry, then 2 s (+ jitter)
_HTTP_BACKOFF_JITTER = 0.5
_outage: str | None = None  # why the server is taken as unreachable, None while it answers


def bound_http_calls(call_timeout_s: float) -> None:
    """Set MLflow's HTTP retry and timeout variables so that one call (all its retries and
    back-off sleeps) ends within about `call_timeout_s` seconds."""
    if call_timeout_s <= 0:
        raise ValueError(f"tracking.call_timeout_s must be > 0 seconds, got {call_timeout_s}")
    backoff = _HTTP_BACKOFF_FACTOR * 2 * (_HTTP_RETRIES - 1) + _HTTP_BACKOFF_JITTER * _HTTP_RETRIES
    per_request = max(1, int((call_timeout_s - backoff) // (_HTTP_RETRIES + 1)))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(_HTTP_RETRIES)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] = str(_HTTP_BACKOFF_FACTOR)
    os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"] = str(_HTTP_BACKOFF_JITTER)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(per_request)


def is_outage(err: BaseException) -> bool:
    """Whether `err` says the tracking server could not be reached (or answered 5xx), as
    opposed to a request it refused (a bad param, a missing run)."""
    try:
        import requests

        if isinstance(err, requests.exceptions.RequestException):
            return True
    except ImportError:  # pragma: no cover - mlflow depends on requests
        pass
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    return type(err).__name__ in ("MlflowException", "RestException") and "API request to" in str(err)


def offline() -> bool:
    """True while tracking is paused because the server could not be reached."""
    return _outage is not None


def call(fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, or None without calling it while tracking is paused.

    A call that fails because the server is unreachable pauses tracking (one warning)
    and returns None; any other error is raised.
    """
    global _outage
    if _outage is not None:
        return None
    try:
        return fn(*args, **kwargs)
    except Exception as err:
        if not is_outage(err):
            raise
        _outage = mask_secrets(f"{type(err).__name__}: {err}")[:300]
        log.warning(
            "MLflow tracking is unreachable (%s): tracking paused in this process. The study goes "
            "on and keeps every result in its Optuna storage; what MLflow missed is logged once "
            "the server answers again (at the next trial, or by rerunning the same command).",
            _outage,
        )
        return None


def reconnect() -> bool:
    """While paused, try the server once (a bounded call); True when tracking can go on."""
    global _outage
    if _outage is None:
        return True
    import mlflow

    try:
        mlflow.MlflowClient().search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - still down (or broken): stay paused
        log.debug("MLflow tracking still unreachable: %s", mask_secrets(str(err)))
        return False
    log.warning("MLflow tracking reachable again: tracking resumed")
    _outage = None
    return True


def _experiment_id(cfg: DictConfig, uri: str) -> str:
    import mlflow

    name = str(cfg.tracking.experiment)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_dir = Path(str(cfg.tracking.artifact_dir)).resolve()
        artifact_dir.mkdir(parents=True, exist_ok=True)
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        try:
            if uri.startswith(("http://", "https://")):
                exp_id = mlflow.create_experiment(name, tags=tags)
            else:
                exp_id = mlflow.create_experiment(name, artifact_location=artifact_dir.as_uri(), tags=tags)
        except mlflow.exceptions.MlflowException as err:
            # Commands on several machines starting at once against one server: another one
            # created it between our lookup and our create (the server answers
            # RESOURCE_ALREADY_EXISTS; a file lock cannot order processes on other hosts).
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            log.info("experiment %r was created by another process meanwhile (%s)", name, err.error_code)
            exp_id = experiment.experiment_id
    else:
        exp_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag; a user's own kind stays
            mlflow.MlflowClient().set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def ui_url(exp_id: str | None, host: str = "http://127.0.0.1:5000") -> str:
    """Where `make ui` shows the experiment's runs (MLflow 3's UI opens on its GenAI pages
    unless told the workflow is model training)."""
    path = f"#/experiments/{exp_id}/runs" if exp_id else "#/experiments"
    return f"{host}/{path}?workflowType=machine_learning"


@contextmanager
def file_lock(path: Path | None, what: str = "store", setting: str = "its setting") -> Iterator[None]:
    """An exclusive advisory lock on `path` across processes (no-op for None or without fcntl)."""
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    try:
        f = open(path, "a")  # noqa: SIM115 - closed below
    except OSError as err:
        raise StoreError(_store_message(path, f"lock file of the {what}", setting, err, "create")) from err
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def tag_error(err: BaseException) -> None:
    """Tag the active run with `error` (type and message); tracking problems only log."""
    try:
        set_tags({"error": f"{type(err).__name__}: {err}"[:4000]})
    except Exception as tag_err:  # noqa: BLE001 - the original error matters more
        log.warning("could not tag the failed run with its error: %s", tag_err)


@contextmanager
def error_tagged() -> Iterator[None]:
    """Tag the active run with `error` when the block raises (the run then ends FAILED)."""
    try:
        yield
    except Exception as err:
        tag_error(err)
        raise


def active() -> bool:
    try:
        import mlflow
    except ImportError:  # pragma: no cover
        return False
    return mlflow.active_run() is not None


class _Held:
    """Metrics held back by `summary_first`; `first` is logged before them."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.calls: list[tuple[dict[str, float], int | None]] = []


_held: _Held | None = None


@contextmanager
def summary_first() -> Iterator[dict[str, float]]:
    """Hold back the metrics logged inside; at the end log the yielded dict's metrics first,
    then the held ones, without logging a summary metric twice.

    MLflow's UI lists a run's metrics in the order they were logged: a trial's objectives
    should lead, not the training curves and candidate tables its stages log on the way.
    Also on an error inside, so a failed run keeps what its stages logged.
    """
    global _held
    outer, _held = _held, _Held()
    held = _held
    try:
        yield held.first
    finally:
        _held = outer
        log_metrics(held.first)
        for metrics, step in held.calls:
            log_metrics({k: v for k, v in metrics.items() if step is not None or k not in held.first}, step)


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    """Log finite numeric metrics to the active run (NaN values are skipped, not logged as 0)."""
    if _held is not None:
        _held.calls.append(({f"{prefix}{k}": v for k, v in metrics.items()}, step))
        return
    if not active():
        return
    import mlflow

    clean = {
        f"{prefix}{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and math.isfinite(float(v))
    }
    if clean:
        call(mlflow.log_metrics, clean, step=step)


def log_params(params: Mapping[str, Any]) -> None:
    if not active():
        return
    import mlflow

    call(mlflow.log_params, {k: mask_secrets(str(v))[:500] for k, v in params.items()})


def set_tags(tags: Mapping[str, Any]) -> None:
    if not active():
        return
    import mlflow

    call(mlflow.set_tags, {k: mask_secrets(str(v)) for k, v in tags.items()})


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    if not active():
        return
    import mlflow

    call(mlflow.log_artifact, str(path), artifact_path=artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    if not active():
        return
    import mlflow

    call(mlflow.log_text, text, artifact_file)


def config_yaml(cfg: DictConfig, masked: bool = True) -> str:
    """The run's config as logged (`config.yaml`): resolved, except values built from `paths`
    (cache, MLflow and Optuna stores, data files) or read from the environment
    (`${oc.env:...}`, e.g. a database password), which keep their interpolations, so the file
    re-runs elsewhere with `paths.root=...` and never holds the secret:

        python -m pipeline --config-dir DIR --config-name logged paths.root=/tmp/rerun

    (DIR/logged.yaml is the downloaded file; a name other than `config`, which the package's
    own conf/ would shadow.) A password written literally into a URL is replaced by `***`
    (`masked=False`: not, for the copies handed to worker processes, which must connect).
    """
    return OmegaConf.to_yaml(
        _keep_path_interpolations(
            OmegaConf.to_container(cfg, resolve=True),
            OmegaConf.to_container(cfg, resolve=False),
            masked,
        )
    )


def _keep_path_interpolations(resolved: Any, raw: Any, masked: bool = False) -> Any:
    """`resolved`, except values whose raw form refers to `${paths.…}` (cache, MLflow store, data
    files) or `${oc.env:…}`; with `masked`, URL passwords in the other strings become `***`."""
    if isinstance(resolved, dict) and isinstance(raw, dict):
        return {k: _keep_path_interpolations(v, raw.get(k), masked) for k, v in resolved.items()}
    if isinstance(resolved, list) and isinstance(raw, list) and len(resolved) == len(raw):
        return [_keep_path_interpolations(v, r, masked) for v, r in zip(resolved, raw)]
    if isinstance(raw, str) and ("${paths." in raw or "${oc.env:" in raw):
        return mask_secrets(raw) if masked else raw
    return mask_secrets(resolved) if masked and isinstance(resolved, str) else resolved


# scheme://user:PASSWORD@host... (a password cannot hold an unescaped "/" or "@"); a password
# that is an interpolation (`${oc.env:PGPASSWORD}`) is no secret and is kept
_URL_PASSWORD = re.compile(r"(?P<pre>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?!\$\{)[^@\s/]+(?=@)")
# libpq/SQLAlchemy query form: ...?password=PASSWORD&...
_QUERY_PASSWORD = re.compile(r"(?i)(?P<pre>(?:^|[?&;\s])password=)(?!\$\{)[^&\s;'\"]+")
MASK = "***"


def mask_secrets(text: str) -> str:
    """`text` with the passwords of any URLs in it replaced by `***` (user, host, db kept)."""
    if "://" not in text and "password=" not in text.lower():
        return text
    text = _URL_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)
    return _QUERY_PASSWORD.sub(lambda m: m.group("pre") + MASK, text)


class SecretMaskingFilter(logging.Filter):
    """Masks URL passwords in every record a handler emits (console, Hydra's job log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is the handler's to report
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def mask_logs() -> None:
    """Install `SecretMaskingFilter` on the root logger's handlers (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretMaskingFilter) for f in handler.filters):
            handler.addFilter(SecretMaskingFilter())


def git_commit() -> str:
    """The current git commit of the code, or "unknown" outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, for logging nested configs as params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def run_tags(cfg: DictConfig) -> dict[str, str]:
    """Tags that identify a run in reports: experiment, data set, method, density, seed, variant."""
    from pipeline.compress import METHODS

    c = cfg.compress
    method = METHODS.get(str(c.method))
    return {
        "experiment_name": str(cfg.get("experiment_name", "default")),
        "dataset": str(cfg.dataset.name),
        "method": str(c.method),
        # the safety test's attacker, for the methods that select candidates with one
        "variant": str(c.get("variant", "")) if method is not None and method.selects_candidates else "",
        "density": f"{float(c.density):g}",
        "seed": str(int(cfg.seed)),
        "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
    }
