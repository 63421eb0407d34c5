"""The candidates' probe on active weights only: block-diagonal CSR kernels, hand-written backward.

At 5% density ~95% of a grouped dense step multiplies zeros. `SparseProbe` trains the
active entries of K candidates (`training.batched.probes.GroupedCandidates`) as one
block-diagonal sparse matrix per layer, ~2x faster than the grouped dense step.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from training.batched.fused import fused_optimizer
from training.batched.grouped import GroupedMLP
from training.loops import set_lr
from training.recipes import TrainConfig


class GroupedCandidates(Protocol):
    """What the probe reads of `training.batched.probes.GroupedCandidates` (which imports this
    module, so this one never imports it): the grouped model, masks, states and optimizer."""

    group: GroupedMLP
    names: list[str]
    states: list[Any]
    mask_stacks: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer

    def _gather_optimizer_state(self) -> None: ...

    def _scatter_optimizer_state(self) -> None: ...


CSR_DENSITY = 0.15  # candidate layers sparser than this multiply as CSR (probe and tests)


def activation_of(model: nn.Module) -> nn.Module | None | Literal[False]:
    """The MLP's hidden activation module, None without one, False when `SparseProbe` lacks it."""
    acts = [m for m in model.modules() if type(m) in (nn.ReLU, nn.Tanh, nn.GELU)]
    others = [m for m in model.modules() if not isinstance(m, (nn.Linear, nn.Flatten, nn.Sequential))]
    if len(others) != len(acts) + 1:  # the model itself, then activations only
        return False
    return acts[0] if acts else None


