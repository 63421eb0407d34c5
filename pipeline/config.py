"""Typed schemas for the plain-data config groups and the checks run before any training.

Hydra composes YAML; at each stage boundary the group is merged into its
dataclass schema (`to_schema`), so a misspelled key or a wrong type fails with
the key's name. `validate(cfg)` checks value ranges up front, so bad input is
reported before a single epoch runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict

T = TypeVar("T")

DATASETS = (
    "digits",
    "synthetic",
    "purchase_synth",
    "cifar10",
    "cifar100",
    "purchase100",
    "texas100",
    "ag_news",
)
SELECTION_RULES = ("weighted", "ratio", "lexicographic", "pareto_knee")
VARIANTS = ("metric", "bmia", "wmia", "mmia")
INITS = ("erk", "uniform", "teacher")
OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine", "multistep")
SHADOW_RECIPES = ("dense", "matched")  # dense: the teacher's recipe; matched: the compress recipe
REFERENCES = ("dense", "matched", "both")  # attack.reference / attack.search_reference
MMIA_COMBINES = ("max", "mean")
ADVERSARIAL_KINDS = ("bmia", "wmia", "both")


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
    prune: str = "magnitude"
    grow: str = "random"


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
class DPConfig:
    epsilon: float = 8.0
    delta: Optional[float] = None  # default: 1 / n_train
    max_grad_norm: float = 1.0
    sparse: bool = False  # keep an ERK mask at compress.density during DP-SGD
    lr: float = 0.1  # DP-SGD's own SGD learning rate (noisy clipped gradients need a larger one)
    batch_size: int = 256  # larger batches average out the noise (expected batch under Poisson sampling)


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
    n_workers: int = 1  # worker processes on this machine sharing the study
    heartbeat_interval: int = 5  # seconds; RDB storages only
    grace_period: int = 30  # seconds without a heartbeat before a RUNNING trial is failed and retried
    constraints: dict[str, float] = field(default_factory=dict)  # e.g. {accuracy_min: 0.9}


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


CACHE_ACTIONS = ("list", "verify", "clear")


@dataclass
class CacheCommandConfig:
    """`stage=cache`: list, verify or clear the entries of `paths.cache_dir`."""

    action: str = "list"  # list | verify | clear
    stages: list[str] = field(default_factory=list)  # only these stages' entries; empty: all
    keys: list[str] = field(default_factory=list)  # only these keys (a prefix is enough)
    damaged: bool = False  # only damaged and moved-aside entries
    all: bool = False  # clear: every entry (a clear needs a selection)


def validate_cache_command(c: CacheCommandConfig) -> None:
    _check_choice("cache.action", c.action, CACHE_ACTIONS)
    if c.action == "clear" and not (c.stages or c.keys or c.damaged or c.all):
        raise ValueError(
            "cache.action=clear needs a selection: cache.stages=[teacher,...], cache.keys=[<key prefix>,...], "
            "cache.damaged=true (damaged and moved-aside entries) or cache.all=true (everything)"
        )


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


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {list(valid)}")


def _check_count(what: str, value: int, minimum: int = 1) -> None:
    if int(value) < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")


def validate_device(device: str) -> None:
    """`runtime.device`: cpu, cuda, cuda:<index> or mps, and present in this torch build and machine."""
    import re

    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ValueError(f"unknown runtime.device {device!r}; valid: ['cpu', 'cuda', 'cuda:<index>', 'mps']")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"runtime.device={device!r} but torch {torch.__version__} sees no CUDA device (a CPU-only build "
                "or no GPU): install a CUDA build of torch (make install TORCH=...) or use runtime.device=cpu"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"runtime.device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("runtime.device='mps' but torch sees no MPS device; use runtime.device=cpu")


def validate_attack(attack: AttackConfig) -> None:
    """The audit's attacks (each built once: unknown names, parameters and values raise) and `primary`."""
    import attacks

    _check_choice("attack.reference", attack.reference, REFERENCES)
    try:
        attacks.check_specs(attack.audit)
    except ValueError as err:
        raise ValueError(f"attack.audit: {err}") from err
    if attack.primary != "max" and attack.primary not in attack.audit:
        raise ValueError(f"attack.primary={attack.primary!r} must be 'max' or one of {list(attack.audit)}")


