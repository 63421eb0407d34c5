"""The one validation pass (`validate`), run once at the entry point (`run_stage`) on the composed
config before any training, store or tracked run.

A field's own rule (range, choices) is declared on its schema dataclass (`training.rules.checked`
in `training.recipes` and `pipeline.config`) and checked by one walker (`check_rules`); the
rules written here relate several fields, or need the registries (compress methods, attacks,
data sets), the machine or the data. Each raises a ValueError naming the key, the bad value and
the allowed values. A search's space is checked against the same rules
(`pipeline.search_validation.validate_search_values`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, ValidationError

from pipeline.config import (
    STRATEGY_DEFENCE_FIELDS,
    AttackConfig,
    CacheCommandConfig,
    CompressConfig,
    RootConfig,
    SearchConfig,
    ShadowsConfig,
    TrackingConfig,
    TrainConfig,
    to_schema,
)

# the search's rules (tests import validate_search from here too)
from pipeline.search_validation import (
    validate_search,
    validate_search_group,
    validate_search_values,
)
from training.models import MODELS
from training.rules import check_rules

# the groups whose schemas declare value rules, read as typed objects once per check
RULED_GROUPS: dict[str, type] = {
    "train": TrainConfig,
    "shadows": ShadowsConfig,
    "attack": AttackConfig,
    "compress": CompressConfig,
    "search": SearchConfig,
    "tracking": TrackingConfig,
    "cache": CacheCommandConfig,
}
# stages that read the data set (and so check `attack.n_audit` against its splits first)
DATA_STAGES = ("teacher", "shadows", "compress", "attack", "search")


def validate(cfg: DictConfig, data: bool = False) -> None:
    """Check the composed config before any training; raises ValueError naming the bad value.

    Every value a stage will reject later is checked here, so a refused command leaves
    nothing behind (no trained model, no study, no tracked run). `data=True` also loads the
    data set (cached per process) to check the split sizes against `attack.n_audit`.
    """
    validate_schema(cfg)
    validate_numbers(cfg)
    groups = typed_groups(cfg)
    for name, group in groups.items():
        check_rules(group, name)  # every field's declared range and choices
    stage = str(cfg.stage)
    if stage == "cache":
        validate_cache_command(groups["cache"])
    validate_environment(cfg)
    validate_cross_field(cfg, groups)
    validate_names(cfg)
    if stage == "search":
        validate_search(cfg, groups["search"])
        validate_search_values(cfg, groups["search"].space, _relate(groups))
    if stage == "export":
        from pipeline.config import ExportConfig
        from pipeline.export.checks import validate_export

        ec = validate_export(to_schema(ExportConfig, cfg.export), groups["tracking"])
        for key, value in (("export.run_id", ec.run_id), ("export.register", ec.register)):
            if value is not None:
                validate_name(key, value)
    if data and stage in DATA_STAGES:
        validate_data(cfg)


def typed_groups(cfg: DictConfig) -> dict[str, Any]:
    return {name: to_schema(schema, cfg[name]) for name, schema in RULED_GROUPS.items()}


def validate_schema(cfg: DictConfig) -> None:
    """Every key and type against the root schema `RootConfig`. Hydra checks them while composing;
    this also covers keys added with `+` (which Hydra lets through) and a config composed
    without the schema (a logged config.yaml run again with --config-name)."""
    try:
        OmegaConf.merge(OmegaConf.structured(RootConfig), OmegaConf.to_container(cfg, resolve=False))
    except (ConfigKeyError, ValidationError) as err:
        where = getattr(err, "full_key", None) or "?"
        first = str(err).splitlines()[0]
        raise ValueError(f"config key {where}: {first} (the schemas are in pipeline/config.py)") from err


def validate_numbers(cfg: DictConfig) -> None:
    """Every number of the config is finite: an `inf` learning rate or a NaN bound would only fail
    deep inside training (and NaN passes no range: each comparison with it is false)."""
    # unresolved: an interpolation copies another key (checked as itself), and one that cannot
    # resolve for this data set (text_bag's ${dataset.vocab_size}) is another check's to name
    bad = [(k, v) for k, v in _leaves(OmegaConf.to_container(cfg, resolve=False)) if isinstance(v, float)
           and not math.isfinite(v)]
    if bad:
        key, value = bad[0]
        raise ValueError(f"{key}={value}: every number in the config must be finite (not inf or nan)")


def _leaves(node: Any, prefix: str = ""):
    """(dotted key, value) of every scalar in a plain config container; list items as key[i]."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


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


def validate_environment(cfg: DictConfig) -> None:
    """What the machine and the registries must have: the device, the model class (imported,
    never called) and the data set's loader."""
    validate_device(str(cfg.runtime.get("device", "cpu")))
    from training import model_adapter

    model_adapter.resolve_class(str(cfg.model.get("_target_", "")))
    from pipeline.datasets import check_target  # the registry (it imports torch: not at startup)

    check_target(str(cfg.dataset.name), cfg.dataset.get("_target_"))


