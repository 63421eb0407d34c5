"""The sparse training loop shared by oneshot, gmp, dst, dst_adv and safecompress.

Masks start at the method's initial density (ERK/uniform random, or the teacher's
weights magnitude-pruned), follow the density schedule (Zhu & Gupta 2017) and, every
`update_every` steps, prune and regrow a fraction r_t of active weights (SET/RigL,
Evci et al. 2020). SafeCompress makes this update a choice among candidates
(`training.compress.candidates`). A method says how it differs through the hooks of
`SparseTrainingMethod`; the loop never branches on a method's name.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

import sparse
from training import interrupt
from training.adversarial import Adversary
from training.compress.candidates import CandidateSelection, strategy_name
from training.compress.method import CompressJob, CompressMethod, Trained
from training.compress.steps import Defences, Losses, endless_batches, masked_step
from training.loops import (
    DivergenceCheck,
    TrainState,
    chance_accuracy,
    evaluate,
    make_optimizer,
    model_device,
    set_lr,
    steps_per_epoch,
)
from training.models import feature_model
from training.progress import Progress
from training.recipes import CompressConfig
from training.seeds import derive_seed, generator


class SparseTrainingMethod(CompressMethod):
    """A method trained by `train_sparse`; the hooks say how its masks start and move, what it
    trains on and with which loss."""

    updates_masks = True  # mask updates every `update_every` steps (one-shot: the mask stays fixed)
    uses_shared_step = True

    def start(self, c: CompressConfig) -> tuple[float, str]:
        """Initial density and the density schedule's kind."""
        ds = c.density_schedule
        return sparse.density_at(ds.kind, 0.0, ds.start, c.density, ds.begin, ds.end), ds.kind

    def adversarial(self, c: CompressConfig) -> bool:
        """Whether adversarial regularization (Nasr et al. CCS'18) is on."""
        return c.adversarial.enabled

    def uses_candidates(self, c: CompressConfig) -> bool:
        """Whether a mask update chooses among candidates by the safety test."""
        return False

    def training_data(self, job: CompressJob) -> tuple[torch.Tensor, torch.Tensor]:
        """What a step's batches are drawn from: inputs and their targets (the members' labels)."""
        return job.data.part("train")

    def losses(self, job: CompressJob, state: TrainState) -> Losses:
        """The classifier's loss (the base of every candidate strategy's, `Defences`)."""
        return _losses(self, job, state)

    def train(self, job: CompressJob) -> Trained:
        return train_sparse(self, job)


def initial_state(method: SparseTrainingMethod, job: CompressJob, d0: float) -> TrainState:
    c = job.c
    if method.starts_from_dense(c):
        model = job.dense_model()
        masks = sparse.magnitude_masks(model, d0, scope="layer") if d0 < 1.0 else full_masks(model)
    else:
        model = job.new_model("compress")
        masks = sparse.random_masks(model, d0, c.init, generator(job.seed, "compress", "mask"))
        rescale_to_sparse_fan_in(model, masks)
    masks.apply(model)
    return TrainState(model, make_optimizer(model.parameters(), job.recipe), masks)


@torch.no_grad()
def rescale_to_sparse_fan_in(model: nn.Module, masks: sparse.MaskSet) -> None:
    """Scale each layer's kept initial weights by 1/sqrt(layer density).

    A dense init drawn for fan-in n leaves a layer at density d with effective
    fan-in d·n, shrinking activations by sqrt(d) per layer; without normalization
    layers a 5%-dense MLP then starts near a constant output and trains slowly.
    Rescaling restores the dense init's variance (sparsity-aware init, Evci et
    al., "Gradient Flow in Sparse Neural Networks", AAAI 2022).
    """
    params = dict(model.named_parameters())
    for name, mask in masks.masks.items():
        d = float(mask.float().mean())
        if d > 0:
            params[name].mul_(1.0 / math.sqrt(d))


def full_masks(model: nn.Module) -> sparse.MaskSet:
    params = dict(model.named_parameters())
    return sparse.MaskSet({n: torch.ones_like(params[n], dtype=torch.bool) for n in sparse.MaskSet.prunable_names(model)})


