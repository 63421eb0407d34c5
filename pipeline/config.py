"""Typed schemas for the plain-data config groups, and the allowed values of their choices.

Hydra composes YAML into the root schema `RootConfig` (registered with Hydra's ConfigStore
and named first in conf/config.yaml's defaults), so a misspelled key or a wrong type fails at
composition with the key's name; at each stage boundary a group is read as its typed
dataclass (`to_schema`). The value rules that types cannot express are checked up front by
`pipeline.validation.validate`, so bad input is reported before a single epoch runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from omegaconf import MISSING, OmegaConf

T = TypeVar("T")

SELECTION_RULES = ("weighted", "ratio", "lexicographic", "pareto_knee")
VARIANTS = ("metric", "bmia", "wmia", "mmia")
INITS = ("erk", "uniform", "teacher")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "multistep")
SHADOW_RECIPES = ("dense", "matched")  # dense: the teacher's recipe; matched: the compress recipe
# the data reference models train on: population only (no audit point is ever IN: offline attacks),
# or population and every audit candidate, each candidate IN for exactly half the models (online LiRA)
SHADOW_POOLS = ("population", "with_candidates")
REFERENCES = ("dense", "matched", "both")  # attack.reference / attack.search_reference
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
class ShadowsConfig:
    n_models: int = 8
    member_fraction: float = 0.5  # each shadow trains on this fraction of `population`
    recipe: str = "dense"  # dense: the teacher's recipe
    pool: str = "population"  # population | with_candidates (SHADOW_POOLS)


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
    trained by the sparse loop (`pipeline.compress.relaxloss`)."""

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


@dataclass
class AttackConfig:
    audit: dict[str, Any] = field(default_factory=lambda: {"loss": {}, "lira_offline": {}})
    primary: str = "max"  # attack whose numbers become attack_*; "max" = strongest per metric
    n_audit: Optional[int] = None  # audit members = audit non-members; default: all of `test`
    n_bootstrap: int = 0
    n_population: int = 1000  # population points for RMIA's comparison and Shokri's attack training
    reference: str = "matched"  # reference models of a final audit: dense | matched (compress recipe) | both
    search_reference: str = "dense"  # ... of the audits inside a search's trials (speed)


@dataclass
class SearchParam:
    key: str = "???"
    type: str = "float"  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[list[Any]] = None


@dataclass
class SearchConfig:
    n_trials: int = 8
    study_name: str = "default"
    storage: str = "sqlite:///mlruns/optuna.db"
    objectives: list[str] = field(default_factory=lambda: ["accuracy", "attack_auc"])
    population_size: int = 4
    space: list[SearchParam] = field(default_factory=list)
    n_workers: Any = 1  # auto | worker processes on this machine (threads.resolve_workers)
    heartbeat_interval: int = 5  # seconds; RDB storages only
    grace_period: int = 30  # seconds without a heartbeat before a RUNNING trial is failed and retried
    constraints: dict[str, float] = field(default_factory=dict)  # e.g. {accuracy_min: 0.9}
    # resuming a study recorded with another config or data: refuse | new (a study of a derived name)
    on_mismatch: str = "refuse"


SEARCH_ON_MISMATCH = ("refuse", "new")


# the train-less frontier's members: "method" (its runs at the compared density or dense) or
# "method@density" (only there; dst_adv@1.0 = dense + adversarial regularization)
FRONTIER_METHODS = ("dst", "dense", "dst_adv@1.0", "dpsgd")


@dataclass
class ReportConfig:
    experiment_name: str = "default"  # whose tracked runs (tag experiment_name) the report reads
    stages: list[str] = field(default_factory=lambda: ["attack"])
    audit_reports: bool = True  # one audit report per run of the table, logged to that run
    study_name: Optional[str] = None  # also one audit report per Pareto trial of this study
    plots: bool = True
    frontier: list[str] = field(default_factory=lambda: list(FRONTIER_METHODS))  # drawn on trade-off plots
    set_audit: bool = True  # with study_name: audit the study's Pareto front as one release (pipeline.set_audit)
    set_attacks: Optional[list[str]] = None  # the attacks to combine; null: every attack all versions scored


@dataclass
class FrontierConfig:
    enabled: bool = True
    methods: list[str] = field(default_factory=lambda: list(FRONTIER_METHODS))
    epoch_budgets: Optional[list[int]] = None  # DST budgets to use; null: every budget tracked
    # the leakage measure the frontier is drawn in: a logged metric, or several (their maximum
    # per run), e.g. [audit_loss_auc, audit_lira_offline_auc] = the strongest dense-reference attack
    metrics: list[str] = field(default_factory=lambda: ["audit_auc"])


@dataclass
class CompareConfig:
    experiment_name: str = "default"
    a: str = "safecompress"  # method, method/variant, or a report row label
    b: str = "dst"
    dataset: Optional[str] = None  # null: every data set both methods ran on
    density: Optional[float] = None  # null: every density both methods ran at
    metrics: list[str] = field(default_factory=lambda: [
        "test_accuracy", "audit_auc", "audit_tpr_at_1pct_fpr", "audit_lira_offline_auc", "audit_loss_auc"])
    n_bootstrap: int = 1000
    confidence: float = 0.95
    use_examples: bool = True  # hierarchical bootstrap over examples when scores.npz exists
    seed: int = 0
    frontier: FrontierConfig = field(default_factory=FrontierConfig)
    study: Optional[str] = None  # an Optuna study's name: its Pareto trials against the frontier


