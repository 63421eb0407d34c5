"""SafeCompress's mask update as a choice: N candidates, probed, tested and selected.

Zhu et al. (TSE 2024 / ASE 2022), steps 1-5 of the loop: (1) train the simulated
attacker(s) against the current model (`SafetyTest`), (2) make N candidates from the
same weights, each with its own prune/grow strategy and regrow seed, (3) train each for
`probe_steps` (batched across candidates, `training.batched`), (4) run the performance
test (validation accuracy) and the safety test (the attacker's AUC on held-out members
vs non-members), (5) continue from the candidate the selection rule picks
(`training.selection`). Every candidate's numbers become rows of `candidates.csv`.

Candidates may also differ in defence strength (a strategy's `distill_weight`,
`distill_temperature`, `relaxloss_alpha`): each probes with its own loss, and the model
trains on with the chosen candidate's until the next update, so the safety test chooses
between defences, not only between regrowth draws.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

import sparse
from training.batched import GroupedCandidates, can_probe_batched
from training.compress.method import CompressJob
from training.compress.safety import SafetyTest
from training.compress.steps import Defences, masked_step
from training.loops import NonFiniteLossError, TrainState, evaluate, set_lr
from training.recipes import StrategyConfig, TrainConfig
from training.seeds import generator
from training.selection import CandidateTests, accuracy_standard_error, auc_standard_error, select


def strategy_name(prune: str, grow: str, s: StrategyConfig | None = None) -> str:
    """`prune/grow`, plus the defence a strategy sets (e.g. `magnitude/random_distill0.5_relaxloss1`:
    characters MLflow metric names, `wins_<strategy>`, allow)."""
    name = f"{prune}/{grow}"
    if s is not None:
        for label, v in (("distill", s.distill_weight), ("T", s.distill_temperature), ("relaxloss", s.relaxloss_alpha)):
            if v is not None:
                name += f"_{label}{v:g}"
    return name


def _masks(state: TrainState) -> sparse.MaskSet:
    """A candidate's masks: candidate selection updates sparse models only."""
    if state.masks is None:
        raise ValueError("candidate selection needs sparse candidates; this one is dense (no masks)")
    return state.masks


class CandidatePool:
    """The N candidates of every mask update, allocated once and overwritten by each `fork`.

    A deep copy of model and optimizer per candidate per update cost about as much as the probe
    itself; `fork` copies the current state into the same tensors instead. With `batched` and an
    MLP trained by SGD/Adam, the candidates live in one `GroupedCandidates` (weights and optimizer
    state are views of grouped tensors), so the batched probe trains them where they are.
    """

    def __init__(self, like: TrainState, n: int, recipe: TrainConfig, batched: bool):
        self.grouped: GroupedCandidates | None = None
        if batched and can_probe_batched([like], recipe):
            self.grouped = GroupedCandidates(like, n, recipe)
            self.states = self.grouped.states
        else:
            self.states = [like.fork(recipe) for _ in range(n)]

    def fork(self, state: TrainState) -> list[TrainState]:
        if self.grouped is not None:
            return self.grouped.fork(state)
        for cand in self.states:
            cand.copy_from(state)
        return self.states


