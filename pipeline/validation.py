"""The one validation pass: every value rule the schemas' types cannot express, checked on the
composed config before any training, store or tracked run (`validate`).

Each check raises a ValueError naming the key, the bad value and the allowed values; the
allowed values come from the registries (compress methods, data sets, attacks) and from the
choices beside the schemas (`pipeline.config`).
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, ValidationError

from pipeline.config import (
    ADVERSARIAL_KINDS,
    CACHE_ACTIONS,
    CACHE_STAGES,
    DP_GRAD_SAMPLE_MODES,
    INITS,
    LR_SCHEDULES,
    MMIA_COMBINES,
    OPTIMIZERS,
    REFERENCES,
    SELECTION_RULES,
    SHADOW_POOLS,
    SHADOW_RECIPES,
    STRATEGY_DEFENCE_FIELDS,
    VARIANTS,
    AttackConfig,
    CacheCommandConfig,
    CompressConfig,
    RootConfig,
    SearchConfig,
    ShadowsConfig,
    TrainConfig,
    to_schema,
)

# the search's rules (the search stage and tests import validate_search from here too)
from pipeline.search_validation import check_choice as _check_choice
from pipeline.search_validation import validate_search, validate_search_group
from training.models import MODELS


def validate_cache_command(c: CacheCommandConfig) -> None:
    _check_choice("cache.action", c.action, CACHE_ACTIONS)
    for name in c.stages:
        _check_choice("cache.stages entry", str(name), CACHE_STAGES)
    if c.action == "clear" and not (c.stages or c.keys or c.damaged or c.all):
        raise ValueError(
            "cache.action=clear needs a selection: cache.stages=[teacher,...], cache.keys=[<key prefix>,...], "
            "cache.damaged=true (damaged and moved-aside entries) or cache.all=true (everything)"
        )


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
    validate_schema(cfg)
    validate_numbers(cfg)
    if str(cfg.stage) == "cache":
        validate_cache_command(to_schema(CacheCommandConfig, cfg.cache))
    _validate_groups(cfg)
    validate_names(cfg)
    stage = str(cfg.stage)
    if stage in ("attack", "search"):
        validate_references(cfg)
    if stage == "search":
        validate_search(cfg, to_schema(SearchConfig, cfg.search))
        validate_search_values(cfg)
    if stage == "export":
        from pipeline.config import ExportConfig, TrackingConfig
        from pipeline.export.checks import validate_export

        ec = validate_export(to_schema(ExportConfig, cfg.export), to_schema(TrackingConfig, cfg.tracking))
        for key, value in (("export.run_id", ec.run_id), ("export.register", ec.register)):
            if value is not None:
                validate_name(key, value)
    if data and stage in DATA_STAGES:
        validate_data(cfg)


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
    """Every number of the config is finite (an `inf` learning rate or a NaN bound would only fail
    deep inside training), and every interval and timeout is positive."""
    # unresolved: an interpolation copies another key (checked as itself), and one that cannot
    # resolve for this data set (text_bag's ${dataset.vocab_size}) is another check's to name
    bad = [(k, v) for k, v in _leaves(OmegaConf.to_container(cfg, resolve=False)) if isinstance(v, float)
           and not math.isfinite(v)]
    if bad:
        key, value = bad[0]
        raise ValueError(f"{key}={value}: every number in the config must be finite (not inf or nan)")
    for key, minimum in POSITIVE_SETTINGS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not float(value) >= minimum:
            raise ValueError(f"{key} must be >= {minimum} (an interval or timeout), got {value}")


# intervals and timeouts (seconds): 0 would spin, or time out every call at once
POSITIVE_SETTINGS = {"search.heartbeat_interval": 1, "search.grace_period": 1, "tracking.call_timeout_s": 1e-3}


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


def _validate_groups(cfg: DictConfig) -> None:
    validate_device(str(cfg.runtime.get("device", "cpu")))
    from training import model_adapter

    model_adapter.resolve_class(str(cfg.model.get("_target_", "")))  # imported, never called
    from pipeline.datasets import check_target  # the registry (it imports torch: not at startup)

    check_target(str(cfg.dataset.name), cfg.dataset.get("_target_"))
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
    validate_pool(shadows)
    compress = to_schema(CompressConfig, cfg.compress)
    validate_compress(compress)
    validate_method_model(compress.method, str(cfg.model.get("_target_", "")))
    validate_reference_set(cfg)
    attack = to_schema(AttackConfig, cfg.attack)
    validate_attack(attack)
    _check_choice("attack.search_reference", attack.search_reference, REFERENCES)
    if attack.n_bootstrap and attack.n_bootstrap < 100:
        raise ValueError(f"attack.n_bootstrap must be 0 (off) or >= 100, got {attack.n_bootstrap}")
    search = to_schema(SearchConfig, cfg.search)
    _check_count("search.n_trials", search.n_trials)
    if str(search.n_workers).strip().lower() != "auto":  # auto: resolved at the entry point
        _check_count("search.n_workers", search.n_workers)
    _check_count("search.population_size", search.population_size, 2)
    if search.grace_period <= search.heartbeat_interval:
        raise ValueError(
            f"search.grace_period ({search.grace_period}) must exceed search.heartbeat_interval "
            f"({search.heartbeat_interval})"
        )
    validate_search_group(search)


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


def validate_pool(shadows: ShadowsConfig) -> None:
    """`shadows.pool=with_candidates` draws the references in complementary pairs (each audit
    candidate IN for exactly half of them): an even count, each model on half of the pool."""
    _check_choice("shadows.pool", shadows.pool, SHADOW_POOLS)
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


ONLINE_ATTACKS = ("lira_online",)  # attacks that need IN references for every audit point


def validate_references(cfg: DictConfig) -> None:
    """Reference-model attacks (LiRA, RMIA, Shokri's shadow attack) need `shadows.n_models >= 1`."""
    attack = to_schema(AttackConfig, cfg.attack)
    shadows = to_schema(ShadowsConfig, cfg.shadows)
    needing = [n for n, p in attack.audit.items() if (p or {}).get("attack", n) in REFERENCE_ATTACKS]
    online = [n for n, p in attack.audit.items() if (p or {}).get("attack", n) in ONLINE_ATTACKS]
    if online and shadows.pool != "with_candidates":
        raise ValueError(
            f"attack.audit runs {online}, which need references that trained on the audit candidates; set "
            f"shadows.pool=with_candidates (valid: {list(SHADOW_POOLS)}) or use lira_offline"
        )
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
    from pipeline.context import check_user_inputs, load_data

    try:
        bundle = load_data(cfg)
    except ValueError as err:
        if "n_audit" in str(err):
            raise ValueError(f"attack.n_audit: {err}") from err
        raise
    check_user_inputs(cfg, bundle)  # the user's model class and checkpoint (issue 24)
    validate_model(cfg, bundle)  # the package's models: their constructors' checks


_MISSING = object()


def _validate_defences(c: CompressConfig, method: Any) -> None:
    """RelaxLoss, DMP and the strategies' defence overrides: ranges, and the methods they apply to."""
    rl, dmp = c.relaxloss, c.dmp
    if not rl.alpha > 0 or not 0.0 < rl.upper <= 1.0:
        raise ValueError(
            f"compress.relaxloss needs alpha > 0 (the target training loss) and upper in (0, 1], got "
            f"{rl.alpha} and {rl.upper}"
        )
    shared = [n for n, m in _methods().items() if m.uses_shared_step]
    if rl.enabled and not method.uses_shared_step:
        raise ValueError(
            f"compress.relaxloss.enabled=true applies to the methods trained by the sparse loop {shared}; "
            f"compress={c.method} does not train through it"
        )
    if not dmp.temperature > 0 or not 0.0 <= dmp.member_weight < 1.0 or not 0.0 < dmp.low_entropy_fraction <= 1.0:
        raise ValueError(
            f"compress.dmp needs temperature > 0, member_weight in [0, 1) and low_entropy_fraction in (0, 1], "
            f"got {dmp.temperature}, {dmp.member_weight} and {dmp.low_entropy_fraction}"
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
        if st.distill_weight is not None and not 0.0 <= st.distill_weight <= 1.0:
            raise ValueError(f"compress.strategies[{i}].distill_weight must be in [0, 1], got {st.distill_weight}")
        if st.distill_temperature is not None and not st.distill_temperature > 0:
            raise ValueError(
                f"compress.strategies[{i}].distill_temperature must be > 0, got {st.distill_temperature}"
            )
        if st.relaxloss_alpha is not None and st.relaxloss_alpha < 0:
            raise ValueError(
                f"compress.strategies[{i}].relaxloss_alpha must be >= 0 (0: no RelaxLoss), got {st.relaxloss_alpha}"
            )


def _methods() -> dict[str, Any]:
    from training.compress import METHODS  # the registry (training.compress imports this module)

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


def validate_reference_set(cfg: DictConfig) -> None:
    """A method that trains on the defender's reference split needs `dataset.reference_size` > 0."""
    c = to_schema(CompressConfig, cfg.compress)
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


def validate_compress(c: CompressConfig) -> None:
    from training.compress import METHODS  # the registry (training.compress imports this module)

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
    _check_choice("compress.dp.grad_sample_mode", c.dp.grad_sample_mode, DP_GRAD_SAMPLE_MODES)
    for name in ("tune_lr", "tune_max_grad_norm"):
        bad = [v for v in getattr(c.dp, name) if not float(v) > 0]
        if bad:
            raise ValueError(f"compress.dp.{name} values must be > 0, got {list(getattr(c.dp, name))}")
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
    _validate_defences(c, METHODS[c.method])
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