# stages that read the data set (and so check `attack.n_audit` against its splits first)
DATA_STAGES = ("teacher", "shadows", "compress", "attack", "search")
# audit attacks that need the reference (shadow) models
REFERENCE_ATTACKS = ("lira_offline", "lira_online", "rmia", "shadow")


def validate(cfg: DictConfig, data: bool = False) -> None:
    """Check the composed config before any training; raises ValueError naming the bad value.

    Every value a stage will reject later is checked here, so a refused command leaves
    nothing behind (no trained model, no study, no tracked run). `data=True` also loads the
    data set (cached per process) to check the split sizes against `attack.n_audit`.
    """
    if str(cfg.stage) == "cache":
        validate_cache_command(to_schema(CacheCommandConfig, cfg.cache))
    _validate_groups(cfg)
    validate_names(cfg)
    stage = str(cfg.stage)
    if stage in ("attack", "search"):
        validate_references(cfg)
    if stage == "search":
        validate_search_values(cfg)
    if data and stage in DATA_STAGES:
        validate_data(cfg)


def _validate_groups(cfg: DictConfig) -> None:
    validate_device(str(cfg.runtime.get("device", "cpu")))
    _check_choice("dataset", str(cfg.dataset.name), DATASETS)
    train = to_schema(TrainConfig, cfg.train)
    _check_count("train.epochs", train.epochs)
    _check_count("train.batch_size", train.batch_size)
    _check_choice("train.optimizer", train.optimizer, OPTIMIZERS)
    _check_choice("train.lr_schedule", train.lr_schedule, LR_SCHEDULES)
    if not train.lr > 0:
        raise ValueError(f"train.lr must be > 0, got {train.lr}")
    shadows = to_schema(ShadowsConfig, cfg.shadows)
    _check_count("shadows.n_models", shadows.n_models, 0)
    if not 0 < shadows.member_fraction < 1:
        raise ValueError(f"shadows.member_fraction must be in (0, 1), got {shadows.member_fraction}")
    _check_choice("shadows.recipe", shadows.recipe, SHADOW_RECIPES)
    compress = to_schema(CompressConfig, cfg.compress)
    validate_compress(compress)
    attack = to_schema(AttackConfig, cfg.attack)
    validate_attack(attack)
    _check_choice("attack.search_reference", attack.search_reference, REFERENCES)
    if attack.n_bootstrap and attack.n_bootstrap < 100:
        raise ValueError(f"attack.n_bootstrap must be 0 (off) or >= 100, got {attack.n_bootstrap}")
    search = to_schema(SearchConfig, cfg.search)
    _check_count("search.n_trials", search.n_trials)
    _check_count("search.n_workers", search.n_workers)
    _check_count("search.population_size", search.population_size, 2)
    if search.grace_period <= search.heartbeat_interval:
        raise ValueError(
            f"search.grace_period ({search.grace_period}) must exceed search.heartbeat_interval "
            f"({search.heartbeat_interval})"
        )
    for name in search.constraints:
        metric, _, bound = name.rpartition("_")
        if bound not in ("min", "max") or metric not in OBJECTIVE_DIRECTIONS:
            raise ValueError(
                f"unknown search constraint {name!r}; write <metric>_min or <metric>_max with a metric in "
                f"{list(OBJECTIVE_DIRECTIONS)}"
            )
    for name in search.objectives:
        _check_choice("search objective", name, tuple(OBJECTIVE_DIRECTIONS))


_NAME_FORBIDDEN = ("'", '"', "`", "\\")


