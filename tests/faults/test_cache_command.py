"""`python -m pipeline stage=cache` (`safecompress cache list|verify|clear`): lists entries with
stage, key, size, age and status, verifies them all, removes chosen ones."""

from __future__ import annotations

import sys

import pytest

from pipeline.__main__ import run_stage
from pipeline.context import RunContext
from pipeline.stages import teacher as teacher_stage


def test_list_verify_clear(cfg_factory, tmp_path, capsys):
    teacher = teacher_stage.run(RunContext.build(cfg_factory("experiment=smoke", "tracking.enabled=false")))
    other = teacher_stage.run(RunContext.build(cfg_factory("experiment=smoke", "tracking.enabled=false", "seed=1")))
    capsys.readouterr()

    report = run_stage(cfg_factory("stage=cache"))
    out = capsys.readouterr().out
    assert teacher.key in out and other.key in out and "KiB" in out and out.count(" ok") == 2
    assert {(e.stage, e.key, e.status) for e in report.entries} == {("teacher", teacher.key, "ok"), ("teacher", other.key, "ok")}

    data = bytearray((teacher.path / "model.pt").read_bytes())
    data[-20] ^= 0xFF  # same size: only the checksum tells
    (teacher.path / "model.pt").write_bytes(bytes(data))
    assert all(e.status == "ok" for e in run_stage(cfg_factory("stage=cache")).entries)  # list: sizes only
    report = run_stage(cfg_factory("stage=cache", "cache.action=verify"))
    out = capsys.readouterr().out
    damaged = [e for e in report.entries if e.is_damaged]
    assert [e.key for e in damaged] == [teacher.key] and "fails its SHA-256" in damaged[0].status
    assert "1 ok, 1 damaged" in out and not teacher.path.exists()  # moved aside, rebuilt when needed

    with pytest.raises(ValueError, match="cache.action=clear needs a selection"):
        run_stage(cfg_factory("stage=cache", "cache.action=clear"))
    report = run_stage(cfg_factory("stage=cache", "cache.action=clear", "cache.damaged=true"))
    assert [e.key for e in report.removed] == [teacher.key]
    assert not (tmp_path / ".cache" / "teacher" / ".damaged").exists() or not list((tmp_path / ".cache" / "teacher" / ".damaged").iterdir())
    assert (other.path / "model.pt").exists()  # not chosen: kept
    report = run_stage(cfg_factory("stage=cache", "cache.action=clear", f"cache.keys=[{other.key[:6]}]"))
    assert [e.key for e in report.removed] == [other.key] and not other.path.exists()


def test_console_script_words(monkeypatch):
    import pipeline.__main__ as entry

    seen = []
    monkeypatch.setattr(entry, "main", lambda: seen.append(list(sys.argv[1:])))
    monkeypatch.setattr(sys, "argv", ["safecompress", "cache", "verify", "paths.root=/x"])
    entry.cli()
    assert seen == [["stage=cache", "cache.action=verify", "paths.root=/x"]]
