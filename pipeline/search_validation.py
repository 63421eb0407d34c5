"""The search's value rules: its space (keys exist, ranges make sense, every value a trial can
draw passes the searched field's rules), objectives and constraints, checked by the entry
point's validation pass (`pipeline.validation.validate`) before any storage, run or trial exists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from pipeline.config import OBJECTIVE_DIRECTIONS, RootConfig, SearchConfig, SearchParam
from training.rules import find_rule

_MISSING = object()


def _methods() -> dict[str, Any]:
    from training.compress import METHODS  # the registry (it imports torch: read when checked)

    return METHODS


def validate_search_group(search: SearchConfig) -> None:
    """Constraints name known metrics, each objective once (objectives and `on_mismatch` have
    their choices declared on `SearchConfig`); the grace period exceeds the heartbeat interval."""
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
    if len(set(search.objectives)) != len(search.objectives):
        raise ValueError(f"search.objectives lists an objective twice: {list(search.objectives)}")


def validate_space(cfg: DictConfig, space: list[SearchParam]) -> None:
    """Every key exists in the config and every range is sensible; raises before any trial runs."""
    for p in space:
        if OmegaConf.select(cfg, p.key, default=_MISSING) is _MISSING:
            raise ValueError(f"search space key {p.key!r} does not exist in the config")
        if p.type in ("float", "int"):
            if p.low is None or p.high is None:
                raise ValueError(f"search space key {p.key!r}: {p.type} needs low and high")
            if p.low > p.high:
                raise ValueError(f"search space key {p.key!r}: low={p.low} > high={p.high}")
            if p.type == "int" and not (float(p.low).is_integer() and float(p.high).is_integer()):
                raise ValueError(
                    f"search space key {p.key!r}: an int range needs whole-number bounds, got low={p.low}, "
                    f"high={p.high}"
                )
            if p.log and p.low <= 0:
                raise ValueError(
                    f"search space key {p.key!r}: a log range must have low > 0, got {p.low}"
                )
        elif p.type == "categorical":
            if not p.choices:
                raise ValueError(
                    f"search space key {p.key!r}: categorical needs a non-empty choices list"
                )
        else:
            raise ValueError(
                f"search space key {p.key!r}: unknown type {p.type!r}; valid: ['float', 'int', 'categorical']"
            )


def validate_search(cfg: DictConfig, s: SearchConfig) -> None:
    """The space (keys exist, ranges make sense, enough parameter sets, knobs that act under this
    config), checked before any storage, run or trial exists."""
    validate_space(cfg, s.space)  # the group's own rules: validate_search_group, for every stage
    n_sets = n_parameter_sets(s.space)
    if n_sets is not None and n_sets < s.n_trials:
        raise ValueError(
            f"search.n_trials={s.n_trials} but search.space has only {n_sets} distinct parameter "
            "sets (a set is never trained twice); lower search.n_trials or widen search.space"
        )
    keys = {p.key: p for p in s.space}
    if "compress.selection.lam" in keys:
        rule = keys.get("compress.selection.rule")
        rules = set(rule.choices or []) if rule is not None else {str(cfg.compress.selection.rule)}
        if "weighted" not in rules:
            raise ValueError(
                f"search space key 'compress.selection.lam' only acts under compress.selection.rule=weighted, "
                f"but every trial would use {sorted(rules)}; set compress.selection.rule=weighted or search it"
            )
    dmp_keys = sorted(k for k in keys if k.startswith("compress.dmp."))
    users = sorted(name for name, m in _methods().items() if m.uses_reference_set)
    if dmp_keys and str(cfg.compress.method) not in users:
        raise ValueError(f"search space keys {dmp_keys} only act under compress={' or '.join(users)} (a defence "
                         f"trained on a reference set), but every trial would use compress={cfg.compress.method}")


def validate_search_values(cfg: DictConfig, space: list[SearchParam], relate: Callable[[DictConfig, str], None]) -> None:
    """Every value a trial can draw is valid: each categorical choice and both ends of each numeric
    range against the searched field's declared rule (`training.rules`), then set in the config
    for `relate(trial_cfg, key)`, the rules that relate the field to others."""
    defaults = RootConfig()
    for p in space:
        if p.type == "categorical":
            values = list(p.choices or [])
        elif p.type in ("float", "int") and p.low is not None and p.high is not None:
            values = [p.low, p.high] if p.type == "float" else [int(p.low), int(p.high)]
        else:
            continue  # validate_space reports a malformed space entry
        rule = find_rule(defaults, p.key)
        for value in values:
            try:
                if rule is not None:
                    rule.check(p.key, value)
                trial = cfg.copy()
                with open_dict(trial):
                    OmegaConf.update(trial, p.key, value, merge=False)  # a typed config checks the type
                relate(trial, p.key)
            except (ValueError, OmegaConfBaseException) as err:
                raise ValueError(
                    f"search space {p.key}: the value {value!r} would fail every trial that draws it: {err}"
                ) from err


def n_parameter_sets(space: list[SearchParam]) -> int | None:
    """How many distinct parameter sets the space holds; None when infinite (a float range)."""
    n = 1
    for p in space:
        if p.type == "float":
            if p.low != p.high:
                return None
        elif p.type == "int":
            low, high = p.bounds()
            n *= int(high) - int(low) + 1
        else:
            n *= len(set(map(str, p.choice_list())))
    return n
