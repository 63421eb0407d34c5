"""Shipping a compressed model: MLflow Models (`mlflow_model`), ONNX / state_dict / `.sc` files
(`formats`), the choice of the model to ship (`choice`) and its model card (`card`).
`stage=export` (`pipeline.stages.export`) puts them together; `log_compressed` is the hook by
which every compress/attack run and search trial logs its model (`tracking.log_models`)."""

from __future__ import annotations

import logging
import time

import torch

from pipeline.context import RunContext
from pipeline.results import AttackResult, CompressResult
from pipeline.tracking import plumbing as tracking

log = logging.getLogger(__name__)

N_EXAMPLE = 2  # input-example records logged with a model (test records: no member is shown)


def log_compressed(ctx: RunContext, compressed: CompressResult, audit: AttackResult | None = None) -> str | None:
    """Log the run's compressed model as an MLflow Model into the active run (with the audit's
    numbers when given); None when `tracking.log_models` is off, no run is active or tracking is
    paused. A tracking problem is logged, never raised: the run's results stand without it."""
    if not (ctx.tracking.enabled and ctx.tracking.log_models) or not tracking.active() or tracking.offline():
        return None
    from pipeline.compress_jobs import load_compressed
    from pipeline.export import mlflow_model

    t0 = time.perf_counter()
    try:
        data = ctx.data
        model = load_compressed(ctx, data, compressed.export_path)
        x_test, _ = data.part("test")
        example = x_test[:N_EXAMPLE] if len(x_test) else data.dataset.x[:N_EXAMPLE]
        metrics = {**compressed.metrics, **(audit.metrics if audit is not None else {})}
        keys = {"compress_key": compressed.key, "attack_key": audit.key if audit is not None else None}
        tags = tracking.run_tags(ctx.cfg)
        extra = {**keys, "method": tags["method"], "dataset": tags["dataset"], "export_file": mlflow_model.SC_FILE}
        with torch.no_grad():
            model_id = mlflow_model.log_model(model, compressed.export_path, example, mlflow_model.model_metadata(metrics, extra))
        tracking.set_tags({k: v for k, v in keys.items() if v})
    except Exception as err:  # noqa: BLE001 - like every tracking problem: logged, the run goes on
        log.warning("could not log the compressed model as an MLflow Model: %s: %s", type(err).__name__, err)
        return None
    log.debug("logged MLflow Model %s in %.2f s", model_id, time.perf_counter() - t0)
    return model_id
