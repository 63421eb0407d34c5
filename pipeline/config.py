"""Typed schemas for the plain-data config groups, and the allowed values of their choices.

Hydra composes YAML into the root schema `RootConfig` (registered with Hydra's ConfigStore
and named first in conf/config.yaml's defaults), so a misspelled key or a wrong type fails at
composition with the key's name; at each stage boundary a group is read as its typed
dataclass (`to_schema`). A field's value rule (range, choices) is declared on it
(`training.rules.checked`); `pipeline.validation.validate` checks them, and the rules that
relate fields, up front, so bad input is reported before a single epoch runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional, TypeVar, cast

from omegaconf import MISSING, DictConfig, OmegaConf

from attacks.views import QUERY_VIEWS
from pipeline.results import TRIAL_METRICS
from training.recipes import (  # noqa: F401  (the recipe schemas, re-exported beside the rest)
    ADVERSARIAL_KINDS,
    DP_GRAD_SAMPLE_MODES,
    INITS,
    LR_SCHEDULES,
    MMIA_COMBINES,
    OPTIMIZERS,
    SELECTION_RULES,
    STRATEGY_DEFENCE_FIELDS,
    VARIANTS,
    AdversarialConfig,
    CompressConfig,
    DensityScheduleConfig,
    DistillConfig,
    DMPConfig,
    DPConfig,
    RegrowthConfig,
    RelaxLossConfig,
    SafetyConfig,
    SelectionConfig,
    StrategyConfig,
    TrainConfig,
)
from training.rules import checked

T = TypeVar("T")

SHADOW_RECIPES = ("dense", "matched")  # dense: the teacher's recipe; matched: the compress recipe
# the data reference models train on: population only (no audit point is ever IN: offline attacks),
# or population and every audit candidate, each candidate IN for exactly half the models (online LiRA)
SHADOW_POOLS = ("population", "with_candidates")
REFERENCES = ("dense", "matched", "both")  # attack.reference / attack.search_reference


@dataclass
class ShadowsConfig:
    n_models: int = checked(8, ge=0)
    member_fraction: float = checked(0.5, gt=0, lt=1)  # each shadow trains on this fraction of `population`
    recipe: str = checked("dense", choices=SHADOW_RECIPES)  # dense: the teacher's recipe
    pool: str = checked("population", choices=SHADOW_POOLS)  # population | with_candidates


@dataclass
class AttackConfig:
    audit: dict[str, Any] = field(default_factory=lambda: {"loss": {}, "lira_offline": {}})
    primary: str = "max"  # attack whose numbers become attack_*; "max" = strongest per metric
    n_audit: Optional[int] = None  # audit members = audit non-members; default: all of `test`
    n_bootstrap: int = checked(0, ge=100, also=(0,), why="(0: off)")
    n_population: int = 1000  # population points for RMIA's comparison and Shokri's attack training
    reference: str = checked("matched", choices=REFERENCES)  # reference models of a final audit: dense | matched (compress recipe) | both
    search_reference: str = checked("dense", choices=REFERENCES)  # ... of the audits inside a search's trials (speed)
    # LiRA's extra queries on image sets that train with augmentation (attacks.views): none, the
    # mirror, or the mirror and shifts by query_shift pixels (9 extra queries)
    query_views: str = checked("flip", choices=QUERY_VIEWS)
    query_shift: int = checked(2, ge=1)


@dataclass
class SearchParam:
    key: str = "???"
    type: str = "float"  # float | int | categorical
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Optional[list[Any]] = None

    def bounds(self) -> tuple[float, float]:
        """(low, high) of a float or int range (`validate_space` refuses a range without both)."""
        if self.low is None or self.high is None:
            raise ValueError(f"search space key {self.key!r}: {self.type} needs low and high")
        return self.low, self.high

    def choice_list(self) -> list[Any]:
        """A categorical entry's choices (`validate_space` refuses an entry without any)."""
        if not self.choices:
            raise ValueError(f"search space key {self.key!r}: categorical needs a non-empty choices list")
        return list(self.choices)


# what the search may optimise or constrain, and which way (declared with the trial metrics)
OBJECTIVE_DIRECTIONS = {m.name: m.objective for m in TRIAL_METRICS if m.objective is not None}


SEARCH_ON_MISMATCH = ("refuse", "new")


@dataclass
class SearchConfig:
    n_trials: int = checked(8, ge=1)
    study_name: str = "default"
    storage: str = "sqlite:///mlruns/optuna.db"
    objectives: list[str] = checked(default_factory=lambda: ["accuracy", "attack_auc"], choices=tuple(OBJECTIVE_DIRECTIONS))
    population_size: int = checked(4, ge=2)
    space: list[SearchParam] = field(default_factory=list)
    n_workers: Any = checked(1, ge=1, also=("auto",))  # auto | worker processes on this machine (threads.resolve_workers)
    heartbeat_interval: int = checked(5, ge=1, why="(an interval or timeout)")  # seconds; RDB storages only
    # seconds without a heartbeat before a RUNNING trial is failed and retried
    grace_period: int = checked(30, ge=1, why="(an interval or timeout)")
    constraints: dict[str, float] = field(default_factory=dict)  # e.g. {accuracy_min: 0.9}
    # resuming a study recorded with another config or data: refuse | new (a study of a derived name)
    on_mismatch: str = checked("refuse", choices=SEARCH_ON_MISMATCH)


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
    set_audit: bool = True  # with study_name: audit the study's Pareto front as one release (pipeline.analysis.set_audit)
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

    action: str = checked("list", choices=CACHE_ACTIONS)  # list | verify | clear
    stages: list[str] = checked(default_factory=list, choices=CACHE_STAGES)  # only these stages' entries; empty: all
    keys: list[str] = field(default_factory=list)  # only these keys (a prefix is enough)
    damaged: bool = False  # only damaged and moved-aside entries
    all: bool = False  # clear: every entry (a clear needs a selection)


def as_dictconfig(node: Any, what: str = "the config") -> DictConfig:
    """`node` (e.g. `OmegaConf.create`'s or `merge`'s result) as the mapping config it must be."""
    if not isinstance(node, DictConfig):
        raise TypeError(f"{what} must be a mapping of keys to values, got {type(node).__name__}")
    return node


def as_dict(node: Any, what: str = "the config") -> dict[str, Any]:
    """A mapping config node as a plain dict, interpolations resolved (`OmegaConf.to_container`)."""
    plain = OmegaConf.to_container(as_dictconfig(node, what), resolve=True)
    if not isinstance(plain, dict):  # a DictConfig set to null
        raise TypeError(f"{what} must be a mapping of keys to values, got {plain!r}")
    return cast(dict[str, Any], plain)  # our configs' keys are strings (YAML and the schemas)


def to_schema(schema: type[T], node: Any) -> T:
    """Merge a config node into its dataclass schema and return the typed object."""
    if OmegaConf.is_config(node):  # resolve interpolations against the full config first
        node = OmegaConf.to_container(node, resolve=True)
    merged = as_dictconfig(OmegaConf.merge(OmegaConf.structured(schema), node))
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
    call_timeout_s: float = checked(60.0, ge=1e-3, why="(an interval or timeout)")  # seconds
    # log each compress/attack run's and search trial's compressed model as an MLflow Model
    # (`pipeline.export.mlflow_model`); off for large sweeps (cost: docs/manual.md "Ship the compressed model")
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
