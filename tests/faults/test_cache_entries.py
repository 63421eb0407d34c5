"""Fault injection on cache entries: truncated, bit-flipped, finite-but-wrong, missing and extra
files, garbage, entries from a version before checksums. Each is detected, named in a warning,
moved aside (not deleted) and rebuilt; nothing damaged is ever returned."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from pipeline.cache import (
    DAMAGED_DIR,
    MANIFEST_FILE,
    REASON_FILE,
    Cache,
    DamagedEntryError,
    check_entry_file,
)

PAYLOAD = bytes(range(256)) * 8  # 2 KiB "weights"


def _build_counter():
    calls = []

    def build(out):
        calls.append(1)
        (out / "model.pt").write_bytes(PAYLOAD)
        (out / "metrics.json").write_text(json.dumps({"accuracy": 0.9}))

    return build, calls


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _finite_wrong(path):  # same size, different (finite) values
    path.write_bytes(bytes(reversed(path.read_bytes())))


def _garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


def _delete(path):
    path.unlink()


@pytest.mark.parametrize(
    "damage, file, words",
    [
        (_truncate, "model.pt", "model.pt is 100 bytes"),
        (_flip, "model.pt", "model.pt fails its SHA-256"),
        (_finite_wrong, "model.pt", "model.pt fails its SHA-256"),
        (_garbage, "metrics.json", "metrics.json fails its SHA-256"),
        (_delete, "metrics.json", "metrics.json missing"),
        (_delete, MANIFEST_FILE, "no manifest.json"),
    ],
    ids=["truncated", "bit-flipped", "finite-wrong", "garbage", "missing-file", "missing-manifest"],
)
def test_damaged_entry_is_named_moved_aside_and_rebuilt(tmp_path, caplog, damage, file, words):
    cache = Cache(tmp_path)
    build, calls = _build_counter()
    first = cache.get_or_create("teacher", "k1", {"a": 1}, build)
    damage(first.path / file)
    with caplog.at_level(logging.WARNING, logger="pipeline.cache"):
        again = cache.get_or_create("teacher", "k1", {"a": 1}, build)
    assert not again.hit and len(calls) == 2
    assert (again.path / "model.pt").read_bytes() == PAYLOAD  # the rebuilt copy, intact
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "teacher/k1" in warning and words in warning and "moved aside" in warning
    aside = list((tmp_path / "teacher" / DAMAGED_DIR).iterdir())
    assert len(aside) == 1 and aside[0].name.startswith("k1.")
    assert words in (aside[0] / REASON_FILE).read_text()  # kept for inspection, not deleted
    # and the fresh entry verifies
    assert cache.get_or_create("teacher", "k1", {"a": 1}, build).hit and len(calls) == 2


def test_an_added_file_is_damage(tmp_path):
    cache = Cache(tmp_path)
    build, calls = _build_counter()
    entry = cache.get_or_create("attack", "k1", {"a": 1}, build)
    (entry.path / "canary.csv").write_text("x\n1\n")  # a stage reads optional files if present
    assert cache.lookup("attack", "k1", {"a": 1}) is None
    assert not (cache.entry_dir("attack", "k1") / "canary.csv").exists()


def test_entry_from_a_version_before_checksums_is_rebuilt(tmp_path, caplog):
    old = tmp_path / "teacher" / "k1"
    old.mkdir(parents=True)
    (old / "model.pt").write_bytes(b"old")
    (old / "spec.json").write_text(json.dumps({"stage": "teacher", "spec": {"a": 1}}))
    (old / "DONE").write_text("")
    build, calls = _build_counter()
    with caplog.at_level(logging.WARNING, logger="pipeline.cache"):
        entry = Cache(tmp_path).get_or_create("teacher", "k1", {"a": 1}, build)
    assert not entry.hit and calls == [1]
    assert "before checksums" in caplog.text


def test_file_damaged_after_verification_is_refused_by_name(tmp_path):
    cache = Cache(tmp_path)
    build, _ = _build_counter()
    entry = cache.get_or_create("teacher", "k1", {"a": 1}, build)
    check_entry_file(entry.path / "model.pt")  # intact
    _finite_wrong(entry.path / "model.pt")
    with pytest.raises(DamagedEntryError, match=r"teacher/k1 was damaged .* model.pt"):
        check_entry_file(entry.path / "model.pt")


def test_entries_are_group_readable_even_under_umask_077(tmp_path):
    old = os.umask(0o077)
    try:
        cache = Cache(tmp_path / "cache")
        build, _ = _build_counter()
        entry = cache.get_or_create("teacher", "k1", {"a": 1}, build)
    finally:
        os.umask(old)
    for d in (tmp_path / "cache", tmp_path / "cache" / "teacher", entry.path):
        assert stat.S_IMODE(d.stat().st_mode) & 0o750 == 0o750, d
    for f in entry.path.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f


def test_group_writable_setgid_root_is_kept(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o2770)
    build, _ = _build_counter()
    entry = Cache(root).get_or_create("teacher", "k1", {"a": 1}, build)
    mode = stat.S_IMODE(entry.path.parent.stat().st_mode)
    assert mode & stat.S_ISGID and mode & 0o070 == 0o070
    assert stat.S_IMODE((entry.path / "model.pt").stat().st_mode) == 0o660
