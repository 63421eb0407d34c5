"""Data sets and the membership data protocol (SPEC "Data protocol").

Every data set is a labelled pool `(x, y)` held in memory as tensors. The pool is
split, deterministically from the root seed, into disjoint parts:

- `train`      the target's members (teacher and compressed model train on it);
- `val`        non-members for the performance test, the search objectives and
               the in-loop attacker's reference non-members;
- `test`       non-members for the reported accuracy and the final audit;
- `population` the attacker's own data; shadow/reference models train on it;
- `reference`  the defender's own extra data (`dataset.reference_size` records, default
               none): unlabelled inputs a defence such as DMP (`compress=dmp`) may use beyond
               the members. `purchase_synth` generates them (`Dataset.reference_rows`); other
               sets take them from the pool records the split fractions leave unused.

`train` is cut in three: `audit_members` (as many as `test`: the reported audit),
`search_members` (as many as the search's validation non-members: the search objectives
`attack_*`) and `known_members` (the rest: the members the attackers that measure leakage
may know — SafeCompress's safety test, the audit's trained attacks). The three are
disjoint, so a search never selects on the reported audit's members and no attacker
is fitted on a member it is scored on. A training-time defence (adversarial
regularization's adversary, distillation) trains on every member: it must protect all
of them, and the audit measures whether it did.

Features that a loader standardises (`Dataset.standardise`) are standardised with the
mean and standard deviation of `train` only (`standardise_on`): no statistic of `val`,
`test` or `population` enters the inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from training.seeds import derive_seed

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test", "population")


@dataclass(frozen=True)
class Dataset:
    """A labelled pool: `x` (n, *input_shape) float32 (or int64 token ids), `y` (n,) int64.

    `augment`, when set, is a training-time augmentation `augment(x_batch, generator) -> x_batch`
    (e.g. `pipeline.datasets.augment_cifar`); it is not part of equality.
    `standardise`: `x` holds raw features to be standardised per feature with the statistics
    of the members once the pool is split (`standardise_on`); False once that is done.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    n_classes: int
    augment: Optional[Callable[..., torch.Tensor]] = field(default=None, compare=False)
    standardise: bool = False
    # the last `reference_rows` rows were generated for the defender's `reference` split: they
    # lie outside the pool the split fractions divide (`make_splits(..., reserved=...)`)
    reference_rows: int = 0
    # the user's own membership (`dataset=files`): (n,) int8, 1 a record that trained their model,
    # 0 one it never saw, -1 neither (left out); the splits then follow it (`pipeline.membership`)
    membership: Optional[np.ndarray] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"data set {self.name!r}: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}"
            )
        # integer inputs (token ids) are always finite
        if self.x.is_floating_point() and not torch.isfinite(self.x).all():
            raise ValueError(f"data set {self.name!r}: x contains NaN or infinite values")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Splits:
    """Index arrays into a `Dataset` for each part of the protocol."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    population: np.ndarray
    audit_members: np.ndarray
    known_members: np.ndarray
    search_members: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    canaries: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    canary_in: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    reference: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def as_dict(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def standardise_on(dataset: Dataset, members: np.ndarray) -> Dataset:
    """`dataset` with every feature standardised by the mean and std of the rows `members`.

    A no-op unless `dataset.standardise`. Fitting on the target's members only keeps
    the statistics of held-out and attacker data out of the inputs (issue 18: digits was
    standardised with the whole pool's). Constant features (std 0 on the members) are
    only centred.
    """
    if not dataset.standardise:
        return dataset
    if len(members) < 2:
        raise ValueError(f"data set {dataset.name!r}: standardising needs >= 2 members, got {len(members)}")
    x = dataset.x.double()
    fit = x[torch.from_numpy(np.asarray(members))]
    mean = fit.mean(0, keepdim=True)
    std = fit.std(0, unbiased=False, keepdim=True)
    z = ((x - mean) / torch.where(std > 0, std, torch.ones_like(std))).to(dataset.x.dtype)
    return replace(dataset, x=z, standardise=False)


def make_splits(
    n: int,
    fractions: dict[str, float],
    seed: int,
    n_audit: int | None = None,
    n_reference: int = 0,
    reserved: int = 0,
) -> Splits:
    """Disjoint train/val/test/population index arrays, deterministic in `seed`.

    `fractions` maps each of SPLIT_NAMES to a fraction of the pool; they must be
    non-negative and sum to at most 1. `n_audit` (default: the size of `test`) is
    the number of audit members drawn from `train`. Then `search_members`: as many
    as the search's validation non-members (the half of `val` the attack stage does
    not give its trained attacks, `n_search_members`), at most half of what the audit
    leaves; the rest of `train` are the known members.

    `n_reference` records form the defender's `reference` split, disjoint from every
    other part: the last `reserved` rows of the `n` (records generated for it, outside
    the pool the fractions divide) when there are any, else pool records the fractions
    leave unused. The other parts depend only on the pool, so they are the same with or
    without a reference split.
    """
    unknown = set(fractions) - set(SPLIT_NAMES)
    missing = set(SPLIT_NAMES) - set(fractions)
    if unknown or missing:
        raise ValueError(
            f"split fractions must name exactly {list(SPLIT_NAMES)}; "
            f"unknown {sorted(unknown)}, missing {sorted(missing)}"
        )
    for k, f in fractions.items():
        if not (0.0 <= float(f) <= 1.0):
            raise ValueError(f"split fraction {k}={f} must be in [0, 1]")
    total = sum(float(f) for f in fractions.values())
    if total > 1.0 + 1e-9:
        raise ValueError(f"split fractions must sum to at most 1, got {total:.4f} ({dict(fractions)})")
    if n_reference < 0 or not 0 <= reserved < n:
        raise ValueError(f"dataset.reference_size must be >= 0 (got {n_reference}; {reserved} generated rows of {n})")
    n_pool = n - reserved
    rng = np.random.default_rng(derive_seed(seed, "splits"))
    perm = rng.permutation(n_pool)
    parts: dict[str, np.ndarray] = {}
    start = 0
    for name in SPLIT_NAMES:
        size = int(round(float(fractions[name]) * n_pool))
        parts[name] = np.sort(perm[start : start + size])
        start += size
    for name in ("train", "val", "test"):
        if len(parts[name]) < 2:
            raise ValueError(
                f"too few records for split {name!r}: it gets {len(parts[name])} of the pool's {n_pool} records "
                f"(fraction {float(fractions[name]):g}); needs >= 2: raise dataset.split.{name} or bring more records"
            )
    splits = audit_splits(
        parts, n_audit, seed,
        lambda n: f"n_audit={n} leaves {len(parts['train']) - n} of train's {len(parts['train'])} "
        "examples for the search and known members (need >= 2); lower n_audit or raise the train fraction",
    )
    return replace(splits, reference=_reference_split(n_reference, n_pool, reserved, perm[start:], total))


def audit_splits(
    parts: dict[str, np.ndarray], n_audit: int | None, seed: int, too_few_members: Callable[[int], str]
) -> Splits:
    """`Splits` from the four disjoint parts: `n_audit` (default: as many as test) audit members,
    then the search's members, the rest known members, drawn from train by the seed's
    `audit_members` stream. `too_few_members(n_audit)` words the error when train keeps < 2 others."""
    n_test = len(parts["test"])
    n_audit = n_test if n_audit is None else int(n_audit)
    if n_audit < 1 or n_audit > n_test:
        raise ValueError(f"n_audit={n_audit} must be in [1, {n_test}] (the size of test)")
    if n_audit > len(parts["train"]) - 2:
        raise ValueError(too_few_members(n_audit))
    n_search = n_search_members(len(parts["train"]), n_audit, len(parts["val"]))
    # the audit members are the first n_audit of this permutation whatever n_search is
    arng = np.random.default_rng(derive_seed(seed, "audit_members"))
    train_perm = arng.permutation(parts["train"])
    return Splits(
        train=parts["train"],
        val=parts["val"],
        test=parts["test"],
        population=parts["population"],
        audit_members=np.sort(train_perm[:n_audit]),
        known_members=np.sort(train_perm[n_audit + n_search :]),
        search_members=np.sort(train_perm[n_audit : n_audit + n_search]),
    )


def n_search_members(n_train: int, n_audit: int, n_val: int) -> int:
    """How many members the search objectives audit: as many as their non-members (the
    `n_val - n_val // 2` validation points the attack stage keeps for them), at most half of
    the members the audit leaves (the other half stay known members)."""
    return max(1, min(n_val - n_val // 2, (n_train - n_audit) // 2))


def _reference_split(n_reference: int, n_pool: int, reserved: int, unused: np.ndarray, total: float) -> np.ndarray:
    """The defender's reference split: generated rows, else pool records no fraction took."""
    if n_reference == 0:
        return np.zeros(0, dtype=np.int64)
    if reserved:
        if n_reference > reserved:
            raise ValueError(
                f"dataset.reference_size={n_reference} but the data set generated {reserved} reference rows"
            )
        return np.arange(n_pool, n_pool + n_reference, dtype=np.int64)
    if n_reference > len(unused):
        raise ValueError(
            f"dataset.reference_size={n_reference} needs that many pool records outside train/val/test/"
            f"population, but the split fractions (sum {total:.4f}) leave {len(unused)} of the pool's "
            f"{n_pool}: lower dataset.split fractions to sum to at most {1 - n_reference / n_pool:.4f} "
            "(e.g. dataset.split.population) or ask for fewer reference records"
        )
    # seeded by the split's permutation: the first unused records of it
    return np.sort(unused[:n_reference]).astype(np.int64)


