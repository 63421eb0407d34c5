"""The compressed model as an MLflow Model: logged into the active run (pytorch flavour, signature,
input example, the compact `model.sc` beside it, the model's numbers as metadata), found again by
run id, and registered in the Model Registry.

`mlflow.pytorch.load_model("runs:/<run id>/model")` gives the model back (the same logits as
the `.sc` export loaded into its class). Saved as `pt2` (torch.export's graph: loadable without
this package); a model torch.export cannot trace is saved pickled instead, which needs its class
importable where it is loaded. Logging never draws from torch's, numpy's or Python's random
streams (they are saved and restored around it), so it changes no metric and no seed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.tracking import plumbing as tracking
from training.formats import cpu_copy

log = logging.getLogger(__name__)

MODEL_NAME = "model"  # the logged model's name in its run: runs:/<run id>/model
SC_FILE = "model.sc"
# the metrics a logged model carries as metadata (those its run has; the audit's after stage=attack)
METADATA_METRICS = (
    "density", "model_size_bytes", "dense_size_bytes", "accuracy", "test_accuracy",
    "attack_auc", "attack_tpr_at_1pct_fpr", "attack_tpr_at_0.1pct_fpr",
    "audit_auc", "audit_tpr_at_1pct_fpr", "audit_tpr_at_0.1pct_fpr",
)


@contextlib.contextmanager
def random_streams_kept() -> Iterator[None]:
    """Restore torch's, numpy's and Python's global random states afterwards."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def model_metadata(metrics: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The finite `METADATA_METRICS` of `metrics` (floats) and `extra` (strings)."""
    out: dict[str, Any] = {}
    for k in METADATA_METRICS:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
            out[k] = float(v)
    out.update({k: str(v) for k, v in (extra or {}).items() if v is not None and str(v) != ""})
    return out


def _requirements() -> list[str]:
    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


def log_model(
    model: nn.Module,
    sc_path: Path,
    example: torch.Tensor,
    metadata: Mapping[str, Any],
    name: str = MODEL_NAME,
) -> str | None:
    """Log `model` as an MLflow Model named `name` into the active run; returns its model id
    (None when no run is active or tracking is paused). `example`: a few input records."""
    if not tracking.active() or tracking.offline():
        return None
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # it validates the input example
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    with random_streams_kept(), _mlflow_quiet():
        cpu = cpu_copy(model)
        x = example.detach().cpu()
        with torch.no_grad():
            y = cpu(x).numpy()
        signature = infer_signature(x.numpy(), y)
        kwargs = dict(
            name=name, signature=signature, input_example=x.numpy(), extra_files=[str(sc_path)],
            pip_requirements=_requirements(), metadata=dict(metadata),
            params={k: str(v) for k, v in metadata.items()},
        )
        try:
            info = tracking.call(mlflow.pytorch.log_model, cpu, serialization_format="pt2", **kwargs)
        except Exception as err:  # noqa: BLE001 - torch.export cannot trace every model: pickle it
            log.warning("MLflow Model %r: torch.export could not trace %s (%s); saved pickled instead "
                        "(loading it needs the class importable)", name, type(cpu).__name__, err)
            info = tracking.call(mlflow.pytorch.log_model, cpu, serialization_format="pickle", **kwargs)
    return None if info is None else info.model_id


@contextlib.contextmanager
def _mlflow_quiet() -> Iterator[None]:
    """MLflow's per-call INFO/progress lines while a model is logged (one per trial otherwise)."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def logged_model_id(tracking_uri: str, run_id: str, name: str = MODEL_NAME) -> str | None:
    """The id of the model named `name` that run `run_id` logged (the latest), None if it has none."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(run_id)
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
    )
    ready = [m for m in models if str(getattr(m.status, "name", m.status)).upper().endswith("READY")] or models
    ready.sort(key=lambda m: m.creation_timestamp or 0)
    return ready[-1].model_id if ready else None


def download_sc(tracking_uri: str, model_id: str, dst: Path) -> Path | None:
    """The `model.sc` logged beside model `model_id`, copied under `dst`; None if absent."""
    import mlflow
    from mlflow import MlflowClient

    try:
        location = MlflowClient(tracking_uri=tracking_uri).get_logged_model(model_id).artifact_location
        return Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location.rstrip('/')}/extra_files/{SC_FILE}", dst_path=str(dst), tracking_uri=tracking_uri
        ))
    except Exception as err:  # noqa: BLE001 - MLflow raises several types for a missing artifact
        log.debug("model %s has no %s: %s", model_id, SC_FILE, err)
        return None


def register(
    tracking_uri: str, model_id: str, name: str, tags: Mapping[str, Any], description: str
) -> int:
    """Register model `model_id` as a new version of `name` with `tags` and `description`
    (the model card); returns the version number."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    with _mlflow_quiet():
        mv = mlflow.register_model(f"models:/{model_id}", name, tags={k: str(v) for k, v in tags.items()})
    # the SQL stores hold a version's description in 5000 characters: the full card is an artifact
    text = description if len(description) <= 5000 else description[:4900] + "\n\n(cut: MODEL_CARD.md in the run's artifacts)"
    client.update_model_version(name, mv.version, description=text)
    return int(mv.version)
