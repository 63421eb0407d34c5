"""Membership-inference attacks and audit metrics, as plain torch/numpy code.

Public surface: `Signals`/`compute_signals` (per-model signals), `AttackInputs` (what the
attacker knows), the registry `ATTACKS`/`make_attack` (`attacks.registry`), `run_audit` ->
`AuditResult`, the metrics (`roc_auc`, `tpr_at_fpr`, `summarize`) and `loss_attack_auc` (a
model's loss-attack AUC in one call; the pipeline's in-loop safety test is
`training.compress.safety`).
"""

from attacks.base import AuditResult, loss_attack_auc, run_audit
from attacks.inputs import Attack, AttackInputs, MissingInputError
from attacks.metrics import roc_auc, roc_curve, summarize, tpr_at_fpr
from attacks.registry import ATTACKS, check_specs, make_attack, register
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
