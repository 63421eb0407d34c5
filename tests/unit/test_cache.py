"""Cache keys and atomic cache entries (STYLE "Stages and caching")."""

import json

import pytest

from pipeline.cache import Cache, cache_key
from pipeline.stages import teacher


def test_key_unchanged_by_paths_and_runtime_changed_by_lr(cfg_factory, tmp_path):
    base = teacher.key(cfg_factory("experiment=smoke"))
    moved = teacher.key(
        cfg_factory("experiment=smoke", "runtime.n_threads=1", "tracking.uri=sqlite:///x.db", root=tmp_path / "other")
    )
    assert base == moved
    assert teacher.key(cfg_factory("experiment=smoke", "train.lr=0.01")) != base
    assert teacher.key(cfg_factory("experiment=smoke", "seed=1")) != base


def test_cache_key_depends_on_version_and_upstream():
    spec = {"a": 1}
    assert cache_key("s", 1, spec) != cache_key("s", 2, spec)
    assert cache_key("s", 1, spec, {"up": "x"}) != cache_key("s", 1, spec, {"up": "y"})
    assert cache_key("s", 1, {"a": 1, "b": 2}) == cache_key("s", 1, {"b": 2, "a": 1})


def test_entry_is_built_once_then_hit(tmp_path):
    cache, calls = Cache(tmp_path), []

    def build(out):
        calls.append(1)
        (out / "x.txt").write_text("hello")

    first = cache.get_or_create("stage", "k1", {"a": 1}, build)
    second = cache.get_or_create("stage", "k1", {"a": 1}, build)
    assert (first.hit, second.hit, len(calls)) == (False, True, 1)
    assert (second.path / "x.txt").read_text() == "hello"


def test_interrupted_build_leaves_no_entry(tmp_path):
    cache = Cache(tmp_path)

    def build(out):
        (out / "half.txt").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_create("stage", "k1", {"a": 1}, build)
    assert not any(p.name == "k1" or "k1" in p.name for p in (tmp_path / "stage").iterdir())


def test_mismatching_or_corrupt_spec_is_rebuilt(tmp_path):
    cache, calls = Cache(tmp_path), []
    build = lambda out: calls.append(1)  # noqa: E731
    entry = cache.get_or_create("stage", "k1", {"a": 1}, build)
    (entry.path / "spec.json").write_text(json.dumps({"stage": "stage", "spec": {"a": 2}}))
    again = cache.get_or_create("stage", "k1", {"a": 1}, build)
    assert not again.hit and len(calls) == 2
    (again.path / "spec.json").write_text("{not json")
    third = cache.get_or_create("stage", "k1", {"a": 1}, build)
    assert not third.hit and len(calls) == 3
