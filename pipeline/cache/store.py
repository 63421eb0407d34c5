"""The cache itself: a directory of `<stage>/<key>/` entries, built once under a lock,
published atomically, verified on every read, moved aside when damaged (see `pipeline.cache`)."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cache.keys import canonical_json
from pipeline.cache.lock import CacheLockTimeout, EntryLock, held_locks, owner, pid_alive, read_lock
from pipeline.cache.manifest import MANIFEST_FILE, SPEC_FILE, verify_entry, write_manifest
from pipeline.cache.permissions import make_dir, share_tree

log = logging.getLogger(__name__)

DAMAGED_DIR = ".damaged"
REASON_FILE = "REASON.txt"


@dataclass(frozen=True)
class CacheEntry:
    stage: str
    key: str
    path: Path
    hit: bool


@dataclass(frozen=True)
class EntryInfo:
    """One line of `Cache.entries()`: an entry, a moved-aside entry or a lock without entry."""

    stage: str
    key: str
    path: Path
    size_bytes: int
    age_s: float
    status: str  # ok | damaged: <why> | building (<owner>) | moved aside: <why>

    @property
    def is_damaged(self) -> bool:
        return self.status.startswith(("damaged", "moved aside"))


class Cache:
    """A directory of `<stage>/<key>/` entries, each holding `spec.json`, `manifest.json` and
    the artifacts. See the module docstring for verification, locking and permissions."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        heartbeat_s: float = 10.0,
        stale_s: float = 120.0,
        poll_s: float = 0.5,
        progress_every_s: float = 30.0,
        wait_limit_s: float | None = None,
    ):
        self.root = Path(root)
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.poll_s = poll_s
        self.progress_every_s = progress_every_s
        self.wait_limit_s = wait_limit_s

    def entry_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lock_path(self, stage: str, key: str) -> Path:
        return self.root / stage / f".{key}.lock"

    # ----------------------------------------------------------------- reading

    def lookup(self, stage: str, key: str, spec: dict[str, Any]) -> Path | None:
        """The entry's directory when it exists and verifies; else None.

        A damaged entry is moved aside (when no other process is building it) and named in
        a warning; the caller rebuilds it.
        """
        path = self.entry_dir(stage, key)
        if not path.is_dir():
            return None
        reason = verify_entry(path, stage, key, spec)
        if reason is None:
            return path
        lock = EntryLock(self.lock_path(stage, key), self.heartbeat_s)
        if lock.try_acquire():
            try:
                reason = verify_entry(path, stage, key, spec) if path.is_dir() else None
                if reason is not None:
                    self._move_aside(stage, key, reason)
            finally:
                lock.release()
        return None

    def _move_aside(self, stage: str, key: str, reason: str) -> Path | None:
        """Move a damaged entry to `<stage>/.damaged/<key>.<time>/` and say so; never delete it."""
        path = self.entry_dir(stage, key)
        aside_root = self.root / stage / DAMAGED_DIR
        make_dir(aside_root)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        target = aside_root / f"{key}.{stamp}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        try:
            os.replace(path, target)
        except FileNotFoundError:  # another process moved it first
            return None
        try:
            (target / REASON_FILE).write_text(f"{reason}\nmoved aside by {socket.gethostname()}:{os.getpid()} at {stamp} UTC\n")
        except OSError:
            pass
        log.warning(
            "cache entry %s/%s is damaged: %s. Not used: moved aside to %s and rebuilt "
            "(`python -m pipeline stage=cache cache.action=clear cache.damaged=true` removes such copies)",
            stage, key, reason, target,
        )
        return target

    # ----------------------------------------------------------------- building

    def get_or_create(
        self, stage: str, key: str, spec: dict[str, Any], build: Callable[[Path], None]
    ) -> CacheEntry:
        """Return the verified entry, or build it once: `build(tmp_dir)` writes the artifacts,
        which are then checksummed and moved in place atomically. While another process holds
        the entry's lock, wait for its result instead of building it again."""
        found = self.lookup(stage, key, spec)
        if found is not None:
            return CacheEntry(stage, key, found, hit=True)
        final = self.entry_dir(stage, key)
        make_dir(final.parent)
        lock = held_locks.get(str(self.lock_path(stage, key)))
        owned = lock is None  # else a `claim` of this process holds it and releases it
        if lock is None:
            lock = EntryLock(self.lock_path(stage, key), self.heartbeat_s)
            while not lock.try_acquire():
                self._wait_for_builder(stage, key)
                found = self.lookup(stage, key, spec)
                if found is not None:
                    return CacheEntry(stage, key, found, hit=True)
        try:
            if final.is_dir():  # built by another process meanwhile, or damaged
                reason = verify_entry(final, stage, key, spec)
                if reason is None:
                    return CacheEntry(stage, key, final, hit=True)
                self._move_aside(stage, key, reason)
            self._build(stage, key, spec, build, final)
        finally:
            if owned:
                lock.release()
        return CacheEntry(stage, key, final, hit=False)

    @contextmanager
    def claim(self, stage: str, keys: list[str]) -> Iterator[list[str]]:
        """Take the locks of those `keys` no other process holds, without waiting; yields the
        keys claimed. Within the block, `get_or_create` of a claimed key builds it without
        waiting (e.g. shadows trained together, then saved one entry each)."""
        locks = []
        try:
            for key in keys:
                path = self.lock_path(stage, key)
                if str(path) in held_locks:
                    continue
                make_dir(path.parent)
                lock = EntryLock(path, self.heartbeat_s)
                if lock.try_acquire():
                    locks.append((key, lock))
            yield [k for k, _ in locks]
        finally:
            for _, lock in locks:
                lock.release()

    def _build(self, stage: str, key: str, spec: dict[str, Any], build: Callable[[Path], None], final: Path) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            build(tmp)
            (tmp / SPEC_FILE).write_text(canonical_json({"stage": stage, "spec": spec}))
            write_manifest(tmp, stage, key)
            share_tree(tmp, final.parent)  # mkdtemp makes 0700 folders
            try:
                os.replace(tmp, final)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # a process that ignored the lock published first: keep a verified entry
                if verify_entry(final, stage, key, spec) is None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return
                self._move_aside(stage, key, "replaced while a new copy was built")
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _wait_for_builder(self, stage: str, key: str) -> None:
        """Wait until the lock of `stage/key` is released, or take it over when stale."""
        from training import interrupt

        lock_path = self.lock_path(stage, key)
        start = last_log = time.monotonic()
        last_seen: dict[str, Any] | None = None
        last_change = start
        logged = False
        while True:
            info = read_lock(lock_path)
            if info is None:
                if logged:
                    log.info("cache entry %s/%s: the other process finished after %.0f s", stage, key, time.monotonic() - start)
                return
            now = time.monotonic()
            if info != last_seen or info == {}:
                last_seen, last_change = info, now
            dead_here = (
                info.get("host") == socket.gethostname()
                and isinstance(info.get("pid"), int)
                and not pid_alive(int(info["pid"]))
            )
            if dead_here or now - last_change > self.stale_s:
                why = "its process is gone" if dead_here else f"no heartbeat for {now - last_change:.0f} s"
                if self._take_over(lock_path, info, why, stage, key):
                    return
            if not logged or now - last_log >= self.progress_every_s:
                log.info(
                    "cache entry %s/%s is being built by %s (lock %s); waiting for it (%.0f s so far)",
                    stage, key, owner(info), lock_path, now - start,
                )
                logged, last_log = True, now
            if self.wait_limit_s is not None and now - start > self.wait_limit_s:
                raise CacheLockTimeout(
                    f"waited {now - start:.0f} s for cache entry {stage}/{key} built by {owner(info)}; "
                    f"if that process is gone, delete {lock_path}"
                )
            interrupt.check()
            time.sleep(self.poll_s)

    def _take_over(self, lock_path: Path, seen: dict[str, Any], why: str, stage: str, key: str) -> bool:
        """Remove a stale lock (rename first, so two waiters cannot both remove a fresh one)."""
        grave = lock_path.with_name(f"{lock_path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(lock_path, grave)
        except FileNotFoundError:
            return True
        taken = read_lock(grave)
        if seen and taken is not None and taken.get("token") != seen.get("token"):
            # a fresh lock replaced the stale one meanwhile: put it back unless a newer exists
            try:
                os.link(grave, lock_path)
            except OSError:
                pass
            os.unlink(grave)
            return False
        os.unlink(grave)
        log.warning("cache entry %s/%s: took over the stale lock of %s (%s)", stage, key, owner(seen), why)
        return True

    # ----------------------------------------------------------------- maintenance

    def entries(self, checksums: bool = False) -> list[EntryInfo]:
        """Every entry, moved-aside entry and orphan lock, with size, age and status.

        Without `checksums` the status checks structure and sizes only (fast); with it, every
        file's SHA-256 too (`verify`).
        """
        out: list[EntryInfo] = []
        if not self.root.is_dir():
            return out
        now = time.time()
        for stage_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            stage = stage_dir.name
            keys = sorted(p.name for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
            locked = {p.name[1:-5] for p in stage_dir.glob(".*.lock")}
            for key in keys:
                path = stage_dir / key
                size, age = _size_and_age(path, now)
                reason = verify_entry(path, stage, key, None, checksums=checksums)
                status = "ok" if reason is None else f"damaged: {reason}"
                if key in locked:
                    status = f"building ({owner(read_lock(self.lock_path(stage, key)) or {})})"
                out.append(EntryInfo(stage, key, path, size, age, status))
            for key in sorted(locked - set(keys)):
                info = read_lock(self.lock_path(stage, key)) or {}
                out.append(EntryInfo(stage, key, self.lock_path(stage, key), 0, 0.0, f"building ({owner(info)})"))
            aside = stage_dir / DAMAGED_DIR
            if aside.is_dir():
                for path in sorted(p for p in aside.iterdir() if p.is_dir()):
                    size, age = _size_and_age(path, now)
                    try:
                        why = (path / REASON_FILE).read_text().splitlines()[0]
                    except (OSError, IndexError):
                        why = "unknown"
                    out.append(EntryInfo(stage, path.name.split(".", 1)[0], path, size, age, f"moved aside: {why}"))
        return out

    def verify_all(self) -> list[EntryInfo]:
        """Verify every entry with checksums; damaged entries are moved aside (rebuilt on next use)."""
        result = []
        for info in self.entries(checksums=True):
            if info.status.startswith("damaged"):
                moved = None
                lock = EntryLock(self.lock_path(info.stage, info.key), self.heartbeat_s)
                if lock.try_acquire():
                    try:
                        moved = self._move_aside(info.stage, info.key, info.status.removeprefix("damaged: "))
                    finally:
                        lock.release()
                if moved is not None:
                    info = EntryInfo(info.stage, info.key, moved, info.size_bytes, info.age_s, f"moved aside: {info.status.removeprefix('damaged: ')}")
            result.append(info)
        return result

    def remove(self, info: EntryInfo) -> bool:
        """Delete one listed entry (not one being built); True when removed."""
        if info.status.startswith("building"):
            log.warning("not removing %s/%s: %s", info.stage, info.key, info.status)
            return False
        lock = EntryLock(self.lock_path(info.stage, info.key), self.heartbeat_s)
        if not info.status.startswith("moved aside") and not lock.try_acquire():
            log.warning("not removing %s/%s: another process is building it", info.stage, info.key)
            return False
        try:
            grave = info.path.with_name(f".{info.path.name}.removing.{uuid.uuid4().hex}")
            try:
                os.replace(info.path, grave)  # atomically out of sight, then deleted
            except FileNotFoundError:
                return False
            shutil.rmtree(grave, ignore_errors=True)
        finally:
            lock.release()
        return True


def _size_and_age(path: Path, now: float) -> tuple[int, float]:
    size = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                size += (Path(dirpath) / name).stat().st_size
            except OSError:
                pass
    try:
        created = float(json.loads((path / MANIFEST_FILE).read_text())["created_unix"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            created = path.stat().st_mtime
        except OSError:
            created = now
    return size, max(now - created, 0.0)
