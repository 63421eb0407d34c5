"""Value rules declared on the schema dataclasses, and the one checker that walks them.

A field states its rule where it is declared, e.g.

    density: float = checked(0.05, gt=0, le=1)
    init: str = checked("erk", choices=INITS)
    stages: list[str] = checked(default_factory=list, choices=CACHE_STAGES)  # each entry

`check_rules(instance, "compress")` walks a schema instance (nested dataclasses, lists of them) and
raises a ValueError naming the full key (`compress.safety.holdout_fraction`), the bad value
and the allowed range or choices. Rules that relate several fields, or need the data, are code
in `pipeline.validation`. Pure: no config framework (the schemas in `training.recipes` and
`pipeline.config` both declare their rules with it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, Optional

RULE = "rule"  # the dataclass field metadata key


@dataclass(frozen=True)
class Rule:
    """A field's allowed values: a numeric interval (any of ge/gt/le/lt), or choices (a tuple, or a
    function returning one when the choices live in a registry), plus values allowed besides them
    (`also`: 0 for off, 'auto'). None always passes (an Optional field left unset). On a list
    field the rule holds for each entry."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: Optional[Sequence[Any] | Callable[[], Sequence[Any]]] = None
    also: tuple = ()
    why: str = ""  # said after the range, e.g. "(an interval or timeout)"

    def allowed_choices(self) -> Optional[tuple]:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def describe(self) -> str:
        """The allowed values in words: `in (0, 1]`, `>= 1`, `one of [...]` (after any `also`)."""
        choices = self.allowed_choices()
        if choices is not None:
            text = f"one of {list(choices)}"
        else:
            low = ("[", self.ge) if self.ge is not None else ("(", self.gt)
            high = ("]", self.le) if self.le is not None else (")", self.lt)
            if low[1] is not None and high[1] is not None:
                text = f"in {low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
            elif low[1] is not None:
                text = f"{'>=' if self.ge is not None else '>'} {low[1]:g}"
            elif high[1] is not None:
                text = f"{'<=' if self.le is not None else '<'} {high[1]:g}"
            else:
                text = "any number"
        text = " or ".join([repr(a) for a in self.also] + [text])
        return f"{text} {self.why}" if self.why else text

    def admits(self, value: Any) -> bool:
        if value is None or _in(value, self.also) or (isinstance(value, str) and _in(value.strip().lower(), self.also)):
            return True
        choices = self.allowed_choices()
        if choices is not None:
            return _in(value, choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return not (
            (self.ge is not None and not value >= self.ge)
            or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le)
            or (self.lt is not None and not value < self.lt)
        )

    def error(self, key: str, value: Any) -> Optional[str]:
        """The message for a refused `value` of `key` (a list: each entry), or None."""
        if isinstance(value, (list, tuple)):
            bad = [v for v in value if not self.admits(v)]
            if not bad:
                return None
            if self.choices is not None:
                return f"unknown {key} entry {bad[0]!r}; valid: {list(self.allowed_choices() or ())}"
            return f"{key} values must be {self.describe()}, got {list(value)}"
        if self.admits(value):
            return None
        if self.choices is not None and not self.also:
            return f"unknown {key} {value!r}; valid: {list(self.allowed_choices() or ())}"
        return f"{key} must be {self.describe()}, got {value!r}"

    def check(self, key: str, value: Any) -> None:
        message = self.error(key, value)
        if message is not None:
            raise ValueError(message)


def _in(value: Any, allowed: Sequence[Any]) -> bool:
    """`value in allowed`, where True is not 1."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def checked(default: Any = MISSING, *, default_factory: Any = MISSING, **kwargs: Any) -> Any:
    """A dataclass field with its value rule (`Rule`'s keywords) in its metadata."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={RULE: Rule(**kwargs)})


def rule_of(f: dataclasses.Field) -> Optional[Rule]:
    return f.metadata.get(RULE)


def check_rules(obj: Any, prefix: str = "") -> None:
    """Every declared rule of a schema instance, nested dataclasses and lists of them included;
    raises a ValueError naming the full key, the value and the allowed values."""
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        r = rule_of(f)
        if r is not None:
            r.check(key, value)
        if dataclasses.is_dataclass(value):
            check_rules(value, key)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check_rules(item, f"{key}[{i}]")


def find_rule(obj: Any, key: str) -> Optional[Rule]:
    """The rule declared for dotted `key` (list entries by index: `compress.strategies.0.grow`)
    below schema instance `obj`, or None (no rule, or not a schema field)."""
    found: Optional[Rule] = None
    for part in key.split("."):
        if isinstance(obj, (list, tuple)) and part.isdigit():
            obj = obj[min(int(part), len(obj) - 1)] if obj else None  # the entries share one schema
            continue
        if not dataclasses.is_dataclass(obj):
            return None
        f = next((f for f in dataclasses.fields(obj) if f.name == part), None)
        if f is None:
            return None
        found, obj = rule_of(f), getattr(obj, part)
    return found


def declared_keys(obj: Any, prefix: str = "") -> list[str]:
    """The dotted keys with a declared rule below a schema instance (list entries: their first)."""
    keys = []
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if rule_of(f) is not None:
            keys.append(key)
        if dataclasses.is_dataclass(value):
            keys += declared_keys(value, key)
        elif isinstance(value, (list, tuple)) and value and dataclasses.is_dataclass(value[0]):
            keys += declared_keys(value[0], f"{key}[0]")
    return keys
