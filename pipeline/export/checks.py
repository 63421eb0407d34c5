"""The value rules of `export.*`, checked once at the entry point (`pipeline.validation.validate`),
before any study, run or file is touched."""

from __future__ import annotations

from pipeline.config import EXPORT_RULES, ExportConfig, TrackingConfig

OPSETS = range(9, 21)  # ONNX opsets the TorchScript exporter writes and ONNX Runtime 1.17+ runs


def validate_export(ec: ExportConfig, t: TrackingConfig) -> ExportConfig:
    """`export.*` against each other and the tracking settings; the ONNX extra when ONNX is wanted."""
    from training.formats import require_onnx

    if ec.trial is not None and ec.run_id:
        raise ValueError(f"export.trial={ec.trial} and export.run_id={ec.run_id!r} name two models; give one")
    if ec.rule not in EXPORT_RULES:
        raise ValueError(f"unknown export.rule {ec.rule!r}; valid: {list(EXPORT_RULES)}")
    if ec.trial is not None and ec.trial < 0:
        raise ValueError(f"export.trial must be a trial number >= 0, got {ec.trial}")
    for key, v in (("export.max_attack_auc", ec.max_attack_auc), ("export.min_accuracy", ec.min_accuracy)):
        if v is not None and not 0 <= v <= 1:
            raise ValueError(f"{key} must be in [0, 1], got {v}")
    if ec.n_check < 1:
        raise ValueError(f"export.n_check must be >= 1 (inputs compared), got {ec.n_check}")
    if not ec.max_abs_diff > 0:
        raise ValueError(f"export.max_abs_diff must be > 0, got {ec.max_abs_diff}")
    if ec.opset not in OPSETS:
        raise ValueError(f"export.opset must be in [{OPSETS.start}, {OPSETS.stop - 1}], got {ec.opset}")
    for key, name in (("export.run_id", ec.run_id), ("export.register", ec.register)):
        if name is not None:  # (both are also names quoted into MLflow filters: pipeline.validation checks them)
            if not t.enabled:
                raise ValueError(f"{key} needs MLflow tracking; tracking.enabled is false")
    if ec.onnx:
        require_onnx()
    return ec
