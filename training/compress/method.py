"""What a compress method is, what it is given, and the registry of methods by name.

A method is a registered `CompressMethod` object: it declares what it needs and how
reports label its runs, and trains one compressed model from a `CompressJob` (the
recipe, the data, a seed, a model factory and, where it starts from one, the dense
model). The job holds no config objects, so the compress stage and the matched
reference models (`pipeline.stages.shadows`) train through the same function,
`train_compressed`. Adding a method is one module in `training/compress/methods/`
plus one line in its `__init__`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import pandas as pd
from torch import nn

import sparse
from training.data import DataBundle
from training.recipes import STRATEGY_DEFENCE_FIELDS, CompressConfig, TrainConfig


@dataclass(frozen=True)
class CompressJob:
    """Everything a method needs to train one compressed model."""

    c: CompressConfig
    recipe: TrainConfig  # the compress recipe (`compress_recipe`)
    data: DataBundle
    seed: int  # every generator of the method derives from it
    new_model: Callable[..., nn.Module]  # new_model(*seed_path): a fresh model initialised from `seed`
    dense_model: Callable[[], nn.Module]  # loads the dense model it may start from (the teacher)
    batched_probes: bool = True  # probe SafeCompress candidates together where the model allows
    progress: bool = False  # a progress bar over training steps


@dataclass(frozen=True)
class Trained:
    """A method's output: the model, its masks (None: dense), per-epoch history, candidates table,
    and the method's own scalar results (e.g. the hyperparameters a validation sweep chose)."""

    model: nn.Module
    masks: sparse.MaskSet | None
    history: list[dict[str, float]]
    table: pd.DataFrame
    # the method's own numbers for metrics.json, e.g. DMP's `defender_reference_size`
    metrics: dict[str, float] = field(default_factory=dict)


class CompressMethod:
    """One compress method. Subclasses set `name` and implement `train`."""

    name: ClassVar[str]
    # keeps every weight: compress.density is not its target (reports label it so)
    is_dense: ClassVar[bool] = False
    # regrows pruned weights: its density schedule and regrowth settings label its runs
    regrows: ClassVar[bool] = False
    # selects among candidates with a safety test: compress.variant and selection settings apply
    selects_candidates: ClassVar[bool] = False
    # logged params (without "params.") that tell this method's configurations apart in reports
    label_params: ClassVar[tuple[str, ...]] = ()
    # trains through the sparse loop's shared step (`training.compress.steps`): RelaxLoss and the
    # strategies' defence overrides apply to it
    uses_shared_step: ClassVar[bool] = False
    # trains on the defender's reference split (`dataset.reference_size` records beyond the members)
    uses_reference_set: ClassVar[bool] = False
    # trains with DP-SGD: compress.dp applies, reports and model cards state its epsilon, and a
    # user's model is checked for modules whose per-example gradients Opacus cannot bound
    differentially_private: ClassVar[bool] = False
    # the package's models (`model._target_`) it trains when not all of them (None: every one),
    # and why it refuses each of the others; a user's class is checked once it is built
    supported_models: ClassVar[tuple[str, ...] | None] = None
    unsupported_models: ClassVar[dict[str, str]] = {}

    def starts_from_dense(self, c: CompressConfig) -> bool:
        """Whether it starts from the dense model's weights (`CompressJob.dense_model`)."""
        return c.init == "teacher"

    def train(self, job: CompressJob) -> Trained:
        raise NotImplementedError


METHODS: dict[str, CompressMethod] = {}


def register(cls: type[CompressMethod]) -> type[CompressMethod]:
    """Class decorator: register one instance under `cls.name` (a second one raises)."""
    if cls.name in METHODS:
        raise ValueError(f"compress method {cls.name!r} is registered twice")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> CompressMethod:
    if name not in METHODS:
        raise ValueError(f"unknown compress.method {name!r}; valid: {list(METHODS)}")
    return METHODS[name]


def compress_recipe(recipe: TrainConfig, c: CompressConfig) -> TrainConfig:
    """The training recipe with `compress.epochs` when set."""
    return replace(recipe, epochs=c.epochs) if c.epochs is not None else recipe


# Fields added after models were cached under specs without them (issue 18): left out of the
# spec while at their default, which reproduces the model trained before they existed, so adding
# them kept every existing key; any other value enters the key.
_LATER_GROUPS = ("relaxloss", "dmp")
_LATER_STRATEGY_FIELDS = STRATEGY_DEFENCE_FIELDS


def compress_spec(c: CompressConfig, model_spec: dict[str, Any], recipe: TrainConfig) -> dict[str, Any]:
    """The declared config fields of a compressed model (its cache key's spec)."""
    spec = asdict(c)
    default = asdict(CompressConfig())
    for group in _LATER_GROUPS:
        if spec[group] == default[group]:
            del spec[group]
    # compress.dp.grad_sample_mode (added later still) changes only DP-SGD's arithmetic: DP-SGD
    # models cached before it existed were trained with hooks, and every other method ignores it,
    # so it is left out where it reproduces those models (DP-SGD with hooks, any other method at
    # the default); the ghost DP-SGD models get keys of their own.
    mode = spec["dp"]["grad_sample_mode"]
    if mode == ("hooks" if get_method(c.method).differentially_private else default["dp"]["grad_sample_mode"]):
        del spec["dp"]["grad_sample_mode"]
    for strategy in spec["strategies"]:
        for name in _LATER_STRATEGY_FIELDS:
            if strategy[name] is None:
                del strategy[name]
    return {"compress": spec, "model": model_spec, "train": asdict(compress_recipe(recipe, c))}


def train_compressed(job: CompressJob) -> Trained:
    """Train one compressed model with `job.c.method` (registered in `METHODS`)."""
    return get_method(job.c.method).train(job)
