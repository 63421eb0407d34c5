"""Membership-inference attacks and audit metrics, as plain torch/numpy code.

Public surface: `Signals`/`compute_signals` (per-model signals), `AttackInputs` (what the
attacker knows), the registry `ATTACKS`/`make_attack`, `run_audit` -> `AuditResult`, the
metrics (`roc_auc`, `tpr_at_fpr`, `summarize`) and `loss_attack_auc` (the in-loop safety test).
"""

from attacks.base import (
    ATTACKS,
    AuditResult,
    check_specs,
    loss_attack_auc,
    make_attack,
    register,
    run_audit,
)
from attacks.inputs import Attack, AttackInputs, MissingInputError
from attacks.metrics import roc_auc, roc_curve, summarize, tpr_at_fpr
from attacks.signals import Signals, compute_signals

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackInputs",
    "AuditResult",
    "MissingInputError",
    "Signals",
    "check_specs",
    "compute_signals",
    "loss_attack_auc",
    "make_attack",
    "register",
    "roc_auc",
    "roc_curve",
    "run_audit",
    "summarize",
    "tpr_at_fpr",
]
