"""Cache-key completeness as a property (issue 19): every field a cached stage reads enters its key.

For the composed `experiment=smoke` and default configs, every leaf of the config is changed
to another valid value, one at a time, and every stage's key is recomputed without training
(`context.data_key`, `teacher.key`, `shadows.dense_keys` / `matched_keys`, `compress.key`,
`attack.key`). A leaf under a group a stage reads must change that stage's key, unless it is
on `NOT_IN_KEYS` below; a leaf outside those groups must leave the key alone (no needless
retraining). The leaves and their new values are derived from the composed config, the
schemas' choice tuples and the config's own validation, so a field added tomorrow is
covered without editing this file; a field for which no valid new value can be derived
fails loudly rather than being skipped.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CONF_DIR, make_cfg
from omegaconf import DictConfig, OmegaConf, open_dict

import attacks
import sparse
from pipeline import compress_jobs as compress_from_config
from pipeline import config as config_module
from pipeline import context
from pipeline.datasets import DATASETS
from pipeline.stages import attack, compress, shadows, teacher
from pipeline.validation import validate

# Fields that must never enter a cache key (each with why). A prefix covers its subtree.
NOT_IN_KEYS = {
    "paths": "where files live: moving the cache, the stores or the data never invalidates an entry",
    "runtime": "device, threads, progress bars, log level and grouped training: same results",
    "tracking": "where results are logged (MLflow), not what they are",
    "experiment_name": "a tracking tag",
    "stage": "which stage runs, not what any stage computes",
    "search": "the study layer (not a cached stage); a trial's choices reach the keys through the "
    "compress fields it sets",
    "report": "reads tracked runs; nothing cached",
    "compare": "reads tracked runs; nothing cached",
    "export": "ships an already cached model (stage=export); nothing cached",
    "cache": "options of the cache command (stage=cache), which computes nothing",
    "dataset.data_dir": "locates the data files (context.PATH_KEYS); never part of a key",
}

# The config each cached stage reads (prefixes), upstream stages' included: a stage's key
# must change with each of these leaves and with no other.
DATA = ("dataset", "seed", "attack.n_audit")
STAGE_READS = {
    "data": DATA,
    "teacher": (*DATA, "model", "train", "teacher"),
    "shadows": (*DATA, "model", "train", "shadows"),
    "shadows_matched": (*DATA, "model", "train", "shadows", "compress"),
    "compress": (*DATA, "model", "train", "teacher", "compress"),
    "attack": (*DATA, "model", "train", "teacher", "shadows", "compress", "attack"),
}

CONFIGS = {"smoke": ["experiment=smoke"], "default": []}


def stage_keys(cfg: DictConfig) -> dict[str, Any]:
    """Every cached stage's key for `cfg`, chained through the upstream keys; nothing trained."""
    data = context.data_key(cfg)
    teacher_key = teacher.key(cfg, data)
    dense = shadows.dense_keys(cfg, data)
    matched = shadows.matched_keys(cfg, data, dense)
    compress_key = compress.key(cfg, data, teacher_key)
    return {
        "data": data,
        "teacher": teacher_key,
        "shadows": dense,
        "shadows_matched": matched,
        "compress": compress_key,
        "attack": attack.key(cfg, compress_key, dense, matched),
    }


def _under(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p + ".") or path.startswith(p + "[") for p in prefixes)