def plant_canaries(dataset: Dataset, splits: Splits, n: int, seed: int) -> tuple[Dataset, Splits]:
    """Plant `n` mislabeled canaries, each in `train` with probability 1/2 (Aerni et al. 2024).

    Canaries are drawn from `population` (and removed from it, so no shadow model
    ever trains on one), their labels moved to a random other class, and a seeded
    half of them added to `train`. They are never audit or known members; the
    attack stage audits them separately (`canary_*` metrics): TPR at low FPR on
    the points a model memorises most.
    """
    if n < 0:
        raise ValueError(f"dataset.canaries must be >= 0, got {n}")
    if n == 0:
        return dataset, splits
    if dataset.membership is not None:
        raise ValueError(f"dataset.canaries={n}: canaries would be added to the members of a model the user trained "
                         "(user membership given); set dataset.canaries=0")
    if n > len(splits.population) // 2:
        raise ValueError(
            f"dataset.canaries={n} is more than half of population ({len(splits.population)} points)"
        )
    if n < 4:
        raise ValueError(f"dataset.canaries={n} is too few to audit; use >= 4 (e.g. 200)")
    rng = np.random.default_rng(derive_seed(seed, "canaries"))
    canaries = np.sort(rng.permutation(splits.population)[:n])
    inside = np.zeros(n, dtype=bool)
    inside[rng.permutation(n)[: n // 2]] = True
    y = dataset.y.clone()
    shift = torch.from_numpy(rng.integers(1, dataset.n_classes, size=n))
    y[canaries] = (y[canaries] + shift) % dataset.n_classes
    new_splits = Splits(
        train=np.sort(np.r_[splits.train, canaries[inside]]),
        val=splits.val,
        test=splits.test,
        population=np.setdiff1d(splits.population, canaries),
        audit_members=splits.audit_members,
        known_members=splits.known_members,
        search_members=splits.search_members,
        canaries=canaries,
        canary_in=inside,
        reference=splits.reference,
    )
    return replace(dataset, y=y), new_splits


@dataclass(frozen=True)
class DataBundle:
    """A loaded data set, its splits and its cache key: what training and the attacks read."""

    dataset: Dataset
    splits: Splits
    key: str

    def part(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(getattr(self.splits, name))
        return self.dataset.x[idx], self.dataset.y[idx]
