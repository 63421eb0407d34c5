"""Checks on what a user brings (issue 24), run by `pipeline.validation.validate_data` once the
data are loaded and before any training, store or tracked run: their model class (built once on
the data's shape, its adapter checked, and for DP-SGD its modules), and their checkpoint (read
and loaded into that model)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from torch import nn

from training import model_adapter
from training.checkpoints import load_into
from training.compress import get_method

log = logging.getLogger(__name__)


def check_user_inputs(
    model_cfg: dict[str, Any], method: str, checkpoint: Optional[Path], n_canaries: int, bundle: Any,
    build: Callable[[], nn.Module],
) -> None:
    """Raise a ValueError naming the problem with the user's model class or checkpoint (`build`
    makes the configured model for the loaded data `bundle`)."""
    target = str(model_cfg.get("_target_", ""))
    user_class = model_adapter.is_user_model(target) or model_cfg.get(model_adapter.HEAD_KEY) is not None
    if not user_class and checkpoint is None:
        return
    model = build()
    if user_class:
        model_adapter.check_adapter(model, bundle.dataset.x[:4].to(next(model.parameters()).device), target)
        if get_method(method).differentially_private:
            bad = model_adapter.dp_unsupported(model_adapter.unwrap(model))
            if bad:
                raise ValueError(f"compress={method} cannot train model {target!r}: Opacus cannot bound the per-example "
                                 f"gradients of its module(s) {bad}; replace them (e.g. BatchNorm by GroupNorm) or "
                                 "use another method")
    if checkpoint is not None:
        load_into(model, checkpoint)
        if n_canaries:
            raise ValueError("dataset.canaries plants records into the members, but teacher.checkpoint is a model "
                             "trained elsewhere that never saw them; set dataset.canaries=0")
        if bundle.dataset.membership is None:
            log.warning("teacher.checkpoint without user membership: the audit's members are the protocol's seeded "
                        "train split, which your model may not have trained on; give dataset.member_column or "
                        "dataset.members_file/non_members_file (dataset=files) to audit its real members")