def leaves(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf; list items are `a.b[i]`, an empty mapping is a leaf."""
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list) and node:
        for i, v in enumerate(node):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, node


@functools.cache
def choice_sets() -> tuple[tuple[str, ...], ...]:
    """Every tuple of allowed names the code declares (config schemas, registries)."""
    modules = (config_module, context, shadows, attack, sparse, attacks)
    found = []
    for module in modules:
        for attr, value in vars(module).items():
            if not attr.isupper():
                continue  # constants only (not e.g. __builtins__)
            if isinstance(value, tuple) and len(value) > 1 and all(isinstance(v, str) for v in value):
                found.append(value)
            elif isinstance(value, dict) and len(value) > 1 and all(isinstance(v, str) for v in value):
                found.append(tuple(value))  # registries: name -> implementation
    return tuple(found)


@functools.cache
def option_values(group: str) -> tuple[dict[str, Any], ...]:
    """The leaves of every option file of a config group (conf/<group>/*.yaml)."""
    folder = Path(CONF_DIR) / group
    if not folder.is_dir():
        return ()
    return tuple(dict(leaves(yaml.safe_load(f.read_text()) or {})) for f in sorted(folder.glob("*.yaml")))


def alternatives(path: str, value: Any, cfg: DictConfig) -> Iterator[Any]:
    """Candidate new values for a leaf, most natural first; the caller keeps the first valid one."""
    if path == "teacher.checkpoint":  # a file: its SHA-256 enters the keys (issue 24)
        yield str(_checkpoint_file())
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, int):
        yield from (value + 1, value * 2, value - 1, 10, 100, 1000)
    elif isinstance(value, float):
        yield from (value / 2, value * 2, value + 0.1, 0.1, 0.5)
    elif isinstance(value, str):
        for names in choice_sets():
            if value in names:
                yield from (n for n in names if n != value)
        group, _, rest = path.partition(".")
        for option in option_values(group):
            if isinstance(option.get(rest), str) and "${" not in option[rest]:
                yield option[rest]
        # names of the group's own entries (e.g. an attack of attack.audit for attack.primary)
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            for sub_path, _ in leaves(OmegaConf.to_container(node, resolve=True)):
                yield from (part.partition("[")[0] for part in sub_path.split("."))
        yield value + "_changed"
    elif value is None:
        yield from (2, 0.5, True, "changed")
    elif value == {}:
        yield DROP
    elif value == []:
        yield from (["teacher"], ["changed"], [0.5])  # names, or numbers (compress.dp.tune_lr)


@functools.cache
def _checkpoint_file() -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "weights.pt"
    path.write_bytes(b"a user's state_dict")  # only hashed here, never loaded
    return path


DROP = object()  # drop the (empty mapping) entry from its parent


@contextlib.contextmanager
def changed(cfg: DictConfig, path: str, value: Any) -> Iterator[DictConfig]:
    """`cfg` with the leaf at `path` set to `value` (or dropped, for DROP), restored on exit.

    In place: copying the whole config per leaf would dominate the test's time.
    """
    parent_path, _, last = path.rpartition(".")
    index: Any = last
    if last.endswith("]"):
        name, _, i = last[:-1].partition("[")
        parent_path, index = (f"{parent_path}.{name}" if parent_path else name), int(i)
    parent = OmegaConf.select(cfg, parent_path) if parent_path else cfg
    raw = OmegaConf.to_container(parent, resolve=False)
    tied = _tied(path, value)
    before = {p: OmegaConf.select(cfg, p) for p in tied}
    with open_dict(cfg):
        if value is DROP:
            del parent[index]
        else:
            parent[index] = value
        for p, v in tied.items():
            OmegaConf.update(cfg, p, v, merge=False)
        try:
            yield cfg
        finally:
            for p, v in before.items():
                OmegaConf.update(cfg, p, v, merge=False)
            if value is DROP:  # re-insert in the original order
                for k in list(parent.keys()):
                    del parent[k]
                for k, v in raw.items():
                    parent[k] = v
            else:
                parent[index] = raw[index]


def _tied(path: str, value: Any) -> dict[str, Any]:
    """Leaves that change with `path`: the data set registry ties `dataset.name` to its loader
    (`dataset._target_`), so one changes only with the other."""
    if path == "dataset.name" and value in DATASETS:
        return {"dataset._target_": DATASETS[value].target}
    if path == "dataset._target_":
        names = [n for n, info in DATASETS.items() if info.target == value]
        return {"dataset.name": names[0]} if names else {}
    return {}


def keys_if_valid(cfg: DictConfig, strict: bool) -> dict[str, Any] | None:
    """The stage keys when the config's own validation accepts `cfg` (only the key functions must
    accept it when not strict: groups no cached stage reads, e.g. a device this machine lacks)."""
    try:
        if strict:
            validate(cfg)
        return stage_keys(cfg)
    except (ValueError, TypeError, KeyError):  # omegaconf's errors subclass these
        return None


@functools.cache
def composed(name: str) -> DictConfig:
    # untyped (the root schema would refuse a value of another type as it is set; here the
    # validation pass is what accepts or refuses a changed value)
    cfg = make_cfg(CONFIGS[name], Path("/nonexistent-root"))
    untyped = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(untyped, True)  # as Hydra composes it
    return untyped


def cases(name: str) -> Iterator[tuple[str, Any, dict[str, Any] | None]]:
    """Every leaf of the composed config, its first valid new value and the stage keys with it."""
    cfg = composed(name)
    for path, value in leaves(OmegaConf.to_container(cfg, resolve=True)):
        strict = not _under(path, NOT_IN_KEYS) and any(_under(path, r) for r in STAGE_READS.values())
        for new in itertools.islice(alternatives(path, value, cfg), 20):
            if new is not DROP and (new == value and type(new) is type(value)):
                continue
            if new is DROP and len(OmegaConf.select(cfg, path.rpartition(".")[0])) < 2:
                continue  # dropping the only entry leaves nothing to run
            with changed(cfg, path, new) as mutated:
                keys = keys_if_valid(mutated, strict)
            if keys is not None:
                yield path, new, keys
                break
        else:
            yield path, value, None


@pytest.fixture(autouse=True)
def memoised_schemas(monkeypatch):
    """`to_schema` is pure and slow (OmegaConf merges); a changed config repeats every group but
    one, so memoise it on the node's content wherever the key functions and `validate` use it."""
    cache: dict[tuple[type, str], Any] = {}
    real = config_module.to_schema

    def to_schema(schema, node):
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        k = (schema, json.dumps(plain, sort_keys=True, default=str))
        if k not in cache:
            cache[k] = real(schema, plain)
        return copy.deepcopy(cache[k])

    for module in (config_module, context, shadows, compress_from_config, attack):
        monkeypatch.setattr(module, "to_schema", to_schema)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_field_a_stage_reads_enters_its_key_and_no_other_does(name):
    cfg = composed(name)
    base = stage_keys(cfg)
    top = set(OmegaConf.to_container(cfg, resolve=False))
    claimed = {p.split(".")[0] for p in (*NOT_IN_KEYS, *itertools.chain(*STAGE_READS.values()))}
    assert top <= claimed, f"top-level config keys no stage claims and NOT_IN_KEYS does not list: {top - claimed}"
    missing, extra, no_value, n_checked = [], [], [], 0
    for path, new, keys in cases(name):
        if keys is None:
            no_value.append(path)
            continue
        n_checked += 1
        for stage, reads in STAGE_READS.items():
            should_change = _under(path, reads) and not _under(path, NOT_IN_KEYS)
            if should_change and keys[stage] == base[stage]:
                missing.append(f"{stage}: {path} -> {new!r}")
            elif not should_change and keys[stage] != base[stage]:
                extra.append(f"{stage}: {path} -> {new!r}")
    assert not no_value, f"no valid new value derived for {no_value}: extend `alternatives`"
    assert not missing, "fields missing from cache keys (stale cache reuse):\n" + "\n".join(missing)
    assert not extra, "fields that must not enter these keys do (needless retraining):\n" + "\n".join(extra)
    assert n_checked > 100  # the walk saw the whole config, not a stub


def test_data_key_is_the_loaded_datas_key(cfg_factory):
    cfg = cfg_factory("experiment=smoke")
    assert context.data_key(cfg) == context.load_data(cfg).key


def test_a_context_reads_its_data_through_the_loaded_sets_it_carries(cfg_factory):
    cfg = cfg_factory("experiment=smoke")
    own = context.LoadedData()
    ctx = context.RunContext.build(cfg, loaded=own)
    assert len(own) == 0
    first = ctx.data
    assert ctx.data is first and len(own) == 1  # loaded once, then served
    other = context.RunContext.build(cfg, loaded=context.LoadedData()).data
    assert other is not first and other.key == first.key  # another set of loads loads it again, equal
    assert context.RunContext.build(cfg).loaded is context.LOADED  # the process's own by default


def test_downstream_keys_change_with_each_upstream_key():
    cfg = composed("smoke")
    dense = shadows.dense_keys(cfg, "d")
    assert len(set(dense)) == len(dense) == 2  # one key per shadow
    assert teacher.key(cfg, "d") != teacher.key(cfg, "d2")
    assert set(dense).isdisjoint(shadows.dense_keys(cfg, "d2"))
    matched = shadows.matched_keys(cfg, "d", dense)
    assert set(matched).isdisjoint(shadows.matched_keys(cfg, "d2", dense))
    for k in range(len(dense)):  # each matched shadow follows its own dense shadow only
        other = list(dense)
        other[k] = "x"
        moved = shadows.matched_keys(cfg, "d", tuple(other))
        assert [a != b for a, b in zip(moved, matched)] == [i == k for i in range(len(dense))]
    assert compress.key(cfg, "d", "t") != compress.key(cfg, "d2", "t")
    assert compress.key(cfg, "d", "t") != compress.key(cfg, "d", "t2")
    c = compress.key(cfg, "d", "t")
    for reference in ("dense", "matched", "both"):
        with changed(cfg, "attack.reference", reference) as ref_cfg:
            base = attack.key(ref_cfg, c, dense, matched)
            assert attack.key(ref_cfg, "c2", dense, matched) != base
            reads_dense = reference in ("dense", "both")
            reads_matched = reference in ("matched", "both")
            assert (attack.key(ref_cfg, c, ("x", *dense[1:]), matched) != base) == reads_dense
            assert (attack.key(ref_cfg, c, dense, ("x", *matched[1:])) != base) == reads_matched
    with changed(cfg, "attack.audit.lira_offline", DROP) as no_refs:  # no attack reads references
        assert attack.key(no_refs, c, dense, matched) == attack.key(no_refs, c, ("x",), ("y",))
