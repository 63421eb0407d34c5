"""The training and compression recipes: plain dataclasses the library takes, typed.

`TrainConfig` (one training recipe: the teacher's, a reference model's, the compressed
model's) and `CompressConfig` (one compression run: method, density, mask updates,
candidates, safety test, defences) with the allowed values of their choices. They carry
no config framework: `pipeline.config` composes them into the root schema that Hydra
fills, and `pipeline.validation` checks their value rules once at the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

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


@dataclass
class TrainConfig:
    """The training recipe shared by the teacher, the shadows and the compressed model."""

    epochs: int = 30
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    gamma: float = 0.1


@dataclass
class DensityScheduleConfig:
    kind: str = "constant"  # constant | linear | cubic | cosine
    start: float = 0.5  # density at the start of the window (ignored by `constant`)
    begin: float = 0.0  # window, as fractions of training
    end: float = 0.5


@dataclass
class RegrowthConfig:
    kind: str = "cosine"  # cosine | linear | constant
    start: float = 0.5
    end: float = 0.005


@dataclass
class StrategyConfig:
    """One candidate's mask update and, optionally, the defence it trains with (None: the run's
    own `compress.distill` / `compress.relaxloss` setting). Candidates that differ in defence
    strength let SafeCompress's safety test choose between defences (issue 18)."""

    prune: str = "magnitude"
    grow: str = "random"
    distill_weight: Optional[float] = None  # distillation from the teacher at this weight (0: off)
    distill_temperature: Optional[float] = None
    relaxloss_alpha: Optional[float] = None  # RelaxLoss with this target loss (0: off)


# StrategyConfig's defence fields (None: the run's own setting), in one place for validation,
# cache keys and row labels
STRATEGY_DEFENCE_FIELDS = ("distill_weight", "distill_temperature", "relaxloss_alpha")


@dataclass
class SafetyConfig:
    # the in-loop attacker trains on one part of the known members / val non-members and
    # is tested on the rest (holdout_fraction of each)
    holdout_fraction: float = 0.5
    attacker_epochs: int = 15  # NN attackers, first mask update (official: 100 at every epoch)
    attacker_refresh_epochs: int = 3  # later updates warm-start the attacker and train this many
    attacker_lr: float = 1e-3
    width_scale: float = 0.25  # NN attacker widths relative to Nasr et al.'s
    mmia_members: list[str] = field(default_factory=lambda: ["metric", "bmia", "wmia"])
    mmia_combine: str = "max"  # the risk is the strongest attacker's AUC


@dataclass
class SelectionConfig:
    rule: str = "lexicographic"
    lam: float = 1.0  # weighted: accuracy - lam * (risk - 0.5)
    delta: float = 0.005  # lexicographic: accuracy tolerance
    noise_floor: bool = True  # risk differences below their standard error are ties
    z: float = 1.0  # lexicographic tolerance is at least z accuracy standard errors


@dataclass
class AdversarialConfig:
    enabled: bool = False
    kind: str = "bmia"  # bmia | wmia | both
    lam: float = 0.1  # official SafeCompress/Nasr code: 0.1
    warmup_fraction: float = 0.667  # official: 200 of 300 epochs
    attacker_steps: int = 1  # attacker steps per classifier step
    attacker_warmup_steps: int = 200  # attacker-only steps when the min-max game starts
    lr: float = 1e-3
    width_scale: float = 0.25


@dataclass
class DistillConfig:
    enabled: bool = False
    temperature: float = 4.0
    weight: float = 0.5  # loss = (1 - weight) * CE + weight * T^2 * KL(teacher || student)


@dataclass
class RelaxLossConfig:
    """RelaxLoss (Chen, Yu & Fritz, ICLR 2022) on the members' hard-label loss of any method
    trained by the sparse loop (`training.compress.relaxloss`)."""

    enabled: bool = False
    alpha: float = 0.8  # the target training loss (official code's Purchase100 setting)
    upper: float = 0.3  # cap on the true class's probability in a flattened soft label (same)


@dataclass
class DMPConfig:
    """`compress=dmp`: Distillation for Membership Privacy (Shejwalkar & Houmansadr, AAAI 2021)."""

    temperature: float = 1.0  # softmax temperature of the teacher's soft labels (official code: 1)
    member_weight: float = 0.0  # loss = (1 - w) T^2 KL(teacher || student) on reference + w CE on members
    # keep the reference records whose soft labels have the lowest entropy (the paper's criterion
    # for choosing transfer data); 1.0 keeps all of them
    low_entropy_fraction: float = 1.0


@dataclass
class DPConfig:
    epsilon: float = 8.0
    delta: Optional[float] = None  # default: 1 / n_train
    max_grad_norm: float = 1.0
    sparse: bool = False  # keep an ERK mask at compress.density during DP-SGD
    lr: float = 0.1  # DP-SGD's own SGD learning rate (noisy clipped gradients need a larger one)
    batch_size: int = 256  # larger batches average out the noise (expected batch under Poisson sampling)
    # validation sweep: non-empty lists train one model per (lr, max_grad_norm) pair at the same
    # epsilon and keep the most accurate on `val` (an empty list: the single value above)
    tune_lr: list[float] = field(default_factory=list)
    tune_max_grad_norm: list[float] = field(default_factory=list)
    grad_sample_mode: str = "ghost"  # DP_GRAD_SAMPLE_MODES: same clipped sums, ghost is faster


@dataclass
class CompressConfig:
    method: str = "safecompress"
    density: float = 0.05
    init: str = "erk"  # erk | uniform | teacher (magnitude-pruned teacher weights)
    variant: str = "bmia"  # safety-test attacker: metric | bmia | wmia | mmia
    epochs: Optional[int] = None  # default: train.epochs
    update_every: int = 20  # optimizer steps between mask updates
    stop_fraction: float = 0.75  # no mask updates after this fraction of training (RigL's T_end)
    density_schedule: DensityScheduleConfig = field(default_factory=DensityScheduleConfig)
    regrowth: RegrowthConfig = field(default_factory=RegrowthConfig)
    strategies: list[StrategyConfig] = field(default_factory=lambda: [StrategyConfig()])
    n_candidates: int = 4
    probe_steps: int = 5
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    relaxloss: RelaxLossConfig = field(default_factory=RelaxLossConfig)
    dmp: DMPConfig = field(default_factory=DMPConfig)