class SparseProbe:
    """The probe of `GroupedCandidates` on active weights only, with a hand-written backward.

    Layer i of all K candidates is one block-diagonal (K out, K in) matrix whose parameters are
    the active entries (a vector in CSR order); activations are (K features, batch). Layers
    sparser than `CSR_DENSITY` multiply as CSR, and their weight gradient is the product
    sampled at the active entries (`torch.sparse.sampled_addmm`), so nothing is computed for
    the ~95% inactive weights; denser layers multiply as batched dense blocks. The optimizer
    (same recipe, fused) steps the active entries, the biases and their state, gathered from
    and scattered back to the grouped tensors that the candidates' weights and state view.
    """

    def __init__(self, group: GroupedCandidates, act: nn.Module | None):
        self.group, self.act = group, act
        self.k = len(group.states)
        self.layers: list[dict[str, Any]] = []
        for i, name in enumerate(group.names):
            gw = group.group.weights[i].detach()  # (K, in, out)
            gb = group.group.biases[i].detach()  # (K, out)
            masks = group.mask_stacks[name]  # (K, out, in)
            k, n_out, n_in = masks.shape
            kk, r, c = masks.nonzero().unbind(1)  # row-major: the CSR order of the block matrix
            rows, cols = kk * n_out + r, kk * n_in + c
            lay: dict[str, Any] = {
                "at": (kk * n_in + c) * n_out + r,  # the active entries of flat (K, in, out) tensors
                "kk": kk, "n_out": n_out, "n_in": n_in,
                "csr": kk.numel() < CSR_DENSITY * masks.numel(),
                "v": nn.Parameter(gw.reshape(-1)[(kk * n_in + c) * n_out + r]),
                "b": nn.Parameter(gb.reshape(-1).clone()),  # (K out,)
            }
            if lay["csr"]:
                size = (k * n_out, k * n_in)
                lay["crow"] = _crow(rows, size[0])
                lay["col"] = cols
                lay["tperm"] = torch.argsort(cols * size[0] + rows)  # CSR order of the transpose
                lay["crow_t"] = _crow(cols, size[1])
                lay["col_t"] = rows[lay["tperm"]]
                lay["size"] = size
                lay["pattern"] = _csr(lay["crow"], cols, torch.zeros_like(lay["v"]), size)  # sampled dL/dW
            else:
                lay["flat"] = (kk * n_out + r) * n_in + c  # into a dense (K, out, in) block stack
            self.layers.append(lay)
        self.params = [p for lay in self.layers for p in (lay["v"], lay["b"])]

    def _sources(self):
        """Per parameter: its grouped tensor and where its entries sit there (None: everywhere)."""
        for i, lay in enumerate(self.layers):
            yield self.group.group.weights[i], lay["at"]
            yield self.group.group.biases[i], None

    def run(self, batches, x, y, recipe: TrainConfig, step: int, total: int) -> list[bool]:
        group = self.group
        group._gather_optimizer_state()  # the grouped optimizer's state holds every candidate's
        opt = fused_optimizer(self.params, recipe)
        for p, (gp, at) in zip(self.params, self._sources()):
            gstate = group.optimizer.state.get(gp)
            if gstate:
                opt.state[p] = {
                    key: ((v.reshape(-1)[at] if at is not None else v.reshape(-1).clone())
                          if torch.is_tensor(v) and v.shape == gp.shape
                          else v.clone() if torch.is_tensor(v) else v)
                    for key, v in gstate.items()
                }
        ok = torch.ones(self.k, dtype=torch.bool)
        for j, idx in enumerate(batches):
            set_lr(opt, recipe, step + j, total)
            a0 = x[idx].flatten(1).t().repeat(self.k, 1)  # (K in, b)
            ok &= self._step(a0, y[idx])
            if not bool(ok.all()):  # rejected candidates get zero gradients (their loss is dropped)
                for lay in self.layers:
                    lay["v"].grad.masked_fill_(~ok[lay["kk"]], 0)
                    lay["b"].grad.view(self.k, -1).masked_fill_(~ok.unsqueeze(1), 0)
            opt.step()
        with torch.no_grad():
            for p, (gp, at) in zip(self.params, self._sources()):
                self._put(gp, at, p)
                gstate = group.optimizer.state[gp]
                for key, v in opt.state.get(p, {}).items():
                    if torch.is_tensor(v) and v.dim() > 0 and v.shape == p.shape:
                        if not (torch.is_tensor(gstate.get(key)) and gstate[key].shape == gp.shape):
                            gstate[key] = torch.zeros_like(gp)  # inactive entries stay 0
                        self._put(gstate[key], at, v)
                    else:
                        gstate[key] = v.clone() if torch.is_tensor(v) else v
        group._scatter_optimizer_state()
        return ok.tolist()

    @staticmethod
    def _put(dst: torch.Tensor, at: torch.Tensor | None, v: torch.Tensor) -> None:
        """Write `v` into the contiguous grouped tensor `dst` at flat positions `at` (None: all)."""
        if at is None:
            dst.view(-1).copy_(v)
        else:
            dst.view(-1).index_copy_(0, at, v.detach())

    def _weight(self, lay: dict[str, Any]) -> torch.Tensor:
        """Layer weights: the block-diagonal CSR matrix, or dense (K, out, in) blocks."""
        v = lay["v"].detach()
        if lay["csr"]:
            return _csr(lay["crow"], lay["col"], v, lay["size"])
        w = torch.zeros(self.k * lay["n_out"] * lay["n_in"], dtype=v.dtype, device=v.device)
        w[lay["flat"]] = v
        return w.view(self.k, lay["n_out"], lay["n_in"])

    def _forward(self, a0: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """(K in, b) inputs -> layer inputs, pre-activations (K out, b) and weights."""
        k, b = self.k, a0.shape[1]
        acts, pre, ws = [a0], [], []
        last = len(self.layers) - 1
        for i, lay in enumerate(self.layers):
            w = self._weight(lay)
            h = acts[-1]
            bias = lay["b"].detach()
            if lay["csr"]:  # addmm: torch.sparse.mm takes a ~6x slower kernel for a few hundred columns
                z = torch.addmm(bias.unsqueeze(1), w, h)  # (K out, b)
            else:
                z = torch.baddbmm(bias.view(k, -1, 1), w, h.view(k, lay["n_in"], b)).view(-1, b)
            ws.append(w)
            pre.append(z)
            if i < last:
                acts.append(self._act(z))
        return acts, pre, ws

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Every candidate's logits on x with the grouped weights: (n, ...) -> (K, n, C)."""
        for i, lay in enumerate(self.layers):  # the grouped tensors are the truth
            lay["v"].copy_(self.group.group.weights[i].reshape(-1)[lay["at"]])
            lay["b"].copy_(self.group.group.biases[i].reshape(-1))
        out = []
        for i in range(0, len(x), 128):  # chunks keep the (K features, rows) activations in cache
            xb = x[i : i + 128]
            _, pre, _ = self._forward(xb.flatten(1).t().repeat(self.k, 1))
            out.append(pre[-1].view(self.k, -1, len(xb)).transpose(1, 2))
        return torch.cat(out, 1)

    @torch.no_grad()
    def _step(self, a0: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward and backward of all candidates; sets the parameters' .grad. Returns (K,) finite."""
        k, b = self.k, a0.shape[1]
        acts, pre, ws = self._forward(a0)
        last = len(self.layers) - 1
        logits = pre[-1].view(k, -1, b)  # (K, C, b); the mean cross-entropy is finite iff they are
        finite = torch.isfinite(logits).flatten(1).all(1)
        dz = torch.softmax(logits, 1)  # d(mean CE)/dlogits = (softmax - one-hot) / b
        dz[:, y, torch.arange(b, device=y.device)] -= 1.0
        dz = dz.div_(b).view(-1, b)
        for i in range(last, -1, -1):
            lay, a = self.layers[i], acts[i]
            lay["b"].grad = dz.sum(1)
            n_out, n_in = lay["n_out"], lay["n_in"]
            if lay["csr"]:  # dL/dW at the active entries only
                lay["v"].grad = torch.sparse.sampled_addmm(lay["pattern"], dz, a.t(), beta=0.0).values()
            else:
                g = torch.bmm(dz.view(k, n_out, b), a.view(k, n_in, b).transpose(1, 2))  # (K, out, in)
                lay["v"].grad = g.reshape(-1)[lay["flat"]]
            if i > 0:
                if lay["csr"]:
                    wt = _csr(lay["crow_t"], lay["col_t"], lay["v"].detach()[lay["tperm"]], lay["size"][::-1])
                    da = torch.sparse.mm(wt, dz)
                else:
                    da = torch.bmm(ws[i].transpose(1, 2), dz.view(k, n_out, b)).view(-1, b)
                dz = self._act_backward(da, pre[i - 1], acts[i])
        return finite

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        if self.act is None:
            return z
        if isinstance(self.act, nn.GELU):
            return F.gelu(z, approximate=self.act.approximate)
        return torch.relu(z) if isinstance(self.act, nn.ReLU) else torch.tanh(z)

    def _act_backward(self, grad: torch.Tensor, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The gradient w.r.t. z of out = act(z), as autograd computes it."""
        if self.act is None:
            return grad
        if isinstance(self.act, nn.ReLU):
            return torch.ops.aten.threshold_backward(grad, out, 0.0)
        if isinstance(self.act, nn.Tanh):
            return torch.ops.aten.tanh_backward(grad, out)
        return torch.ops.aten.gelu_backward(grad, z, approximate=self.act.approximate)


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """A CSR matrix from valid indices (built from a mask, so the invariant checks are skipped)."""
    with warnings.catch_warnings():  # torch calls CSR support "beta" on every construction
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, size=size, check_invariants=False)


def _crow(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row pointers of sorted row indices."""
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=n_rows), 0, out=crow[1:])
    return crow
