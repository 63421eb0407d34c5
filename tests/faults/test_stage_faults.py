"""Damaged cache entries of the real stages (experiment=smoke): the rows of issue 15's table
about cached artifacts. Every damaged entry is detected, named, moved aside and rebuilt, and the
rerun's results equal the undamaged run's (the stages are deterministic)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from conftest import make_cfg

from pipeline import flow
from pipeline.cache import DAMAGED_DIR
from pipeline.context import RunContext

pytestmark = pytest.mark.smoke

OVERRIDES = ["experiment=smoke", "tracking.enabled=false", "runtime.batched_shadows=false", "attack.audit={loss: {}, lira_offline: {}}"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One smoke run (teacher, shadows, compress, attack) whose cache each test copies (shadows
    trained one by one: a rebuilt shadow is then bit-identical)."""
    root = tmp_path_factory.mktemp("built")
    cfg = make_cfg(OVERRIDES, root)
    result = flow.attack(RunContext.build(cfg))
    return root, result


@pytest.fixture
def fresh(built, tmp_path):
    root, result = built
    shutil.copytree(root / ".cache", tmp_path / ".cache", symlinks=True)
    return make_cfg(OVERRIDES, tmp_path), result


def _entry(cfg, stage: str):
    entries = [p for p in (tmp_path_of(cfg) / ".cache" / stage).iterdir() if not p.name.startswith(".")]
    assert len(entries) >= 1
    return sorted(entries)[0]


def tmp_path_of(cfg):
    from pathlib import Path

    return Path(str(cfg.paths.root))


def _assert_moved_aside(cfg, stage: str, key: str, words: str, caplog) -> None:
    aside = list((tmp_path_of(cfg) / ".cache" / stage / DAMAGED_DIR).iterdir())
    assert [p.name.split(".")[0] for p in aside] == [key]
    text = caplog.text
    assert f"{stage}/{key}" in text and words in text and "moved aside" in text


def test_truncated_teacher_is_rebuilt(fresh, caplog):
    cfg, before = fresh
    teacher = _entry(cfg, "teacher")
    original = (teacher / "model.pt").read_bytes()
    (teacher / "model.pt").write_bytes(original[: len(original) // 3])
    with caplog.at_level(logging.WARNING):
        comp = flow.compress(RunContext.build(cfg))
    assert (teacher / "model.pt").read_bytes() == original
    _assert_moved_aside(cfg, "teacher", teacher.name, "truncated", caplog)
    assert comp.cache_hit  # the compress entry was intact: reused


def test_finite_but_wrong_shadow_is_rebuilt_and_the_audit_unchanged(fresh, caplog):
    cfg, before = fresh
    shadow = _entry(cfg, "shadow")
    state = torch.load(shadow / "model.pt", weights_only=True)
    torch.save({k: v * 1.5 + 0.01 for k, v in state.items()}, shadow / "model.pt")  # finite, wrong
    shutil.rmtree(tmp_path_of(cfg) / ".cache" / "attack")  # the audit is computed again from the shadows
    with caplog.at_level(logging.WARNING):
        after = flow.attack(RunContext.build(cfg))
    rebuilt = torch.load(shadow / "model.pt", weights_only=True)
    assert all(torch.equal(rebuilt[k], state[k]) for k in state)  # the right weights again
    _assert_moved_aside(cfg, "shadow", shadow.name, "model.pt", caplog)
    assert not after.cache_hit and after.key == before.key
    assert after.metrics["audit_lira_offline_auc"] == before.metrics["audit_lira_offline_auc"]


@pytest.mark.parametrize(
    "file, damage, words",
    [
        ("metrics.json", "delete", "metrics.json missing"),
        ("model.sc", "delete", "model.sc missing"),
        ("candidates.csv", "garbage", "candidates.csv"),
        ("model.sc", "flip", "model.sc fails its SHA-256"),
    ],
    ids=["deleted-metrics", "deleted-export", "garbage-candidates", "flipped-export"],
)
def test_damaged_compress_entry_is_rebuilt(fresh, caplog, file, damage, words):
    cfg, before = fresh
    entry = _entry(cfg, "compress")
    originals = {p.name: p.read_bytes() for p in entry.iterdir() if p.name != "manifest.json"}
    path = entry / file
    if damage == "delete":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage,\xff\n" * 40)
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        comp = flow.compress(RunContext.build(cfg))
    assert not comp.cache_hit
    assert {p.name: p.read_bytes() for p in entry.iterdir() if p.name != "manifest.json"} == originals
    _assert_moved_aside(cfg, "compress", entry.name, words, caplog)
    assert json.loads((entry / "metrics.json").read_text())["metrics"]["accuracy"] == comp.metrics["accuracy"]