# stage=export: how a model is chosen from a study when no trial number or run id is given
EXPORT_RULES = ("max_accuracy", "min_attack_auc")


@dataclass
class ExportConfig:
    """`stage=export`: which model to ship (a trial, a run, or a rule over a study's Pareto front)
    and how its ONNX copy is checked (values: conf/export/default.yaml)."""

    study_name: Optional[str] = None  # null: search.study_name
    trial: Optional[int] = None  # a trial number of the study
    run_id: Optional[str] = None  # any tracked compress/attack run or search trial
    rule: str = "max_accuracy"  # EXPORT_RULES; used when neither trial nor run_id is given
    max_attack_auc: Optional[float] = None  # the rule's bound on the (validation) attack AUC
    min_accuracy: Optional[float] = None  # ... and on validation accuracy
    register: Optional[str] = None  # a Model Registry name: register the exported model
    onnx: bool = True
    opset: int = 17
    n_check: int = 1000  # inputs on which ONNX Runtime and PyTorch are compared
    max_abs_diff: float = 1e-4  # bound on their largest absolute logit difference


CACHE_ACTIONS = ("list", "verify", "clear")
# the stages that keep cache entries (`<cache_dir>/<stage>/<key>/`), the names `cache.stages` takes
CACHE_STAGES = ("teacher", "shadow", "shadow_matched", "compress", "attack")


@dataclass
class CacheCommandConfig:
    """`stage=cache`: list, verify or clear the entries of `paths.cache_dir`."""

    action: str = "list"  # list | verify | clear
    stages: list[str] = field(default_factory=list)  # only these stages' entries; empty: all
    keys: list[str] = field(default_factory=list)  # only these keys (a prefix is enough)
    damaged: bool = False  # only damaged and moved-aside entries
    all: bool = False  # clear: every entry (a clear needs a selection)


OBJECTIVE_DIRECTIONS = {
    "accuracy": "maximize",
    "attack_auc": "minimize",
    "attack_tpr_at_0.1pct_fpr": "minimize",
    "model_size_bytes": "minimize",
    "density": "minimize",
}


def to_schema(schema: type[T], node: Any) -> T:
    """Merge a config node into its dataclass schema and return the typed object."""
    if OmegaConf.is_config(node):  # resolve interpolations against the full config first
        node = OmegaConf.to_container(node, resolve=True)
    merged = OmegaConf.merge(OmegaConf.structured(schema), node)
    if isinstance(node, dict):  # a mapping the config gives replaces the schema's default one
        for f in dataclasses.fields(schema):  # type: ignore[arg-type]
            factory = f.default_factory
            if isinstance(node.get(f.name), dict) and factory is not dataclasses.MISSING and isinstance(factory(), dict):
                merged[f.name] = node[f.name]
    return OmegaConf.to_object(merged)  # type: ignore[return-value]



# ------------------------------------------------------------------ the root schema (Hydra's ConfigStore)


@dataclass
class RuntimeConfig:
    """`runtime`: devices, threads and output; never part of a cache key."""

    device: str = "cpu"  # cpu | cuda | cuda:<index> | mps
    n_threads: Any = 1  # auto | a positive integer | null (torch's default)
    progress: bool = True
    batched_shadows: bool = True
    batched_probes: bool = True
    log_level: str = "INFO"


@dataclass
class PathsConfig:
    """`paths`: where the cache, stores, outputs and data files are; never part of a cache key.
    The values (interpolations of `paths.root`) are conf/paths/default.yaml's."""

    root: str = MISSING
    cache_dir: str = MISSING
    mlruns_dir: str = MISSING
    output_dir: str = MISSING
    data_dir: str = MISSING
    export_dir: Optional[str] = None  # stage=export's folders; null: <output_dir>/exports


@dataclass
class TrackingConfig:
    """`tracking`: the MLflow store and experiment (values: conf/tracking/default.yaml)."""

    uri: str = MISSING
    artifact_dir: str = MISSING
    experiment: str = MISSING
    enabled: bool = True
    call_timeout_s: float = 60.0  # seconds
    # log each compress/attack run's and search trial's compressed model as an MLflow Model
    # (`pipeline.export.mlflow_model`); off for large sweeps (cost: README "Ship the model")
    log_models: bool = True


@dataclass
class TeacherConfig:
    """`teacher`: the dense starting model. `checkpoint`: a state_dict file of the user's own trained
    model (loaded with `weights_only=True`) that replaces teacher training; its SHA-256, not its
    path, enters the keys."""

    checkpoint: Optional[str] = None


@dataclass
class RootConfig:
    """The composed config's schema: Hydra merges every group into it, so a misspelled key or a
    wrong type fails at composition, naming the key. `dataset` and `model` are `_target_`
    groups (the loader's and the model's signature is their schema, checked when they are built)."""

    dataset: Any = None
    model: Any = None
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    shadows: ShadowsConfig = field(default_factory=ShadowsConfig)
    # no default audit here: a group's mapping would be merged into it, not replace it
    attack: AttackConfig = field(default_factory=lambda: AttackConfig(audit={}))
    compress: CompressConfig = field(default_factory=CompressConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    stage: str = "search"
    seed: int = 0
    experiment_name: str = "default"
    cache: CacheCommandConfig = field(default_factory=CacheCommandConfig)


SCHEMA_NAME = "safecompress_schema"  # conf/config.yaml's first default


def register_schema() -> None:
    """Register `RootConfig` with Hydra's ConfigStore (done on importing this module)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NAME, node=RootConfig)


register_schema()