def validate_name(what: str, value: Any) -> None:
    """A name that is quoted into MLflow search filters (`tags.x = '<name>'`): no quotes,
    backquotes, backslashes or control characters, which such a filter cannot hold."""
    text = str(value)
    bad = sorted({ch for ch in text if ch in _NAME_FORBIDDEN or ord(ch) < 32})
    if not text.strip() or bad:
        raise ValueError(
            f"{what}={text!r} cannot be used: it is quoted into MLflow run filters, which cannot hold "
            f"{' '.join(repr(b) for b in bad) or 'an empty name'}; use letters, digits, spaces and - _ . : / @ +"
        )


def validate_names(cfg: DictConfig) -> None:
    """Study and experiment names (search, tracking, report, compare) that reach MLflow filters."""
    names = {
        "experiment_name": cfg.get("experiment_name"),
        "search.study_name": OmegaConf.select(cfg, "search.study_name", default=None),
        "tracking.experiment": OmegaConf.select(cfg, "tracking.experiment", default=None),
        "report.experiment_name": OmegaConf.select(cfg, "report.experiment_name", default=None),
        "report.study_name": OmegaConf.select(cfg, "report.study_name", default=None),
        "compare.experiment_name": OmegaConf.select(cfg, "compare.experiment_name", default=None),
        "compare.study": OmegaConf.select(cfg, "compare.study", default=None),
    }
    for what, value in names.items():
        if value is not None:
            validate_name(what, value)


def validate_references(cfg: DictConfig) -> None:
    """Reference-model attacks (LiRA, RMIA, Shokri's shadow attack) need `shadows.n_models >= 1`."""
    attack = to_schema(AttackConfig, cfg.attack)
    shadows = to_schema(ShadowsConfig, cfg.shadows)
    needing = [n for n, p in attack.audit.items() if (p or {}).get("attack", n) in REFERENCE_ATTACKS]
    if needing and shadows.n_models < 1:
        raise ValueError(
            f"shadows.n_models=0 but attack.audit runs {needing}, which need reference models; set "
            f"shadows.n_models >= 1 (default 8) or remove them from attack.audit (e.g. ~attack.audit.{needing[0]})"
        )


def validate_search_values(cfg: DictConfig) -> None:
    """Every value a search trial can set is valid: each categorical choice, and both ends of each
    numeric range, applied to the config one at a time and checked like the config itself."""
    search = to_schema(SearchConfig, cfg.search)
    for p in search.space:
        if OmegaConf.select(cfg, p.key, default=_MISSING) is _MISSING:
            raise ValueError(f"search space key {p.key!r} does not exist in the config")
        if p.type == "categorical":
            values = list(p.choices or [])
        elif p.type in ("float", "int") and p.low is not None and p.high is not None:
            values = [p.low, p.high] if p.type == "float" else [int(p.low), int(p.high)]
        else:
            continue  # the search stage reports a malformed space entry
        for value in values:
            trial = cfg.copy()
            with open_dict(trial):
                OmegaConf.update(trial, p.key, value, merge=False)
            try:
                _validate_groups(trial)
                if str(cfg.stage) in ("attack", "search"):
                    validate_references(trial)
            except Exception as err:  # noqa: BLE001 - any rejection of the value, reported with its key
                allowed = f"; choices given: {list(p.choices or [])}" if p.type == "categorical" else ""
                raise ValueError(
                    f"search space {p.key}: the value {value!r} would fail every trial that draws it: {err}{allowed}"
                ) from err


def validate_data(cfg: DictConfig) -> None:
    """Load the data set (as the stages will) to check its files and `attack.n_audit` against the
    split sizes before any model trains."""
    from pipeline.context import load_data

    try:
        load_data(cfg)
    except ValueError as err:
        if "n_audit" in str(err):
            raise ValueError(f"attack.n_audit: {err}") from err
        raise


_MISSING = object()


