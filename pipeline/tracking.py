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
    working folder.
    """
    if not bool(cfg.tracking.get("enabled", True)):
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = str(cfg.tracking.uri)
    lock_path = None
    if uri.startswith("sqlite:///"):
        db_path = Path(uri[len("sqlite:///") :])
        db_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = db_path.with_name(db_path.name + ".lock")
    mlflow.set_tracking_uri(uri)
    # Parallel jobs (Hydra's joblib launcher) opening a new SQLite store at once race in
    # MLflow's schema migration ("duplicate column name"): one process at a time creates it.
    with file_lock(lock_path):
        return _experiment_id(cfg, uri)


def _experiment_id(cfg: DictConfig, uri: str) -> str:
    import mlflow

    name = str(cfg.tracking.experiment)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_dir = Path(str(cfg.tracking.artifact_dir)).resolve()
        artifact_dir.mkdir(parents=True, exist_ok=True)
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        if uri.startswith(("http://", "https://")):
            exp_id = mlflow.create_experiment(name, tags=tags)
        else:
            exp_id = mlflow.create_experiment(name, artifact_location=artifact_dir.as_uri(), tags=tags)
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
def file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive advisory lock on `path` across processes (no-op for None or without fcntl)."""
    if path is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
        mlflow.log_metrics(clean, step=step)


def log_params(params: Mapping[str, Any]) -> None:
    if not active():
        return
    import mlflow

    mlflow.log_params({k: str(v)[:500] for k, v in params.items()})


def set_tags(tags: Mapping[str, Any]) -> None:
    if not active():
        return
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    if not active():
        return
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)


def config_yaml(cfg: DictConfig) -> str:
    """The run's config as logged (`config.yaml`): resolved, except values built from `paths`
    (cache, MLflow and Optuna stores, data files), which keep their interpolations, so the file
    re-runs elsewhere with `paths.root=...`:

        python -m pipeline --config-dir DIR --config-name logged paths.root=/tmp/rerun

    (DIR/logged.yaml is the downloaded file; a name other than `config`, which the package's
    own conf/ would shadow.)
    """
    return OmegaConf.to_yaml(
        _keep_path_interpolations(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(cfg, resolve=False))
    )


def _keep_path_interpolations(resolved: Any, raw: Any) -> Any:
    """`resolved`, except values whose raw form refers to `${paths.…}` (cache, MLflow store, data files)."""
    if isinstance(resolved, dict) and isinstance(raw, dict):
        return {k: _keep_path_interpolations(v, raw.get(k)) for k, v in resolved.items()}
    if isinstance(resolved, list) and isinstance(raw, list) and len(resolved) == len(raw):
        return [_keep_path_interpolations(v, r) for v, r in zip(resolved, raw)]
    return raw if isinstance(raw, str) and "${paths." in raw else resolved


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
    c = cfg.compress
    return {
        "experiment_name": str(cfg.get("experiment_name", "default")),
        "dataset": str(cfg.dataset.name),
        "method": str(c.method),
        "variant": str(c.get("variant", "")) if str(c.method) == "safecompress" else "",
        "density": f"{float(c.density):g}",
        "seed": str(int(cfg.seed)),
        "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
    }
