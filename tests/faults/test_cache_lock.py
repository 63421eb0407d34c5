"""The per-entry lock shared by processes and hosts: an entry is built once while others wait;
locks of dead processes (this host) or without heartbeat (any host) are taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cache import Cache

REPO = Path(__file__).resolve().parents[2]

BUILDER = r"""
import json, logging, os, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s")
from pipeline.cache import Cache
root, counter = Path(sys.argv[1]), Path(sys.argv[2])
def build(out):
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(3.0)  # longer than stale_s: only the heartbeat keeps the lock alive
    (out / "model.pt").write_bytes(b"weights")
cache = Cache(root, heartbeat_s=0.2, stale_s=1.5, poll_s=0.1, progress_every_s=1.0)
entry = cache.get_or_create("teacher", "k1", {"a": 1}, build)
print("RESULT", entry.hit, (entry.path / "model.pt").read_bytes().decode())
"""


def test_concurrent_processes_build_an_entry_once_and_the_others_wait(tmp_path):
    counter = tmp_path / "builds.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(tmp_path / "cache"), str(counter)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len(counter.read_text().split()) == 1, outs  # trained once
    results = sorted(line for out in outs for line in out.splitlines() if line.startswith("RESULT"))
    assert results == ["RESULT False weights", "RESULT True weights", "RESULT True weights"]
    waited = [out for out in outs if "is being built by" in out]
    assert len(waited) == 2 and all(f"{socket.gethostname()}:" in w for w in waited)
    assert not list((tmp_path / "cache" / "teacher").glob(".*.lock"))


def _write_lock(path: Path, host: str, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "token": "t", "started_unix": 0, "beat": 0}))


def test_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    cache = Cache(tmp_path, stale_s=3600, poll_s=0.05)
    _write_lock(cache.lock_path("teacher", "k1"), socket.gethostname(), dead.pid)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pipeline.cache"):
        entry = cache.get_or_create("teacher", "k1", {"a": 1}, lambda out: (out / "m").write_text("x"))
    assert not entry.hit and time.monotonic() - t0 < 30
    assert "took over the stale lock" in caplog.text and "its process is gone" in caplog.text


def test_lock_of_another_host_without_heartbeat_is_taken_over_after_stale_s(tmp_path, caplog):
    cache = Cache(tmp_path, stale_s=1.0, poll_s=0.05, progress_every_s=0.3)
    _write_lock(cache.lock_path("teacher", "k1"), "elsewhere", 12345)
    t0 = time.monotonic()
    with caplog.at_level(logging.INFO, logger="pipeline.cache"):
        entry = cache.get_or_create("teacher", "k1", {"a": 1}, lambda out: (out / "m").write_text("x"))
    waited = time.monotonic() - t0
    assert not entry.hit and 1.0 <= waited < 30
    assert "being built by elsewhere:12345" in caplog.text and "no heartbeat" in caplog.text


def test_claim_lets_this_process_build_while_others_wait(tmp_path):
    cache = Cache(tmp_path)
    with cache.claim("shadow", ["a", "b"]) as claimed:
        assert claimed == ["a", "b"]
        assert cache.lock_path("shadow", "a").exists()
        # another process (a second Cache object does not share the claim's lock object, but
        # the process-wide registry makes the claim re-entrant for get_or_create)
        entry = cache.get_or_create("shadow", "a", {"i": 0}, lambda out: (out / "m").write_text("a"))
        assert not entry.hit
    assert not cache.lock_path("shadow", "a").exists() and not cache.lock_path("shadow", "b").exists()


def test_lock_of_a_killed_but_unreaped_process_is_taken_over(tmp_path):
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(1.0)  # exited, not yet waited for: a zombie
    cache = Cache(tmp_path, stale_s=3600, poll_s=0.05)
    _write_lock(cache.lock_path("teacher", "k1"), socket.gethostname(), zombie.pid)
    t0 = time.monotonic()
    entry = cache.get_or_create("teacher", "k1", {"a": 1}, lambda out: (out / "m").write_text("x"))
    assert not entry.hit and time.monotonic() - t0 < 30
    zombie.wait()


def test_shadow_shares_train_a_part_each_and_give_the_same_models(tmp_path, caplog):
    """Search workers on a cold cache split the dense shadows (`share=(i, n)`): a process trains
    its share first, then whatever is still missing and unclaimed, and the models are bit for bit
    those of one process training them all (grouped training of a subset)."""
    import torch
    from conftest import make_cfg

    from pipeline.context import RunContext
    from pipeline.stages import shadows as shadows_stage

    overrides = ["experiment=smoke", "tracking.enabled=false", "shadows.n_models=5"]
    whole = shadows_stage.run(RunContext.build(make_cfg(overrides, tmp_path / "one")))
    cfg = RunContext.build(make_cfg(overrides, tmp_path / "shared"))
    # another process (worker 0 of 2) already built its share 0, 2, 4 on the shared cache
    caplog.clear()  # not the first run's lines (logged when an earlier test left the root logger at INFO)
    with caplog.at_level(logging.INFO, logger="pipeline.stages.shadows"):
        shadows_stage.run(cfg, share=(0, 2))
    first = [r.getMessage() for r in caplog.records if r.getMessage().startswith("training ")]
    assert first[0].startswith("training 3 shadow model(s)")  # its share: 0, 2, 4
    assert first[1].startswith("training 2 shadow model(s)")  # then the rest, unclaimed: 1, 3
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.stages.shadows"):
        again = shadows_stage.run(cfg, share=(1, 2))  # worker 1 finds every model built
    assert again.n_cache_hits == 5
    assert not [r for r in caplog.records if r.getMessage().startswith("training ")]
    assert again.keys == whole.keys
    for a, b in zip(whole.paths, again.paths):
        wa, wb = torch.load(a / "model.pt"), torch.load(b / "model.pt")
        assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
    with pytest.raises(ValueError, match=r"0 <= i < n"):
        shadows_stage.run(cfg, share=(2, 2))