def validate_compress(c: CompressConfig) -> None:
    from pipeline.compress import METHODS  # the registry (pipeline.compress imports this module)

    _check_choice("compress.method", c.method, tuple(METHODS))
    if not 0.0 < c.density <= 1.0:
        raise ValueError(f"compress.density must be in (0, 1], got {c.density}")
    if c.epochs is not None:
        _check_count("compress.epochs", c.epochs)
    _check_count("compress.update_every", c.update_every)
    _check_count("compress.n_candidates", c.n_candidates)
    _check_count("compress.probe_steps", c.probe_steps)
    if not 0.0 <= c.stop_fraction <= 1.0:
        raise ValueError(f"compress.stop_fraction must be in [0, 1], got {c.stop_fraction}")
    _check_choice("compress.init", c.init, INITS)
    _check_choice("compress.variant", c.variant, VARIANTS)
    _check_choice("compress.selection.rule", c.selection.rule, SELECTION_RULES)
    for m in c.safety.mmia_members:
        _check_choice("compress.safety.mmia_members entry", m, ("metric", "bmia", "wmia"))
    _check_choice("compress.safety.mmia_combine", c.safety.mmia_combine, MMIA_COMBINES)
    _check_count("compress.safety.attacker_epochs", c.safety.attacker_epochs)
    _check_count("compress.safety.attacker_refresh_epochs", c.safety.attacker_refresh_epochs, 0)
    _check_choice("compress.adversarial.kind", c.adversarial.kind, ADVERSARIAL_KINDS)
    if c.adversarial.lam < 0:
        raise ValueError(f"compress.adversarial.lam must be >= 0, got {c.adversarial.lam}")
    if not 0.0 <= c.adversarial.warmup_fraction < 1.0:
        raise ValueError(
            f"compress.adversarial.warmup_fraction must be in [0, 1), got {c.adversarial.warmup_fraction}"
        )
    if c.distill.temperature <= 0 or not 0.0 <= c.distill.weight <= 1.0:
        raise ValueError(
            f"compress.distill needs temperature > 0 and weight in [0, 1], got "
            f"{c.distill.temperature} and {c.distill.weight}"
        )
    if c.dp.epsilon <= 0 or c.dp.max_grad_norm <= 0:
        raise ValueError(f"compress.dp needs epsilon > 0 and max_grad_norm > 0, got {c.dp.epsilon}, {c.dp.max_grad_norm}")
    if not 0.0 < c.safety.holdout_fraction < 1.0:
        raise ValueError(
            f"compress.safety.holdout_fraction must be in (0, 1), got {c.safety.holdout_fraction}"
        )
    sel = c.selection
    if min(sel.lam, sel.delta, sel.z) < 0:
        raise ValueError(
            f"compress.selection lam, delta and z must be >= 0, got {sel.lam}, {sel.delta}, {sel.z}"
        )
    if not c.strategies:
        raise ValueError("compress.strategies must list at least one {prune, grow} strategy")
    from sparse import DENSITY_SCHEDULES, GROW_CRITERIA, PRUNE_CRITERIA, REGROWTH_SCHEDULES

    for i, st in enumerate(c.strategies):  # checked here, not at the first mask update after training
        _check_choice(f"compress.strategies[{i}].prune", st.prune, PRUNE_CRITERIA)
        _check_choice(f"compress.strategies[{i}].grow", st.grow, GROW_CRITERIA)
    ds = c.density_schedule
    _check_choice("compress.density_schedule.kind", ds.kind, DENSITY_SCHEDULES)
    _check_choice("compress.regrowth.kind", c.regrowth.kind, REGROWTH_SCHEDULES)
    if not 0.0 < ds.start <= 1.0:
        raise ValueError(f"compress.density_schedule.start must be in (0, 1], got {ds.start}")
    if not 0.0 <= ds.begin < ds.end <= 1.0:
        raise ValueError(
            f"compress.density_schedule window [{ds.begin}, {ds.end}] must satisfy 0 <= begin < end <= 1"
        )
    r = c.regrowth
    if not (0.0 <= r.end < 1.0 and 0.0 <= r.start < 1.0):
        raise ValueError(f"compress.regrowth start/end must be in [0, 1), got {r.start}/{r.end}")
