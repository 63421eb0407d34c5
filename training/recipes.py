"""The training and compression recipes: plain dataclasses the library takes, typed.

`TrainConfig` (one training recipe: the teacher's, a reference model's, the compressed
model's) and `CompressConfig` (one compression run: method, density, mask updates,
candidates, safety test, defences) with the allowed values of their choices. They carry
no config framework: `pipeline.config` composes them into the root schema that Hydra
fills. Each field's value rule (range, choices) is declared on it (`training.rules.checked`)
and checked once at the entry point (`pipeline.validation`), with the rules that relate fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from training.rules import checked

SELECTION_RULES = ("weighted", "ratio", "lexicographic", "pareto_knee")
VARIANTS = ("metric", "bmia", "wmia", "mmia")
INITS = ("erk", "uniform", "teacher")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "multistep")
MMIA_COMBINES = ("max", "mean")
ADVERSARIAL_KINDS = ("bmia", "wmia", "both")
# compress.dp.grad_sample_mode: how Opacus bounds each example's gradient. hooks: materialise every
# per-example gradient; ghost: ghost clipping (per-example norms without them, a second backward)
DP_GRAD_SAMPLE_MODES = ("hooks", "ghost")
MMIA_MEMBERS = ("metric", "bmia", "wmia")  # compress.safety.mmia_members entries


# choices kept in the registries, read when a rule is checked (the registries import torch)
def _methods() -> tuple[str, ...]:
    from training.compress import METHODS

    return tuple(METHODS)


def _prune_criteria() -> tuple[str, ...]:
    from sparse import PRUNE_CRITERIA

    return PRUNE_CRITERIA


def _grow_criteria() -> tuple[str, ...]:
    from sparse import GROW_CRITERIA

    return GROW_CRITERIA


def _density_schedules() -> tuple[str, ...]:
    from sparse import DENSITY_SCHEDULES

    return DENSITY_SCHEDULES


def _regrowth_schedules() -> tuple[str, ...]:
    from sparse import REGROWTH_SCHEDULES

    return REGROWTH_SCHEDULES


@dataclass
class TrainConfig:
    """The training recipe shared by the teacher, the shadows and the compressed model."""

    epochs: int = checked(30, ge=1)
    batch_size: int = checked(64, ge=1)
    optimizer: str = checked("sgd", choices=OPTIMIZERS)
    lr: float = checked(0.05, gt=0)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    lr_schedule: str = checked("cosine", choices=LR_SCHEDULES)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    gamma: float = 0.1


@dataclass
class DensityScheduleConfig:
    kind: str = checked("constant", choices=_density_schedules)  # constant | linear | cubic | cosine
    start: float = checked(0.5, gt=0, le=1)  # density at the start of the window (ignored by `constant`)
    begin: float = checked(0.0, ge=0, lt=1)  # window, as fractions of training (begin < end: validation)
    end: float = checked(0.5, gt=0, le=1)


@dataclass
class RegrowthConfig:
    kind: str = checked("cosine", choices=_regrowth_schedules)  # cosine | linear | constant
    start: float = checked(0.5, ge=0, lt=1)
    end: float = checked(0.005, ge=0, lt=1)


@dataclass
class StrategyConfig:
    """One candidate's mask update and, optionally, the defence it trains with (None: the run's
    own `compress.distill` / `compress.relaxloss` setting). Candidates that differ in defence
    strength let SafeCompress's safety test choose between defences (issue 18)."""

    prune: str = checked("magnitude", choices=_prune_criteria)
    grow: str = checked("random", choices=_grow_criteria)
    distill_weight: Optional[float] = checked(None, ge=0, le=1)  # distillation from the teacher at this weight (0: off)
    distill_temperature: Optional[float] = checked(None, gt=0)
    relaxloss_alpha: Optional[float] = checked(None, ge=0, why="(0: no RelaxLoss)")  # RelaxLoss with this target loss


# StrategyConfig's defence fields (None: the run's own setting), in one place for validation,
# cache keys and row labels
STRATEGY_DEFENCE_FIELDS = ("distill_weight", "distill_temperature", "relaxloss_alpha")


@dataclass
class SafetyConfig:
    # the in-loop attacker trains on one part of the known members / val non-members and
    # is tested on the rest (holdout_fraction of each)
    holdout_fraction: float = checked(0.5, gt=0, lt=1)
    attacker_epochs: int = checked(15, ge=1)  # NN attackers, first mask update (official: 100 at every epoch)
    attacker_refresh_epochs: int = checked(3, ge=0)  # later updates warm-start the attacker and train this many
    attacker_lr: float = 1e-3
    width_scale: float = 0.25  # NN attacker widths relative to Nasr et al.'s
    mmia_members: list[str] = checked(default_factory=lambda: list(MMIA_MEMBERS), choices=MMIA_MEMBERS)
    mmia_combine: str = checked("max", choices=MMIA_COMBINES)  # the risk is the strongest attacker's AUC


