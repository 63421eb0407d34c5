"""Grouped candidates: K copies of one sparse MLP trained at once where they are stored.

SafeCompress probes N candidates per mask update (`training.compress`). For MLPs the
candidates live in one `GroupedMLP` (candidate k's weights, masks and weight-shaped
optimizer state are views of slot k of grouped tensors), so a probe is one grouped step,
or, with sparse layers, the active-weights-only kernels of `training.batched.sparse_probe`.
Either equals probing each candidate alone up to float rounding (unit tests check it).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from training.batched.fused import fused_optimizer
from training.batched.grouped import GroupedMLP, can_batch
from training.batched.sparse_probe import CSR_DENSITY, SparseProbe, activation_of
from training.loops import TrainState, make_optimizer, set_lr
from training.recipes import TrainConfig


def can_probe_batched(states: list[TrainState], recipe: TrainConfig) -> bool:
    return recipe.optimizer in ("sgd", "adam") and can_batch([s.model for s in states])


class GroupedCandidates:
    """K MLP candidates stored in one `GroupedMLP`: candidate k's layer i weight is a view of slot k.

    Each candidate is an ordinary `TrainState` (its own model, optimizer and masks, usable by
    `prune_and_grow`, `evaluate` or a sequential probe), but its Linear weights and biases, and the
    weight-shaped tensors of its optimizer state, are views of the grouped parameters and of the
    grouped optimizer's state. `probe` trains all K at once (summed loss, elementwise optimizer),
    which equals probing each alone up to floating-point rounding; a unit test checks it.
    """

    def __init__(self, like: TrainState, k: int, recipe: TrainConfig):
        models = [copy.deepcopy(like.model) for _ in range(k)]
        self.group = GroupedMLP(models)
        self.names = _linear_names(models[0])
        # (grouped param, its K candidate params, transposed?) per grouped param
        self.slots: list[tuple[nn.Parameter, list[nn.Parameter], bool]] = []
        per_model = []
        for k_i, model in enumerate(models):
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            views = []
            for i, lin in enumerate(linears):
                lin.weight = nn.Parameter(self.group.weights[i].detach()[k_i].t())  # (out, in) view
                lin.bias = nn.Parameter(self.group.biases[i].detach()[k_i])
                views.append((lin.weight, lin.bias))
            per_model.append(views)
        for i in range(len(self.names)):
            self.slots.append((self.group.weights[i], [v[i][0] for v in per_model], True))
            self.slots.append((self.group.biases[i], [v[i][1] for v in per_model], False))
        self.optimizer = fused_optimizer(self.group.parameters(), recipe)
        self.sparse: SparseProbe | None = None  # the last sparse probe, while the masks hold
        assert like.masks is not None, "grouped candidates are sparse"
        # masks and fired records: candidate k's are views of slot k of stacked (K, out, in) tensors
        self.mask_stacks = {n: torch.stack([m] * k) for n, m in like.masks.masks.items()}
        self.fired_stacks = {n: torch.stack([f] * k) for n, f in like.masks.fired.items()}
        self.states = []
        for k_i, m in enumerate(models):
            masks = like.masks.clone()
            masks.masks = {n: t[k_i] for n, t in self.mask_stacks.items()}
            masks.fired = {n: t[k_i] for n, t in self.fired_stacks.items()}
            self.states.append(TrainState(m, make_optimizer(m.parameters(), recipe), masks))

    @torch.no_grad()
    def fork(self, src: TrainState) -> list[TrainState]:
        """Every candidate := `src` (same MLP architecture), one broadcast copy per tensor."""
        assert src.masks is not None
        self.sparse = None  # its structure follows the masks, which change now
        linears = [m for m in src.model.modules() if isinstance(m, nn.Linear)]
        src_params = [p for lin in linears for p in (lin.weight, lin.bias)]  # the order of `slots`
        for (gp, params, transpose), sp in zip(self.slots, src_params, strict=True):
            gp.copy_(self._broadcast(sp, gp, transpose))
            src_state = src.optimizer.state.get(sp)
            cand_states = [st.optimizer.state[p] for st, p in zip(self.states, params)]
            gstate = self.optimizer.state[gp]
            for key in [key for key in gstate if not src_state or key not in src_state]:
                del gstate[key]
            for cst in cand_states:
                for key in [key for key in cst if not src_state or key not in src_state]:
                    del cst[key]
            for key, v in (src_state or {}).items():
                if torch.is_tensor(v) and v.shape == sp.shape and v.dim() > 0:
                    buf = gstate.get(key)
                    if not (torch.is_tensor(buf) and buf.shape == gp.shape):
                        buf = gstate[key] = torch.zeros_like(gp)
                    buf.copy_(self._broadcast(v, buf, transpose))
                    for k, cst in enumerate(cand_states):
                        old = cst.get(key)
                        if not (torch.is_tensor(old) and old.data_ptr() == self._slot(buf, k, transpose).data_ptr()):
                            cst[key] = self._slot(buf, k, transpose)
                else:
                    gstate[key] = v.clone() if torch.is_tensor(v) else v
                    for cst in cand_states:
                        cst[key] = v.clone() if torch.is_tensor(v) else v
        for n, stack in self.mask_stacks.items():
            stack.copy_(src.masks.masks[n].unsqueeze(0).expand_as(stack))
            self.fired_stacks[n].copy_(src.masks.fired[n].unsqueeze(0).expand_as(stack))
        return self.states

    @staticmethod
    def _broadcast(t: torch.Tensor, like: torch.Tensor, transpose: bool) -> torch.Tensor:
        return (t.t() if transpose else t).unsqueeze(0).expand_as(like)

    def _slot(self, gt: torch.Tensor, k: int, transpose: bool) -> torch.Tensor:
        return gt[k].t() if transpose else gt[k]

    @torch.no_grad()
    def _gather_optimizer_state(self) -> None:
        """Point the grouped optimizer's state at the candidates' (weight-shaped tensors shared)."""
        for gp, params, transpose in self.slots:
            states = [st.optimizer.state.get(p, {}) for st, p in zip(self.states, params)]
            if not states[0]:
                self.optimizer.state.pop(gp, None)
                continue
            gstate = self.optimizer.state[gp]
            for key, v in states[0].items():
                if torch.is_tensor(v) and v.dim() > 0:
                    buf = gstate.get(key)
                    if not (torch.is_tensor(buf) and buf.shape == gp.shape):
                        buf = gstate[key] = torch.zeros_like(gp)
                    for k, st in enumerate(states):
                        view = self._slot(buf, k, transpose)
                        if st[key].data_ptr() != view.data_ptr():
                            view.copy_(st[key])
                            st[key] = view
                else:  # scalars (Adam's step) are equal across candidates forked from one state
                    gstate[key] = v.clone() if torch.is_tensor(v) else v

    @torch.no_grad()
    def _scatter_optimizer_state(self) -> None:
        for gp, params, transpose in self.slots:
            gstate = self.optimizer.state.get(gp, {})
            for k, (st, p) in enumerate(zip(self.states, params)):
                cstate = st.optimizer.state[p]
                for key, v in gstate.items():
                    if torch.is_tensor(v) and v.dim() > 0:
                        view = self._slot(v, k, transpose)
                        old = cstate.get(key)
                        if not (torch.is_tensor(old) and old.data_ptr() == view.data_ptr()):
                            cstate[key] = view
                    else:
                        cstate[key] = v.clone() if torch.is_tensor(v) else v

    def probe(self, batches, x, y, recipe: TrainConfig, step: int, total: int) -> list[bool]:
        """Train every candidate on `batches`; returns which kept a finite loss.

        With a layer sparser than `CSR_DENSITY` and a known activation, `SparseProbe` trains
        the candidates' active weights only (CSR kernels, ~2x faster at 5% density); otherwise
        one grouped dense step trains all K. Both equal probing each candidate alone with
        `training.compress.steps.masked_step`, up to float rounding.
        """
        act = activation_of(self.states[0].model)
        dens = [float(self.mask_stacks[n][0].float().mean()) for n in self.names]
        if act is not False and min(dens) < CSR_DENSITY:
            self.sparse = SparseProbe(self, act)
            return self.sparse.run(batches, x, y, recipe, step, total)
        names, opt, grouped = self.names, self.optimizer, self.group
        masks = [self.mask_stacks[n].transpose(1, 2).float().contiguous() for n in names]  # (K, in, out)
        self._gather_optimizer_state()
        k_n = len(self.states)
        ok = torch.ones(k_n, dtype=torch.bool)
        for j, idx in enumerate(batches):
            set_lr(opt, recipe, step + j, total)
            opt.zero_grad(set_to_none=True)
            xb = x[idx].flatten(1).unsqueeze(0).expand(k_n, -1, -1)
            logits = grouped(xb)  # (K, b, C)
            per = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y[idx].repeat(k_n), reduction="none"
            ).view(k_n, -1).mean(1)
            ok &= torch.isfinite(per)
            torch.where(ok, per, torch.zeros_like(per)).sum().backward()
            for w, m in zip(grouped.weights, masks):
                w.grad.mul_(m)
            # no masking of weights and optimizer state after the step: inactive weights and
            # their state are exactly 0 when the probe starts (prune_and_grow, _masked_step), and
            # SGD/Adam map a zero gradient, zero weight and zero state to zero again
            opt.step()
        self._scatter_optimizer_state()
        return ok.tolist()

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every candidate's logits on x: (n, ...) -> (K, n, C).

        After a sparse probe, its block-diagonal CSR layers are reused (~3x faster than the
        dense product at 5% density; same logits up to float rounding).
        """
        if self.sparse is not None:
            return self.sparse.logits(x)
        return self.group(x.unsqueeze(0).expand(len(self.states), *x.shape))


def _linear_names(model: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)]