def _losses(method: SparseTrainingMethod, job: CompressJob, state: TrainState) -> Losses:
    """The classifier's loss: RelaxLoss, distillation and the adversary as configured."""
    c, data, seed = job.c, job.data, job.seed
    losses = Losses()
    losses.relax_upper = c.relaxloss.upper  # also for candidate strategies that turn RelaxLoss on
    if c.relaxloss.enabled:
        losses.relax_alpha = c.relaxloss.alpha
    if c.distill.enabled or any((s.distill_weight or 0) > 0 for s in c.strategies):
        losses.teacher = job.dense_model()
        losses.temperature = c.distill.temperature
        losses.distill_weight = c.distill.weight if c.distill.enabled else 0.0
    if method.adversarial(c):
        x, y = data.part("train")
        feats = feature_model(state.model).features(x[:1].to(model_device(state.model))).shape[1]
        rng = np.random.default_rng(derive_seed(seed, "adversary_reference"))
        ref = torch.from_numpy(np.sort(rng.permutation(data.splits.val)[: max(2, len(data.splits.val) // 2)]))
        losses.adversary = Adversary(
            c.adversarial.kind, data.dataset.n_classes, feats, data.dataset.x[ref], data.dataset.y[ref],
            lam=c.adversarial.lam, lr=c.adversarial.lr, width_scale=c.adversarial.width_scale,
            seed=derive_seed(seed, "adversary") % (2**31),
        )
        losses.attacker_steps = c.adversarial.attacker_steps
        losses.warmup_steps = c.adversarial.attacker_warmup_steps
        # warm-up draws from every member, as the min-max steps do (the training batches): the
        # defence protects all of train, audit members included (training/adversarial.py, issue 18)
        losses.members = (x, y)
    return losses


def train_sparse(method: SparseTrainingMethod, job: CompressJob) -> Trained:
    """Train `job`'s model with masks: schedule, mask updates, optional candidates; see the module."""
    c, recipe, data, seed = job.c, job.recipe, job.data, job.seed
    x, y = method.training_data(job)
    xv, yv = data.part("val")
    ds = c.density_schedule
    d0, schedule_kind = method.start(c)
    state = initial_state(method, job, d0)
    spe = steps_per_epoch(len(y), recipe.batch_size)
    total = recipe.epochs * spe
    last_update_step = int(c.stop_fraction * total)
    batches = endless_batches(len(y), recipe.batch_size, generator(seed, "compress", "batches"))
    needs_grads = any("grads" in sparse.criterion_needs(s.prune, s.grow) for s in c.strategies)
    losses = method.losses(job, state)
    use_adv = losses.adversary is not None
    defences = Defences.of(losses, c.strategies)
    selection = (
        CandidateSelection(job, defences, total, (x, y), (xv, yv)) if method.uses_candidates(c) else None
    )
    warmup_step = int(c.adversarial.warmup_fraction * total)
    aug_gen = generator(seed, "compress", "augment")  # probes train on un-augmented batches
    rows: list[dict[str, Any]] = []
    history: list[dict[str, float]] = []
    step, update, epoch_losses = 0, 0, []
    last_grads = None
    n_classes = data.dataset.n_classes
    start_acc = evaluate(state.model, xv, yv)[1] if method.starts_from_dense(c) else None
    diverged = DivergenceCheck(n_classes, f"compress[{c.method}]", chance_accuracy(yv, n_classes), start_acc)
    bar = Progress(total, f"compress[{c.method}]", "step", job.progress, leave=False)
    while step < total:
        interrupt.check()
        idx = next(batches)
        set_lr(state.optimizer, recipe, step, total)
        defences.at(epoch=step // spe, adversary_active=use_adv and step >= warmup_step)
        is_update = (
            method.updates_masks
            and (step + 1) % c.update_every == 0
            and (step + 1) <= last_update_step
            and (step + 1) < total
        )
        xb = data.dataset.augment(x[idx], aug_gen) if data.dataset.augment is not None else x[idx]
        loss, grads = masked_step(state, xb, y[idx], defences.active, keep_grads=needs_grads and is_update)
        last_grads = grads if grads is not None else last_grads
        diverged.step(loss)
        epoch_losses.append(loss)
        step += 1
        bar.update(1)
        if is_update:
            update += 1
            progress = step / total
            assert state.masks is not None
            target = sparse.density_at(schedule_kind, progress, ds.start, c.density, ds.begin, ds.end)
            if abs(target - state.masks.density()) * state.masks.n_total() >= 1:
                sparse.resize(
                    state.model, state.masks, target, prune="magnitude", grow="random",
                    generator=generator(seed, "resize", update),
                )
                state.masks.apply_to_optimizer(state.optimizer, state.model)
            if method.regrows:  # gmp only resizes; the epoch-end block below runs either way
                ratio = sparse.regrowth_ratio_at(
                    c.regrowth.kind, min(step / max(last_update_step, 1), 1.0), c.regrowth.start, c.regrowth.end
                )
                if selection is not None:
                    new_rows, used = selection.update(state, ratio, update, last_grads, batches, step)
                    rows.extend(new_rows)
                    step += used
                    bar.update(used)
                else:
                    rows.append(_single_update(job, state, ratio, update, last_grads, step))
        if step // spe > len(history) or step >= total:  # probe steps may jump over an epoch's last step
            _, val_acc = evaluate(state.model, xv, yv)
            assert state.masks is not None
            history.append(
                {"epoch": len(history), "loss": float(np.mean(epoch_losses)), "val_accuracy": val_acc,
                 "density": state.masks.density()}
            )
            diverged.epoch(len(history) - 1, history[-1]["loss"], val_acc)
            epoch_losses = []
    bar.close()
    assert state.masks is not None
    if abs(state.masks.density() - c.density) * state.masks.n_total() >= 1:
        # a schedule whose window ends after the last mask update: finish it with a magnitude prune
        sparse.resize(state.model, state.masks, c.density, prune="magnitude", grow="random",
                      generator=generator(seed, "resize", "final"))
    state.masks.apply(state.model)
    return Trained(state.model, state.masks, history, pd.DataFrame(rows))


def _single_update(job: CompressJob, state: TrainState, ratio: float, update: int, grads, step: int) -> dict[str, Any]:
    """Plain DST's mask update: the first strategy, no candidates, no safety test."""
    strat = job.c.strategies[0]
    assert state.masks is not None
    sparse.prune_and_grow(
        state.model, state.masks, ratio, strat.prune, strat.grow,
        generator=generator(job.seed, "update", update, "candidate", 0),
        grads=grads, optimizer=state.optimizer,
    )
    return {"update": update, "step": step, "candidate": 0, "strategy": strategy_name(strat.prune, strat.grow, strat),
            "regrowth_ratio": ratio, "accuracy": math.nan, "risk": math.nan, "score": math.nan,
            "status": "ok", "chosen": True, "reason": "single candidate (no safety test)"}