@dataclass
class SelectionConfig:
    rule: str = checked("lexicographic", choices=SELECTION_RULES)
    lam: float = checked(1.0, ge=0)  # weighted: accuracy - lam * (risk - 0.5)
    delta: float = checked(0.005, ge=0)  # lexicographic: accuracy tolerance
    noise_floor: bool = True  # risk differences below their standard error are ties
    z: float = checked(1.0, ge=0)  # lexicographic tolerance is at least z accuracy standard errors


@dataclass
class AdversarialConfig:
    enabled: bool = False
    kind: str = checked("bmia", choices=ADVERSARIAL_KINDS)  # bmia | wmia | both
    lam: float = checked(0.1, ge=0)  # official SafeCompress/Nasr code: 0.1
    warmup_fraction: float = checked(0.667, ge=0, lt=1)  # official: 200 of 300 epochs
    attacker_steps: int = 1  # attacker steps per classifier step
    attacker_warmup_steps: int = 200  # attacker-only steps when the min-max game starts
    lr: float = 1e-3
    width_scale: float = 0.25


@dataclass
class DistillConfig:
    enabled: bool = False
    temperature: float = checked(4.0, gt=0)
    weight: float = checked(0.5, ge=0, le=1)  # loss = (1 - weight) * CE + weight * T^2 * KL(teacher || student)


@dataclass
class RelaxLossConfig:
    """RelaxLoss (Chen, Yu & Fritz, ICLR 2022) on the members' hard-label loss of any method
    trained by the sparse loop (`training.compress.relaxloss`)."""

    enabled: bool = False
    alpha: float = checked(0.8, gt=0)  # the target training loss (official code's Purchase100 setting)
    upper: float = checked(0.3, gt=0, le=1)  # cap on the true class's probability in a flattened soft label (same)


@dataclass
class DMPConfig:
    """`compress=dmp`: Distillation for Membership Privacy (Shejwalkar & Houmansadr, AAAI 2021)."""

    temperature: float = checked(1.0, gt=0)  # softmax temperature of the teacher's soft labels (official code: 1)
    member_weight: float = checked(0.0, ge=0, lt=1)  # loss = (1 - w) T^2 KL(teacher || student) on reference + w CE on members
    # keep the reference records whose soft labels have the lowest entropy (the paper's criterion
    # for choosing transfer data); 1.0 keeps all of them
    low_entropy_fraction: float = checked(1.0, gt=0, le=1)


@dataclass
class DPConfig:
    epsilon: float = checked(8.0, gt=0)
    delta: Optional[float] = None  # default: 1 / n_train
    max_grad_norm: float = checked(1.0, gt=0)
    sparse: bool = False  # keep an ERK mask at compress.density during DP-SGD
    lr: float = 0.1  # DP-SGD's own SGD learning rate (noisy clipped gradients need a larger one)
    batch_size: int = 256  # larger batches average out the noise (expected batch under Poisson sampling)
    # validation sweep: non-empty lists train one model per (lr, max_grad_norm) pair at the same
    # epsilon and keep the most accurate on `val` (an empty list: the single value above)
    tune_lr: list[float] = checked(default_factory=list, gt=0)
    tune_max_grad_norm: list[float] = checked(default_factory=list, gt=0)
    grad_sample_mode: str = checked("ghost", choices=DP_GRAD_SAMPLE_MODES)  # DP_GRAD_SAMPLE_MODES: same clipped sums, ghost is faster


@dataclass
class CompressConfig:
    method: str = checked("safecompress", choices=_methods)
    density: float = checked(0.05, gt=0, le=1)
    init: str = checked("erk", choices=INITS)  # erk | uniform | teacher (magnitude-pruned teacher weights)
    variant: str = checked("bmia", choices=VARIANTS)  # safety-test attacker: metric | bmia | wmia | mmia
    epochs: Optional[int] = checked(None, ge=1)  # default: train.epochs
    update_every: int = checked(20, ge=1)  # optimizer steps between mask updates
    stop_fraction: float = checked(0.75, ge=0, le=1)  # no mask updates after this fraction of training (RigL's T_end)
    density_schedule: DensityScheduleConfig = field(default_factory=DensityScheduleConfig)
    regrowth: RegrowthConfig = field(default_factory=RegrowthConfig)
    strategies: list[StrategyConfig] = field(default_factory=lambda: [StrategyConfig()])
    n_candidates: int = checked(4, ge=1)
    probe_steps: int = checked(5, ge=1)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    relaxloss: RelaxLossConfig = field(default_factory=RelaxLossConfig)
    dmp: DMPConfig = field(default_factory=DMPConfig)
