"""Binary masks over a model's prunable weights, applied to weights, gradients and optimizer state.

One job: hold the set of active weights and keep everything that touches a pruned weight at
exactly zero. Follows the mask bookkeeping of dynamic sparse training as in RigL (Evci et al.,
ICML 2020) and ITOP (Liu et al., ICML 2021), which SafeCompress (Zhu et al., TSE 2024) builds on;
unlike the official ITOP code, nothing here moves tensors to a hard-coded device.

Prunable = the ``weight`` of every ``nn.Linear`` and ``nn.Conv1d/2d/3d``; biases, norm layers,
embeddings and buffers stay dense.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _as_bool_mask(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"mask {name!r} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype == torch.bool:
        return value
    if value.is_floating_point() or value.dtype in (
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.uint8,
    ):
        if not bool(((value == 0) | (value == 1)).all()):
            raise ValueError(f"mask {name!r} must be boolean (or 0/1 valued), got other values")
        return value != 0
    raise ValueError(
        f"mask {name!r} has unsupported dtype {value.dtype}; allowed: bool or 0/1 numbers"
    )


class MaskSet:
    """Parameter name (as in ``model.named_parameters()``) -> bool tensor of the weight's shape.

    ``True`` = active (kept). ``fired`` records, per layer, every position that was ever active
    (ITOP's "fired" weights); ``prune_and_grow`` updates it, so ``grow="unfired"`` works without
    extra bookkeeping by the caller.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        if not isinstance(masks, Mapping):
            raise ValueError(
                f"masks must be a dict name -> bool tensor, got {type(masks).__name__}"
            )
        if len(masks) == 0:
            raise ValueError("masks is empty: a MaskSet needs at least one prunable weight")
        self.masks: dict[str, torch.Tensor] = {}
        for name, m in masks.items():
            if not isinstance(name, str):
                raise ValueError(f"mask keys must be parameter names (str), got {name!r}")
            m = _as_bool_mask(name, m)
            if m.dim() == 0:
                raise ValueError(f"mask {name!r} is a scalar; masks must have the weight's shape")
            self.masks[name] = m.detach().clone()
        self.fired: dict[str, torch.Tensor] = {n: m.clone() for n, m in self.masks.items()}

    # ------------------------------------------------------------------ discovery
    @staticmethod
    def prunable_names(model: nn.Module) -> list[str]:
        """Names of the weights of Linear/Conv1d/2d/3d modules, in ``named_parameters`` order."""
        ids = {
            id(mod.weight)
            for mod in model.modules()
            if isinstance(mod, PRUNABLE_MODULES)
            and isinstance(getattr(mod, "weight", None), nn.Parameter)
        }
        return [name for name, p in model.named_parameters() if id(p) in ids]

    @classmethod
    def ones(cls, model: nn.Module) -> MaskSet:
        """A dense mask set (every prunable weight active), on the weights' devices."""
        params = dict(model.named_parameters())
        names = cls.prunable_names(model)
        if not names:
            raise ValueError("model has no prunable weights (no nn.Linear / nn.Conv1d/2d/3d)")
        return cls({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})

    # ------------------------------------------------------------------ application
    def _pairs(self, model: nn.Module) -> list[tuple[str, nn.Parameter, torch.Tensor]]:
        params = dict(model.named_parameters())
        out = []
        for name, m in self.masks.items():
            if name not in params:
                raise ValueError(
                    f"mask {name!r} names no parameter of the model; model parameters include "
                    f"{self.prunable_names(model)[:8]}"
                )
            p = params[name]
            if tuple(m.shape) != tuple(p.shape):
                raise ValueError(
                    f"mask shape {tuple(m.shape)} does not match weight {name!r} of shape {tuple(p.shape)}"
                )
            if m.device != p.device:  # follow the model (device comes from tensors)
                m = m.to(p.device)
                self.masks[name] = m
                self.fired[name] = self.fired[name].to(p.device)
            out.append((name, p, m))
        return out

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every masked-out weight in place."""
        for _, p, m in self._pairs(model):
            p.mul_(m)

    @torch.no_grad()
    def apply_to_grads(self, model: nn.Module) -> None:
        """Zero the gradient of every masked-out weight (parameters without ``.grad`` are skipped)."""
        for _, p, m in self._pairs(model):
            if p.grad is not None:
                p.grad.mul_(m)

    @torch.no_grad()
    def apply_to_optimizer(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        """Zero every per-parameter state tensor of weight shape at masked-out positions.

        Covers SGD ``momentum_buffer``, Adam/AdamW ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq`` and
        any other optimizer whose per-weight state has the weight's shape; scalars (``step``) are left.
        """
        for _, p, m in self._pairs(model):
            state = optimizer.state.get(p)
            if not state:
                continue
            for value in state.values():
                if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(p.shape):
                    value.mul_(m.to(value.device))

    # ------------------------------------------------------------------ accounting
    def n_active(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def n_total(self) -> int:
        return int(sum(m.numel() for m in self.masks.values()))

    def density(self) -> float:
        return self.n_active() / self.n_total()

    def layer_n_active(self) -> dict[str, int]:
        return {n: int(m.sum()) for n, m in self.masks.items()}

    def layer_densities(self) -> dict[str, float]:
        return {n: int(m.sum()) / m.numel() for n, m in self.masks.items()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(m.shape) for n, m in self.masks.items()}

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Masks only (CPU bool copies); ``fired`` restarts from the masks on load."""
        return {n: m.detach().cpu().clone() for n, m in self.masks.items()}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, torch.Tensor]) -> MaskSet:
        return cls(d)

    def clone(self) -> MaskSet:
        new = MaskSet(self.masks)
        new.fired = {n: f.clone() for n, f in self.fired.items()}
        return new

    def __repr__(self) -> str:
        return f"MaskSet(n_layers={len(self.masks)}, n_active={self.n_active()}, density={self.density():.4f})"
