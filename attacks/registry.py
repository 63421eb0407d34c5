"""The attack registry: every attack by name, built from validated parameters.

Names map to attack classes (`attacks.inputs.Attack`); `make_attack` checks names and
parameters and says what is valid. Each attack declares what it needs, so callers decide
what to compute from the registry, not from names: `requires` (the `AttackInputs` fields it
cannot run without), optionally `wants` (fields it uses when the caller can provide them)
and `needs_grads` (signals with last-layer gradients). `needs(specs)` sums them up.
`attacks.mmia` registers itself (it builds its member attacks through this module).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Union

from attacks.inputs import Attack
from attacks.lira import LiRAOffline, LiRAOnline
from attacks.metric_attacks import (
    ConfidenceAttack,
    EntropyAttack,
    LossAttack,
    MaxConfidenceAttack,
    ModifiedEntropyAttack,
)
from attacks.nn import NNBlackBoxAttack, NNWhiteBoxAttack
from attacks.rmia import RMIA
from attacks.shadow import ShadowAttack

ATTACKS: dict[str, type] = {
    "loss": LossAttack,
    "confidence": ConfidenceAttack,
    "max_confidence": MaxConfidenceAttack,
    "entropy": EntropyAttack,
    "modified_entropy": ModifiedEntropyAttack,
    "lira_offline": LiRAOffline,
    "lira_online": LiRAOnline,
    "rmia": RMIA,
    "nn_blackbox": NNBlackBoxAttack,
    "nn_whitebox": NNWhiteBoxAttack,
    "shadow": ShadowAttack,
}


# what every attack class declares (`attacks.inputs.Attack`), beside `fit` and `score`
DECLARED = ("requires", "wants", "needs_grads")


def register(name: str, cls: type) -> type:
    """Add an attack class to the registry; a taken name, or a class that does not declare what it
    needs (`DECLARED`) or lacks `fit`/`score`, raises."""
    if name in ATTACKS and ATTACKS[name] is not cls:
        raise ValueError(f"attack name {name!r} is already registered to {ATTACKS[name].__name__}")
    missing = [a for a in (*DECLARED, "fit", "score") if not hasattr(cls, a)]
    if missing:
        raise ValueError(
            f"attack {name!r} ({cls.__name__}) does not declare {missing}: an attack class sets "
            "requires and wants (tuples of AttackInputs fields) and needs_grads (bool), and defines fit and score"
        )
    ATTACKS[name] = cls
    return cls


def make_attack(name: str, **params: Any) -> Attack:
    """An attack from the registry; unknown names and parameters raise, listing valid ones."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid: {sorted(ATTACKS)}")
    cls = ATTACKS[name]
    sig = inspect.signature(cls)
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    valid = [p for p in sig.parameters if p != "self"]
    unknown = [p for p in params if p not in valid]
    if unknown and not accepts_any:
        raise ValueError(
            f"attack {name!r} got unknown parameter(s) {unknown}; valid: {valid or 'none'}"
        )
    attack = cls(**params)
    attack.name = name
    return attack


AttackSpec = Union[Sequence[str], Mapping[str, Mapping[str, Any]]]


def _specs(attacks: AttackSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """(display name, registry name, params); a dict entry may set "attack" to reuse a class."""
    if isinstance(attacks, str):
        raise ValueError(
            f"attacks must be a list of names or a dict name -> params, got the string {attacks!r}"
        )
    out = []
    if isinstance(attacks, Mapping):
        for label, params in attacks.items():
            p = dict(params or {})
            out.append((str(label), str(p.pop("attack", label)), p))
    else:
        out = [(str(a), str(a), {}) for a in attacks]
    if not out:
        raise ValueError(f"no attacks given; valid: {sorted(ATTACKS)}")
    unknown = [reg for _, reg, _ in out if reg not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; valid: {sorted(ATTACKS)}")
    return out


def build_specs(attacks: AttackSpec) -> list[tuple[str, Attack]]:
    """Every attack of `attacks` built once, by its label: unknown names, parameters and values
    raise now (before any model is trained), each error naming the attack it came from."""
    built = []
    for label, reg, params in _specs(attacks):
        try:
            built.append((label, make_attack(reg, **params)))
        except (ValueError, TypeError) as err:
            raise ValueError(f"attack {label!r}: {err}") from err
    return built


def check_specs(attacks: AttackSpec) -> None:
    """Raise now what `build_specs` would (the attacks themselves are not kept)."""
    build_specs(attacks)


# AttackInputs fields that come from reference (shadow) models
REFERENCE_INPUTS = frozenset({"references", "reference_in", "population_references", "shadow_train"})


def uses_references(attack: Attack) -> bool:
    """Whether a built attack reads reference (shadow) models (it requires or wants one of
    `REFERENCE_INPUTS`)."""
    return bool(needs_of(attack)[0] & REFERENCE_INPUTS)


def needs_in_references(attack: Attack) -> bool:
    """Whether it needs references that trained on the audit points themselves (IN for some of
    them: online attacks), i.e. requires `reference_in`."""
    return "reference_in" in attack.requires


def needs_of(attack: Attack) -> tuple[frozenset[str], bool]:
    """The inputs one built attack requires or wants, and whether it needs last-layer gradients."""
    return frozenset(attack.requires) | frozenset(attack.wants), bool(attack.needs_grads)


def needs(attacks: AttackSpec) -> tuple[frozenset[str], bool]:
    """What the attacks of `attacks` need together: input fields, and whether gradients."""
    fields: frozenset[str] = frozenset()
    grads = False
    for _, reg, params in _specs(attacks):
        f, g = needs_of(make_attack(reg, **params))
        fields, grads = fields | f, grads or g
    return fields, grads
