"""What a study answers: the config values and the data its trials depend on, recorded in the study.

A study is one question. Its trials are comparable only if they differ in the searched keys
alone, so a command that would resume a study under another config (another density, model,
attack, seed) or another data set (a replaced data file changes the data key) is refused before
any work, naming each key that differs. The record is two study user attrs: the digest of the
values, and the values themselves (so that the differences can be listed). A study created before
the record existed is resumed with a warning, and recorded from then on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from pipeline.cache.keys import canonical_json

log = logging.getLogger(__name__)

DIGEST_ATTR = "safecompress_identity"  # written last: a study with it has a complete record
VALUES_ATTR = "safecompress_identity_values"

# Config keys (and key prefixes) a study's trials do not depend on: where things run, are stored
# and tracked; how many trials and workers; the sampler and heartbeat settings; the search space's
# ranges (the searched keys are recorded as `search.space_keys`, their values are each trial's
# own); other commands' groups; and the final audit's reference kind (trials audit with
# `attack.search_reference`). Everything else in the composed config is part of the identity.
NOT_IDENTITY = (
    "paths",
    "runtime",
    "tracking",
    "stage",
    "experiment_name",
    "report",
    "compare",
    "cache",
    "hydra",
    "search.n_trials",
    "search.n_workers",
    "search.storage",
    "search.study_name",
    "search.on_mismatch",
    "search.heartbeat_interval",
    "search.grace_period",
    "search.population_size",
    "search.space",
    "attack.reference",
)
# how long a process that found a new study without its record waits for its creator to write it
RECORD_WAIT_S = 5.0
MAX_LISTED = 20


@dataclass(frozen=True)
class StudyIdentity:
    """The values a study's trials depend on: dotted config key -> value, and `data` (the data key)."""

    values: dict[str, Any]

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.values).encode()).hexdigest()[:16]


def identity_of(config: dict[str, Any], searched: list[str], data_key: str, path_keys: tuple[str, ...] = ()) -> StudyIdentity:
    """The identity of a study run with the resolved plain `config`, searching `searched`, on the
    data with key `data_key`; `path_keys` are dataset keys that locate files (the data key holds
    their content)."""
    skip = (*NOT_IDENTITY, *searched, *(f"dataset.{k}" for k in path_keys))
    values = {k: v for k, v in _flat(config) if not any(k == p or k.startswith(p + ".") for p in skip)}
    values["search.space_keys"] = sorted(searched)
    values["data"] = data_key
    return StudyIdentity(values)


def _flat(node: Any, prefix: str = ""):
    """(dotted key, value) of a plain mapping; lists and empty mappings are values."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _flat(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, node


def _is_off(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every key whose value differs. A key only one side has counts only when
    its value there is set: a setting a newer version added, at its off default (None, false, an
    empty list), asks the same question as before."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new:
            if canonical_json(old[key]) != canonical_json(new[key]):
                out.append((key, old[key], new[key]))
        elif not _is_off(old.get(key, new.get(key))):
            out.append((key, old.get(key, _ABSENT), new.get(key, _ABSENT)))
    return out


class _Absent:
    def __repr__(self) -> str:
        return "(not set)"


_ABSENT = _Absent()


def derived_name(study_name: str, identity: StudyIdentity) -> str:
    """The study `search.on_mismatch=new` uses for this identity: the same for every process."""
    return f"{study_name}-{identity.digest[:8]}"


def check(storage, study, created: bool, identity: StudyIdentity, on_mismatch: str, where: str) -> str | None:
    """Record the identity in a study this process created; check it against an existing study's.

    Returns None when the study may be used, or the derived study name to use instead
    (`on_mismatch="new"` and the study answers another question). Raises ValueError when it
    answers another question and `on_mismatch="refuse"`, listing each differing key.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    if created:
        _record(storage, study_id, identity)
        return None
    attrs = _recorded(storage, study_id, wait=not study.get_trials(deepcopy=False))
    if attrs is None:
        if study.get_trials(deepcopy=False):
            log.warning(
                "study %r was created by a version that did not record what it answers (its config and "
                "data): resumed without checking that its trials were run with this config; recorded "
                "now, so later resumes are checked", study.study_name,
            )
        _record(storage, study_id, identity)
        return None
    if attrs.get(DIGEST_ATTR) == identity.digest:
        return None
    diff = differences(attrs.get(VALUES_ATTR) or {}, identity.values)
    if not diff:  # only settings a newer version added, at their off defaults
        log.info("study %r: recording the settings this version added to its identity", study.study_name)
        _record(storage, study_id, identity)
        return None
    if on_mismatch == "new":
        name = derived_name(study.study_name, identity)
        log.warning(
            "study %r answers another question (%s); search.on_mismatch=new: using study %r for this config",
            study.study_name, ", ".join(k for k, _, _ in diff[:MAX_LISTED]), name,
        )
        return name
    raise ValueError(mismatch_message(study.study_name, where, diff, derived_name(study.study_name, identity)))


def mismatch_message(name: str, where: str, diff: list[tuple[str, Any, Any]], derived: str) -> str:
    lines = [f"  {k}: {_show(a)} → {_show(b)}" for k, a, b in diff[:MAX_LISTED]]
    if len(diff) > MAX_LISTED:
        lines.append(f"  ... and {len(diff) - MAX_LISTED} more")
    data_note = (
        " (`data` is the data set's content key: a data file changed, or the data set's settings)"
        if any(k == "data" for k, _, _ in diff) else ""
    )
    return (
        f"study {name!r} in {where} was run with another config or data than this command's, so its "
        f"trials would mix with this command's on one Pareto front; it is not resumed. What differs "
        f"(study → this command){data_note}:\n" + "\n".join(lines) + "\n"
        f"Either give this config its own study (search.study_name=<a new name>), or pass "
        f"search.on_mismatch=new to start (or, later, resume) the study {derived!r} for it."
    )


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, (_Absent, str)) else canonical_json(value)


def _recorded(storage, study_id: int, wait: bool) -> dict[str, Any] | None:
    """The study's record, None when it has none. A study without trials may have just been created
    by another process that is about to write it: waited for, at most `RECORD_WAIT_S`."""
    deadline = time.monotonic() + (RECORD_WAIT_S if wait else 0.0)
    while True:
        attrs = storage.get_study_user_attrs(study_id)
        if DIGEST_ATTR in attrs:
            return attrs
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def _record(storage, study_id: int, identity: StudyIdentity) -> None:
    storage.set_study_user_attr(study_id, VALUES_ATTR, identity.values)
    storage.set_study_user_attr(study_id, DIGEST_ATTR, identity.digest)