class CandidateSelection:
    """The candidate updates of one training run: its safety test, candidate pool and data."""

    def __init__(
        self, job: CompressJob, defences: Defences, total: int,
        train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
    ):
        self.job, self.c, self.defences, self.total = job, job.c, defences, total
        self.train, self.val = train, val
        self.safety = SafetyTest(job.data, job.c, job.seed)
        self.pool: CandidatePool | None = None  # allocated at the first mask update

    def update(
        self, state: TrainState, ratio: float, update: int, grads: dict[str, torch.Tensor] | None, batches, step: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Make N candidates, probe, test and select one; `state` becomes the winner (in place).

        Returns the table rows and the number of probe steps taken.
        """
        c, seed, recipe, safety = self.c, self.job.seed, self.job.recipe, self.safety
        if self.pool is None:
            self.pool = CandidatePool(state, c.n_candidates, recipe, self.job.batched_probes)
        pool = self.pool
        safety.fit(state.model, update)
        probe_batches = [next(batches) for _ in range(c.probe_steps)]
        cands = pool.fork(state)
        chosen = [c.strategies[i % len(c.strategies)] for i in range(len(cands))]
        criteria = [(s.prune, s.grow) for s in chosen]
        strategies = [strategy_name(s.prune, s.grow, s) for s in chosen]
        # equal to prune_and_grow on each candidate; candidates sharing a prune criterion share its ranking
        sparse.prune_and_grow_many(
            [cand.model for cand in cands], [_masks(cand) for cand in cands], ratio, criteria,
            [generator(seed, "update", update, "candidate", i) for i in range(len(cands))],
            grads=grads, optimizers=[cand.optimizer for cand in cands],
        )
        status = self._probe(pool, cands, probe_batches, step)
        acc, risk = self._test(pool, cands, status)
        return self._select(state, cands, strategies, acc, risk, status, ratio, update, step), c.probe_steps

    def _probe(self, pool: CandidatePool, cands: list[TrainState], probe_batches, step: int) -> list[str]:
        """Train every candidate on the probe batches; returns each one's status."""
        x, y = self.train
        recipe, defences = self.job.recipe, self.defences
        if pool.grouped is not None and all(a.is_plain for a in defences.arms):
            ok = pool.grouped.probe(probe_batches, x, y, recipe, step, self.total)
            return ["ok" if o else "rejected: non-finite loss" for o in ok]
        status = ["ok"] * self.c.n_candidates
        for i, cand in enumerate(cands):
            try:
                for j, idx in enumerate(probe_batches):
                    set_lr(cand.optimizer, recipe, step + j, self.total)
                    masked_step(cand, x[idx], y[idx], defences.arm(i))
            except NonFiniteLossError:
                status[i] = "rejected: non-finite loss"
        return status

    def _test(self, pool: CandidatePool, cands: list[TrainState], status: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate's performance test (val accuracy) and safety test (risk)."""
        xv, yv = self.val
        safety, n = self.safety, self.c.n_candidates
        acc, risk = np.full(n, np.nan), np.full(n, np.nan)
        if pool.grouped is not None and not safety.needs_grads:
            # one grouped forward pass for every candidate's performance and safety test
            logits = pool.grouped.logits(torch.cat([xv, safety.holdout_x]))  # (K, n_val + 2 n_hold, C)
            acc[:] = (logits[:, : len(yv)].argmax(2) == yv).float().mean(1).numpy()
            risk[:] = safety.risks_from_logits(logits[:, len(yv) :])
        else:
            for i, cand in enumerate(cands):
                if status[i] == "ok":
                    _, acc[i] = evaluate(cand.model, xv, yv)
                    risk[i] = safety.risk(cand.model)
        return acc, risk

    def _select(
        self, state: TrainState, cands: list[TrainState], strategies: list[str], acc: np.ndarray, risk: np.ndarray,
        status: list[str], ratio: float, update: int, step: int,
    ) -> list[dict[str, Any]]:
        c, n_val, n_hold = self.c, len(self.val[1]), self.safety.n_hold
        for i in range(c.n_candidates):
            if status[i] != "ok":
                acc[i] = risk[i] = np.nan
            elif not (math.isfinite(acc[i]) and math.isfinite(risk[i])):
                status[i] = "rejected: non-finite test result"
        tests = CandidateTests(
            acc, risk,
            np.array([accuracy_standard_error(a, n_val) for a in acc]),
            np.array([auc_standard_error(r, n_hold, n_hold) for r in risk]),
        )
        if not tests.valid.any():
            raise NonFiniteLossError(
                f"all {c.n_candidates} candidates at mask update {update} were rejected "
                "(non-finite loss or test result); lower train.lr"
            )
        sel = c.selection
        choice = select(sel.rule, tests, lam=sel.lam, delta=sel.delta, noise_floor=sel.noise_floor, z=sel.z)
        rows = [
            {"update": update, "step": step, "candidate": i, "strategy": strategies[i], "regrowth_ratio": ratio,
             "accuracy": acc[i], "risk": risk[i], "accuracy_se": tests.accuracy_se[i], "risk_se": tests.risk_se[i],
             "score": choice.scores[i], "status": status[i], "chosen": i == choice.index,
             "reason": choice.reason if i == choice.index else ""}
            for i in range(c.n_candidates)
        ]
        state.copy_from(cands[choice.index])
        self.defences.choose(choice.index)  # train on with the chosen candidate's defence
        return rows