def validate_cross_field(cfg: DictConfig, groups: dict[str, Any]) -> None:
    """The rules that relate fields (of one group or several) or need a registry; `groups` are
    `cfg`'s typed groups (`typed_groups`)."""
    validate_pool(groups["shadows"])
    compress = groups["compress"]
    _validate_compress_fields(compress)
    validate_method_model(compress.method, str(cfg.model.get("_target_", "")))
    validate_reference_set(cfg, compress)
    validate_attack(groups["attack"])
    validate_search_group(groups["search"])
    if str(cfg.stage) in ("attack", "search"):
        validate_references(groups["attack"], groups["shadows"])


def _relate(groups: dict[str, Any]) -> Callable[[DictConfig, str], None]:
    """The cross-field rules on a search trial's config (`key` set): only `key`'s group is read
    again, typed; the others are `groups`, the run's."""

    def relate(trial: DictConfig, key: str) -> None:
        group = key.split(".")[0]
        typed = {**groups, group: to_schema(RULED_GROUPS[group], trial[group])} if group in RULED_GROUPS else groups
        validate_cross_field(trial, typed)

    return relate


def validate_data(cfg: DictConfig) -> None:
    """Load the data set (as the stages will) to check its files and `attack.n_audit` against the
    split sizes before any model trains."""
    from pipeline.context import check_user_inputs, load_data

    try:
        bundle = load_data(cfg)
    except ValueError as err:
        if cfg.attack.get("n_audit") is not None and _loads_without_n_audit(cfg):
            raise ValueError(f"attack.n_audit: {err}") from err  # the data set is fine: n_audit is not
        raise
    check_user_inputs(cfg, bundle)  # the user's model class and checkpoint (issue 24)
    validate_model(cfg, bundle)  # the package's models: their constructors' checks


def _loads_without_n_audit(cfg: DictConfig) -> bool:
    from pipeline.context import load_data

    trial = cfg.copy()
    with open_dict(trial):
        trial.attack.n_audit = None
    try:
        load_data(trial)
    except ValueError:
        return False
    return True


def validate_model(cfg: DictConfig, data: Any) -> None:
    """One of the package's models builds for the data's shape (its constructor's checks, e.g. hidden
    sizes >= 1), on the meta device: no weights are allocated and no random numbers drawn. A user's
    class is built and checked by `pipeline.user_checks` (issue 24)."""
    import dataclasses

    import torch

    from pipeline.context import RunContext, build_model
    from training.models import MODELS

    if str(cfg.model.get("_target_", "")) not in MODELS:
        return

    ctx = dataclasses.replace(RunContext.build(cfg), device=torch.device("meta"))
    try:
        with torch.device("meta"):
            build_model(ctx, data, "validate")
    except Exception as err:  # noqa: BLE001 - any constructor rejection, reported with the group
        why = err.__cause__ or err  # Hydra wraps the constructor's own error
        raise ValueError(
            f"model {cfg.model.get('_target_')!r} cannot be built from the model group: {type(why).__name__}: {why}"
        ) from err


def validate_cache_command(c: CacheCommandConfig) -> None:
    if c.action == "clear" and not (c.stages or c.keys or c.damaged or c.all):
        raise ValueError(
            "cache.action=clear needs a selection: cache.stages=[teacher,...], cache.keys=[<key prefix>,...], "
            "cache.damaged=true (damaged and moved-aside entries) or cache.all=true (everything)"
        )


