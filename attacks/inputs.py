"""What an attacker knows, in one dataclass, and the interface every attack implements.

An attack is fitted on what the attacker knows (`AttackInputs`) and returns one membership
score per audit point, higher meaning "member" (the convention of Carlini et al., S&P'22,
and of ML Privacy Meter's array-level attacks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, runtime_checkable

import numpy as np

from attacks.signals import Signals

__all__ = ["AttackInputs", "Attack", "MissingInputError"]


class MissingInputError(ValueError):
    """An attack needs an input (references, known members, ...) that the caller did not give."""


@dataclass
class AttackInputs:
    """Signals available to the attacker; only `target` is always needed.

    target: the target model on the n audit points.
    references: K reference/shadow models on the same audit points.
    reference_in: (K, n) bool, audit point i in reference k's training set (all False: offline).
    known_members / known_nonmembers: the target on members / non-members the attacker knows
        (trained attacks; Nasr et al. CCS'18 data protocol).
    population_target / population_references: the target / each reference on population
        points z (RMIA's comparison set).
    shadow_train: per shadow model, its signals on its own data pool and (n_pool,) bool
        membership (Shokri et al.'s attack training set).
    population_reference_in: (K, m) bool, population point j in reference k's training set
        (RMIA's calibration of `a` with a reference as the target).
    target_views / reference_views: the target / each reference on augmented copies of the
        audit points (one list per view; reference_views[v][k] is reference k on view v), the
        extra queries of LiRA with augmentations.
    """

    target: Signals
    references: Optional[list[Signals]] = None
    reference_in: Optional[np.ndarray] = None
    known_members: Optional[Signals] = None
    known_nonmembers: Optional[Signals] = None
    population_target: Optional[Signals] = None
    population_references: Optional[list[Signals]] = None
    shadow_train: Optional[list[tuple[Signals, np.ndarray]]] = None
    population_reference_in: Optional[np.ndarray] = None
    target_views: Optional[list[Signals]] = None
    reference_views: Optional[list[list[Signals]]] = None

    def __post_init__(self) -> None:
        n = len(self.target)
        self._check_views(n)
        if self.references is not None:
            if len(self.references) == 0:
                self.references = None
            else:
                for k, r in enumerate(self.references):
                    if len(r) != n:
                        raise ValueError(
                            f"references[{k}] has {len(r)} points, the target has {n}; "
                            "references must be evaluated on the same audit points"
                        )
                    if not np.array_equal(r.labels, self.target.labels):
                        raise ValueError(
                            f"references[{k}] labels differ from the target's; "
                            "references must be evaluated on the same audit points"
                        )
        if self.reference_in is not None:
            ri = np.asarray(self.reference_in)
            if ri.dtype != bool:
                if not np.all(np.isin(ri, [0, 1])):
                    raise ValueError("reference_in must be boolean (or 0/1)")
                ri = ri.astype(bool)
            k = 0 if self.references is None else len(self.references)
            if ri.shape != (k, n):
                raise ValueError(
                    f"reference_in has shape {ri.shape}; need (n_references, n_audit) = ({k}, {n})"
                )
            self.reference_in = ri
        elif self.references is not None:
            self.reference_in = np.zeros((len(self.references), n), dtype=bool)
        if self.population_references is not None:
            if self.population_target is None:
                raise ValueError("population_references given without population_target")
            m = len(self.population_target)
            k = 0 if self.references is None else len(self.references)
            if len(self.population_references) != k:
                raise ValueError(
                    f"{len(self.population_references)} population_references for {k} references; "
                    "need one per reference model, in the same order"
                )
            for j, r in enumerate(self.population_references):
                if len(r) != m:
                    raise ValueError(
                        f"population_references[{j}] has {len(r)} points, population_target has {m}"
                    )
        if self.population_reference_in is not None:
            pri = np.asarray(self.population_reference_in, dtype=bool)
            want = (
                0 if self.population_references is None else len(self.population_references),
                0 if self.population_target is None else len(self.population_target),
            )
            if self.population_references is None or pri.shape != want:
                raise ValueError(
                    f"population_reference_in has shape {pri.shape}; need (n_references, n_population) = {want} "
                    "next to population_references"
                )
            self.population_reference_in = pri
        if self.shadow_train is not None:
            for j, (sig, member) in enumerate(self.shadow_train):
                member = np.asarray(member)
                if member.shape != (len(sig),):
                    raise ValueError(
                        f"shadow_train[{j}] membership has shape {member.shape}; need ({len(sig)},)"
                    )

    def _check_views(self, n: int) -> None:
        if (self.target_views is None) != (self.reference_views is None):
            raise ValueError("target_views and reference_views come together (one list of views each)")
        if self.target_views is None or self.reference_views is None:
            return
        if len(self.target_views) != len(self.reference_views):
            raise ValueError(
                f"{len(self.target_views)} target views but {len(self.reference_views)} reference views"
            )
        k = 0 if not self.references else len(self.references)
        for v, (tv, rv) in enumerate(zip(self.target_views, self.reference_views)):
            if len(tv) != n or len(rv) != k or any(len(r) != n for r in rv):
                raise ValueError(
                    f"view {v}: need the target and each of the {k} references on the {n} audit points"
                )

    @property
    def n(self) -> int:
        return len(self.target)

    @property
    def n_references(self) -> int:
        return 0 if self.references is None else len(self.references)

    def with_target(self, target: Signals) -> AttackInputs:
        """Same attacker knowledge, scoring other points (drops per-audit-point inputs)."""
        return AttackInputs(
            target=target,
            known_members=self.known_members,
            known_nonmembers=self.known_nonmembers,
            population_target=self.population_target,
            shadow_train=self.shadow_train,
        )


@runtime_checkable
class Attack(Protocol):
    """fit on what the attacker knows, then score the audit points (n,), higher = member.

    What it declares (read by the audit and by config validation, never guessed): `requires`,
    the `AttackInputs` fields it cannot run without; `wants`, the fields it uses when given;
    `needs_grads`, whether the target's and the known points' signals need last-layer gradients.
    """

    name: str
    requires: tuple[str, ...]
    wants: tuple[str, ...]
    needs_grads: bool

    def fit(self, inputs: AttackInputs) -> Attack: ...

    def score(self, inputs: AttackInputs) -> np.ndarray: ...


def require(name: str, inputs: AttackInputs, fields: tuple[str, ...]) -> None:
    """Raise MissingInputError naming the inputs `name` needs and lacks."""
    missing = [f for f in fields if getattr(inputs, f) is None]
    if missing:
        raise MissingInputError(
            f"attack {name!r} needs AttackInputs.{', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} missing"
        )
