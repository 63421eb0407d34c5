"""MLflow plumbing: the tracking URI and experiment from config, and logging that is a no-op
when no run is active (stages called from tests or scripts need no MLflow run)."""

from __future__ import annotations

import logging
import math
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline.config import TrackingConfig
from pipeline.tracking.masking import mask_logs, mask_secrets
from pipeline.tracking.stores import (
    StoreError,
    file_lock,
    make_store_folder,
    prepare_sqlite_store,
    store_message,
)

log = logging.getLogger(__name__)

# MLflow 3 records what an experiment is for in this tag; "custom_model_development" (model
# training, not GenAI) is the kind whose UI leads with the runs table. MLflow 3.17's UI decides
# by its own GenAI / Model training switch instead (`?workflowType=machine_learning`, see ui_url).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def setup(settings: TrackingConfig) -> str | None:
    """Point MLflow at `tracking.uri` and make sure the experiment exists; returns its id.

    Always sets the URI from config: without it MLflow writes `mlflow.db` into the
    working folder. A remote server's HTTP calls are bounded by `tracking.call_timeout_s`;
    when it cannot be reached this returns None and tracking is paused (see `call`).
    """
    mask_logs()
    if not settings.enabled:
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = settings.uri
    bound_http_calls(float(settings.call_timeout_s))
    lock_path = db_path = None
    if uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///") :])
        make_store_folder(db_path, "MLflow tracking store", "tracking.uri")
        lock_path = db_path.with_name(db_path.name + ".lock")
    mlflow.set_tracking_uri(uri)
    # Parallel jobs (Hydra's joblib launcher) opening a new SQLite store at once race in
    # MLflow's schema migration ("duplicate column name"): one process at a time creates it.
    with file_lock(lock_path, "MLflow tracking store", "tracking.uri"):
        if db_path is None:
            return call(_experiment_id, settings, uri)
        artifact_root = Path(settings.artifact_dir).resolve().as_uri()
        prepare_sqlite_store(
            db_path, "MLflow tracking store", "tracking.uri", lambda url: _create_mlflow_store(url, artifact_root)
        )
        try:
            return call(_experiment_id, settings, uri)
        except Exception as err:  # noqa: BLE001 - a store that cannot be written: one clear message
            raise StoreError(store_message(db_path, "MLflow tracking store", "tracking.uri", err, "open")) from err


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


class TrackingLink:
    """This process's link to the tracking server: the state its MLflow calls share, held in one
    object that is handed to whoever steers by it (the search's study session) rather than read
    from module globals.

    `outage`: why the server is taken as unreachable (None while it answers); `held`: the metrics
    a `summary_first` block holds back. The stages log through this module's functions, which use
    the process's link, `LINK`; a spawned worker process has its own.
    """

    def __init__(self) -> None:
        self.outage: str | None = None
        self.held: _Held | None = None

    @property
    def offline(self) -> bool:
        """True while tracking is paused because the server could not be reached."""
        return self.outage is not None

    def usable(self) -> bool:
        """Whether a run can be tracked now: the server answers, or answers again (one bounded try)."""
        return not self.offline or self.reconnect()

    def call(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)`, or None without calling it while tracking is paused.

        A call that fails because the server is unreachable pauses tracking (one warning)
        and returns None; any other error is raised.
        """
        if self.outage is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_outage(err):
                raise
            self.outage = mask_secrets(f"{type(err).__name__}: {err}")[:300]
            log.warning(
                "MLflow tracking is unreachable (%s): tracking paused in this process. The study goes "
                "on and keeps every result in its Optuna storage; what MLflow missed is logged once "
                "the server answers again (at the next trial, or by rerunning the same command).",
                self.outage,
            )
            return None

    def reconnect(self) -> bool:
        """While paused, try the server once (a bounded call); True when tracking can go on."""
        if self.outage is None:
            return True
        import mlflow

        try:
            mlflow.MlflowClient().search_experiments(max_results=1)
        except Exception as err:  # noqa: BLE001 - still down (or broken): stay paused
            log.debug("MLflow tracking still unreachable: %s", mask_secrets(str(err)))
            return False
        log.warning("MLflow tracking reachable again: tracking resumed")
        self.outage = None
        return True

    @contextmanager
    def summary_first(self) -> Iterator[dict[str, float]]:
        """Hold back the metrics logged inside; at the end log the yielded dict's metrics first,
        then the held ones, without logging a summary metric twice.

        MLflow's UI lists a run's metrics in the order they were logged: a trial's objectives
        should lead, not the training curves and candidate tables its stages log on the way.
        Also on an error inside, so a failed run keeps what its stages logged.
        """
        outer, self.held = self.held, _Held()
        held = self.held
        try:
            yield held.first
        finally:
            self.held = outer
            log_metrics(held.first)
            for metrics, step in held.calls:
                log_metrics({k: v for k, v in metrics.items() if step is not None or k not in held.first}, step)


class _Held:
    """Metrics held back by `summary_first`; `first` is logged before them."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.calls: list[tuple[dict[str, float], int | None]] = []


LINK = TrackingLink()  # this process's


def offline() -> bool:
    """True while this process's tracking is paused (`LINK.offline`)."""
    return LINK.offline


def call(fn, *args, **kwargs):
    """`LINK.call`: `fn(*args, **kwargs)`, or None while tracking is paused (see `TrackingLink.call`)."""
    return LINK.call(fn, *args, **kwargs)


def reconnect() -> bool:
    """`LINK.reconnect()`: while paused, try the server once; True when tracking can go on."""
    return LINK.reconnect()


def summary_first():
    """`LINK.summary_first()` (see `TrackingLink.summary_first`)."""
    return LINK.summary_first()


def _experiment_id(settings: TrackingConfig, uri: str) -> str:
    import mlflow

    name = settings.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_dir = Path(settings.artifact_dir).resolve()
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


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    """Log finite numeric metrics to the active run (NaN values are skipped, not logged as 0)."""
    if LINK.held is not None:
        LINK.held.calls.append(({f"{prefix}{k}": v for k, v in metrics.items()}, step))
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
    from training.compress import METHODS

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