def validate_attack(attack: AttackConfig) -> None:
    """The audit's attacks (each built once: unknown names, parameters and values raise) and `primary`."""
    import attacks

    try:
        attacks.check_specs(attack.audit)
    except ValueError as err:
        raise ValueError(f"attack.audit: {err}") from err
    if attack.primary != "max" and attack.primary not in attack.audit:
        raise ValueError(f"attack.primary={attack.primary!r} must be 'max' or one of {list(attack.audit)}")


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
    for key in ("experiment_name", "search.study_name", "tracking.experiment", "report.experiment_name",
                "report.study_name", "compare.experiment_name", "compare.study"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            validate_name(key, value)


def validate_pool(shadows: ShadowsConfig) -> None:
    """`shadows.pool=with_candidates` draws the references in complementary pairs (each audit
    candidate IN for exactly half of them): an even count, each model on half of the pool."""
    if shadows.pool == "with_candidates":
        if shadows.n_models % 2:
            raise ValueError(
                f"shadows.pool=with_candidates trains references in complementary pairs; shadows.n_models "
                f"must be even, got {shadows.n_models}"
            )
        if shadows.member_fraction != 0.5:
            raise ValueError(
                "shadows.pool=with_candidates needs shadows.member_fraction=0.5 (each model on one half of "
                f"the pool, its pair on the other), got {shadows.member_fraction}"
            )


def validate_references(attack: AttackConfig, shadows: ShadowsConfig) -> None:
    """Attacks that read reference models (LiRA, RMIA, Shokri's shadow attack: what each declares,
    `attacks.registry.uses_references`) need `shadows.n_models >= 1`; online ones need references
    that trained on the audit candidates."""
    from attacks import registry

    built = registry.build_specs(attack.audit)
    needing = [n for n, a in built if registry.uses_references(a)]
    online = [n for n, a in built if registry.needs_in_references(a)]
    if online and shadows.pool != "with_candidates":
        raise ValueError(
            f"attack.audit runs {online}, which need references that trained on the audit candidates; set "
            f"shadows.pool=with_candidates (valid: ['population', 'with_candidates']) or use lira_offline"
        )
    if needing and shadows.n_models < 1:
        raise ValueError(
            f"shadows.n_models=0 but attack.audit runs {needing}, which need reference models; set "
            f"shadows.n_models >= 1 (default 8) or remove them from attack.audit (e.g. ~attack.audit.{needing[0]})"
        )


def validate_compress(c: CompressConfig) -> None:
    """A typed compress group: its declared rules and the rules relating its fields."""
    check_rules(c, "compress")
    _validate_compress_fields(c)


def _validate_compress_fields(c: CompressConfig) -> None:
    if not c.strategies:
        raise ValueError("compress.strategies must list at least one {prune, grow} strategy")
    ds = c.density_schedule
    if not ds.begin < ds.end:
        raise ValueError(
            f"compress.density_schedule window [{ds.begin}, {ds.end}] must satisfy 0 <= begin < end <= 1"
        )
    _validate_defences(c, _methods()[c.method])


def _validate_defences(c: CompressConfig, method: Any) -> None:
    """RelaxLoss, DMP and the strategies' defence overrides: the methods they apply to."""
    rl, dmp = c.relaxloss, c.dmp
    shared = [n for n, m in _methods().items() if m.uses_shared_step]
    if rl.enabled and not method.uses_shared_step:
        raise ValueError(
            f"compress.relaxloss.enabled=true applies to the methods trained by the sparse loop {shared}; "
            f"compress={c.method} does not train through it"
        )
    if method.uses_reference_set:
        if c.distill.enabled or c.adversarial.enabled:
            raise ValueError(
                f"compress={c.method} distils from the teacher on the reference set; it takes neither "
                "compress.distill.enabled nor compress.adversarial.enabled (set them false; "
                "compress.dmp.member_weight and compress.relaxloss shape its loss on the members)"
            )
        if rl.enabled and dmp.member_weight == 0:
            raise ValueError(
                f"compress.relaxloss relaxes the members' hard-label loss, which compress={c.method} with "
                "compress.dmp.member_weight=0 does not train on: set member_weight > 0 or relaxloss.enabled=false"
            )
    for i, st in enumerate(c.strategies):
        set_ = [k for k in STRATEGY_DEFENCE_FIELDS if getattr(st, k) is not None]
        if set_ and (not method.uses_shared_step or method.uses_reference_set):
            raise ValueError(
                f"compress.strategies[{i}] sets {set_}, the loss a candidate trains with; that applies to "
                f"{[n for n in shared if not _methods()[n].uses_reference_set]}, not compress={c.method}"
            )


def _methods() -> dict[str, Any]:
    from training.compress import METHODS  # the registry (it imports torch: read when checked)

    return METHODS


def validate_method_model(method: str, target: str) -> None:
    """A method that trains only some models (`supported_models`, e.g. DP-SGD) refuses the others."""
    supported = _methods()[method].supported_models
    if supported is None or target in supported or target not in MODELS:
        return  # a user's class: pipeline.user_checks checks its modules once it is built
    why = _methods()[method].unsupported_models.get(target, "it was not checked with this method")
    raise ValueError(
        f"compress={method} cannot train model {target!r}: {why}; models it trains: {list(supported)}"
    )


def validate_reference_set(cfg: DictConfig, c: CompressConfig) -> None:
    """A method that trains on the defender's reference split needs `dataset.reference_size` > 0
    (`dataset` is a `_target_` group: no schema declares its rules)."""
    size = cfg.dataset.get("reference_size", 0) or 0
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"dataset.reference_size must be an integer >= 0 (records), got {size!r}")
    if _methods()[c.method].uses_reference_set and size == 0:
        raise ValueError(
            f"compress={c.method} trains on the defender's reference split, which is empty: set "
            "+dataset.reference_size=N (records beyond the members, disjoint from every split; e.g. "
            "5000 on purchase_synth, which generates them; other data sets take them from pool records "
            "the split fractions leave unused)"
        )
