"""Content-addressed cache of stage artifacts, verified on every read and shared by machines
(STYLE "Stages and caching").

A cache key hashes the stage name, its version number, the stage's declared config fields
and the keys of its upstream artifacts. An entry `<cache_dir>/<stage>/<key>/` is built in a
temporary directory and moved in place with `os.replace`, so an interrupted run never leaves
a partial entry. Beside the artifacts it holds `spec.json` (the spec it was built from) and,
written last, `manifest.json`: the size and SHA-256 of every file.

Reading verifies the entry: the spec matches, every listed file is there with its size and
checksum, and no other file is. An entry that fails (truncated, bit-flipped, edited, a file
deleted or added, or written by a version before checksums) is never used: it is moved aside
to `<stage>/.damaged/<key>.<time>/` (not deleted; `REASON.txt` inside says why), named in a
warning, and rebuilt. Checksums of verified files are remembered per process by their
(size, mtime, ctime, inode), and only for files whose mtime was older than the hash by more
than `SETTLE_S` (as git does for its index: a file changed within the same clock tick as
its hashing is hashed again).

Building is guarded by a lock per entry, `<stage>/.<key>.lock`, that works across processes
and across hosts sharing `cache_dir` (NFS included), so a teacher or reference model is
trained once per study, not once per worker or machine. The lock is a file created with
`O_CREAT | O_EXCL` (atomic on local file systems and on NFSv3+; `flock`/`fcntl` locks are
not dependable over NFS) holding the owner's host, pid and a counter the owner rewrites
every `heartbeat_s` seconds. A process that finds the lock taken waits for the entry (with a
log line every `progress_every_s` seconds) instead of building it too. A lock is stale, and
taken over, when its owner is on this host and its pid is gone, or when its counter has not
changed for `stale_s` seconds of the waiter's own clock (no clock comparison between
hosts; the lock's contents are re-read through `open`, which NFS's close-to-open
consistency keeps fresh). Correctness never depends on the lock: entries are published
atomically and verified on read, so a lost race only costs a duplicate build.

Entries are readable by the group (directories 0750, files 0640; group-writable when the
cache's root is, and set-group-id directories stay so), so one cache folder serves several
users of a group.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
DAMAGED_DIR = ".damaged"
REASON_FILE = "REASON.txt"
MANIFEST_FORMAT = 1
SETTLE_S = 2.0  # a file hashed within this many seconds of its mtime is hashed again next time
_IGNORED_PREFIXES = (".nfs",)  # NFS "silly rename" files of open-but-deleted files


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same spec always hashes the same."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(stage: str, version: int, spec: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    """Hash of a stage's identity: name, version, config fields and upstream keys."""
    payload = {"stage": stage, "version": version, "spec": spec, "upstream": upstream or {}}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- file checksums

_memo: dict[str, tuple[tuple[int, ...], str, int]] = {}  # path -> (stat signature, sha256, hashed at ns)
_memo_lock = threading.Lock()


def _signature(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksum(path: str | os.PathLike[str]) -> str:
    """SHA-256 of `path`, remembered for this process while the file's stat is unchanged.

    A remembered checksum is trusted only when the file's mtime was more than `SETTLE_S`
    before it was hashed: a file rewritten within one mtime tick of its hashing keeps the
    same stat, so it is hashed again.
    """
    p = os.fspath(path)
    sig = _signature(os.stat(p))
    with _memo_lock:
        known = _memo.get(p)
    if known is not None and known[0] == sig and sig[1] < known[2] - int(SETTLE_S * 1e9):
        return known[1]
    hashed_at = time.time_ns()
    sha = sha256_file(p)
    if _signature(os.stat(p)) == sig:  # unchanged while it was read
        with _memo_lock:
            _memo[p] = (sig, sha, hashed_at)
    return sha


def forget_checksums() -> None:
    """Drop this process's remembered checksums (every file is hashed again)."""
    with _memo_lock:
        _memo.clear()


DATA_INDEX_FILE = "data_hashes.json"


def data_file_hashes(files: list[Path], index_path: Path | None) -> dict[str, str]:
    """SHA-256 of each data file (by absolute path), hashed once per file version.

    `index_path` (`<cache_dir>/data_hashes.json`) remembers each file's hash with its
    (size, mtime, inode) across runs, trusted under the same settle rule as
    `file_checksum`, so a large data set is not re-hashed every run. A file whose content
    differs from the one last recorded at its path is named in a warning: everything built
    on it gets a new key and is rebuilt.
    """
    index: dict[str, dict[str, Any]] = {}
    if index_path is not None:
        try:
            loaded = json.loads(index_path.read_text())
            index = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            index = {}
    out, changed = {}, False
    for f in files:
        path = os.path.abspath(f)
        st = os.stat(path)
        sig = [st.st_size, st.st_mtime_ns, st.st_ino]
        known = index.get(path)
        if (
            isinstance(known, dict)
            and known.get("sig") == sig
            and st.st_mtime_ns < int(known.get("hashed_at_ns", 0)) - int(SETTLE_S * 1e9)
        ):
            out[path] = str(known["sha256"])
            continue
        hashed_at = time.time_ns()
        sha = sha256_file(path)
        if isinstance(known, dict) and known.get("sha256") not in (None, sha):
            log.warning(
                "data file %s changed since it was last read (sha256 %s... -> %s...): every stage built "
                "on it gets a new cache key and is trained again",
                path, str(known["sha256"])[:12], sha[:12],
            )
        index[path] = {"sig": sig, "sha256": sha, "hashed_at_ns": hashed_at}
        out[path] = sha
        changed = True
    if changed and index_path is not None:
        try:
            _make_dir(index_path.parent)
            tmp = index_path.with_name(f".{index_path.name}.{uuid.uuid4().hex}")
            tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
            _chmod(tmp, _modes_for(index_path.parent)[1])
            os.replace(tmp, index_path)
        except OSError as err:  # a read-only cache still works: files are hashed each run
            log.warning("cannot update the data hash index %s: %s", index_path, err)
    return out


# --------------------------------------------------------------------------- permissions


def _modes_for(parent: Path) -> tuple[int, int]:
    """(directory mode, file mode) for new cache content under `parent`: group-readable;
    group-writable when `parent` is; directories keep a set-group-id `parent`'s bit."""
    try:
        pmode = parent.stat().st_mode
    except OSError:
        pmode = 0
    group_write = 0o020 if pmode & 0o020 else 0
    dir_mode = 0o750 | group_write | (stat.S_ISGID if pmode & stat.S_ISGID else 0)
    return dir_mode, 0o640 | group_write


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError as err:  # e.g. a folder owned by another user of the group
        log.debug("cannot chmod %s to %o: %s", path, mode, err)


def _make_dir(path: Path) -> None:
    """mkdir -p, giving each folder this creates the cache's group-readable mode."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        _chmod(d, _modes_for(d.parent)[0])


def _share_tree(root: Path, parent: Path) -> None:
    dir_mode, file_mode = _modes_for(parent)
    for dirpath, _, filenames in os.walk(root):
        _chmod(Path(dirpath), dir_mode)
        for name in filenames:
            _chmod(Path(dirpath) / name, file_mode)


# --------------------------------------------------------------------------- entries


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


class CacheLockTimeout(RuntimeError):
    """Raised when waiting for another process's build exceeds `wait_limit_s`."""


def write_manifest(entry_dir: Path, stage: str, key: str) -> dict[str, Any]:
    """Record size and SHA-256 of every file under `entry_dir` in `manifest.json` (written last)."""
    files = {}
    for dirpath, _, filenames in os.walk(entry_dir):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(entry_dir).as_posix()
            if rel == MANIFEST_FILE:
                continue
            files[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    manifest = {
        "format": MANIFEST_FORMAT,
        "stage": stage,
        "key": key,
        "created_unix": time.time(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "files": dict(sorted(files.items())),
    }
    (entry_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify_entry(
    entry_dir: Path, stage: str, key: str, spec: dict[str, Any] | None = None, checksums: bool = True
) -> str | None:
    """Why `entry_dir` must not be used (one line), or None when it is intact.

    Checks the manifest, that its stage/key are this entry's, the spec (when given), that
    exactly the listed files exist with their sizes, and (with `checksums`) their SHA-256.
    """
    try:
        manifest = json.loads((entry_dir / MANIFEST_FILE).read_text())
        listed: dict[str, dict[str, Any]] = manifest["files"]
    except FileNotFoundError:
        if (entry_dir / "DONE").exists():
            return "no manifest.json: written by a version before checksums, cannot be verified"
        return "no manifest.json: incomplete entry"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"manifest.json unreadable ({type(err).__name__}: {err})"
    if manifest.get("stage") != stage or manifest.get("key") != key:
        return f"manifest.json names {manifest.get('stage')}/{manifest.get('key')}, not this entry"
    present = set()
    for dirpath, _, filenames in os.walk(entry_dir):
        for name in filenames:
            if name.startswith(_IGNORED_PREFIXES):
                continue
            present.add((Path(dirpath) / name).relative_to(entry_dir).as_posix())
    present.discard(MANIFEST_FILE)
    missing = sorted(set(listed) - present)
    if missing:
        return f"{', '.join(missing)} missing"
    extra = sorted(present - set(listed))
    if extra:
        return f"unexpected file(s) {', '.join(extra)} not written with the entry"
    for rel, meta in listed.items():
        path = entry_dir / rel
        try:
            size = path.stat().st_size
            if size != int(meta["size"]):
                return f"{rel} is {size} bytes, expected {meta['size']} (truncated or rewritten)"
            if checksums and file_checksum(path) != meta["sha256"]:
                return f"{rel} fails its SHA-256 checksum (damaged or changed after it was written)"
        except OSError as err:
            return f"{rel} unreadable ({err})"
    if spec is not None:
        try:
            stored = json.loads((entry_dir / SPEC_FILE).read_text())
        except (OSError, ValueError) as err:
            return f"{SPEC_FILE} unreadable ({err})"
        if stored != json.loads(canonical_json({"stage": stage, "spec": spec})):
            return f"{SPEC_FILE} does not match the requested spec (hash collision or edited entry)"
    return None


class DamagedEntryError(RuntimeError):
    """A file of a cache entry changed after the entry was verified."""


def check_entry_file(path: str | os.PathLike[str]) -> None:
    """When `path` is a file of a cache entry (its folder holds `manifest.json`), check its size
    and checksum against the manifest; raise `DamagedEntryError` naming the entry otherwise.

    Stages verify whole entries when they look them up; this covers a file read later (a
    teacher loaded by every trial of a long study).
    """
    p = Path(path)
    try:
        manifest = json.loads((p.parent / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return  # not a cache entry
    meta = manifest.get("files", {}).get(p.name)
    why = None
    if meta is None:
        why = f"{p.name} is not listed in its manifest"
    else:
        try:
            if p.stat().st_size != int(meta["size"]) or file_checksum(p) != meta["sha256"]:
                why = f"{p.name} no longer matches its checksum"
        except OSError as err:
            why = f"{p.name} unreadable ({err})"
    if why is not None:
        raise DamagedEntryError(
            f"cache entry {p.parent} was damaged after it was verified: {why}. Run the command "
            "again: the entry is then moved aside and rebuilt"
        )


# --------------------------------------------------------------------------- locks


class _Lock:
    """An O_EXCL lock file `<stage>/.<key>.lock` with a heartbeat (see the module docstring)."""

    def __init__(self, path: Path, heartbeat_s: float):
        self.path = path
        self.heartbeat_s = heartbeat_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beat = 0
        self._started = 0.0
        self.held = False

    def _content(self) -> str:
        return json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "token": self.token,
                "started_unix": self._started,
                "beat": self._beat,
            }
        )

    def try_acquire(self) -> bool:
        self._started = time.time()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content().encode())
        finally:
            os.close(fd)
        _chmod(self.path, _modes_for(self.path.parent)[1])
        self.held = True
        _held_locks[str(self.path)] = self
        self._thread = threading.Thread(target=self._heartbeat, name=f"cache-lock-{self.path.name}", daemon=True)
        self._thread.start()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._beat += 1
            current = read_lock(self.path)
            if current is None or current.get("token") != self.token:
                log.warning("cache lock %s was taken over by another process; building on anyway", self.path)
                return
            try:  # rewrite in place (readers tolerate a half-written file: it counts as a beat)
                with open(self.path, "r+") as f:
                    f.write(self._content())
                    f.truncate()
            except OSError as err:
                log.warning("cannot refresh cache lock %s: %s", self.path, err)

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        _held_locks.pop(str(self.path), None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_lock(self.path)
        if current is not None and current.get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


_held_locks: dict[str, _Lock] = {}  # lock path -> a lock this process holds (claims are re-entrant)


def read_lock(path: Path) -> dict[str, Any] | None:
    """A lock file's contents; None when it does not exist; {} when unreadable (being written)."""
    try:
        with open(path) as f:  # open/read, not stat: NFS revalidates on open
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host is running (a zombie, killed but not yet reaped by its
    parent, is not: in a container without an init process orphans stay zombies)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _owner(info: dict[str, Any]) -> str:
    return f"{info.get('host', '?')}:{info.get('pid', '?')}" if info else "unknown owner"


# --------------------------------------------------------------------------- the cache


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
        lock = _Lock(self.lock_path(stage, key), self.heartbeat_s)
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
        _make_dir(aside_root)
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
        _make_dir(final.parent)
        lock = _held_locks.get(str(self.lock_path(stage, key)))
        owned = lock is None  # else a `claim` of this process holds it and releases it
        if lock is None:
            lock = _Lock(self.lock_path(stage, key), self.heartbeat_s)
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
                if str(path) in _held_locks:
                    continue
                _make_dir(path.parent)
                lock = _Lock(path, self.heartbeat_s)
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
            _share_tree(tmp, final.parent)  # mkdtemp makes 0700 folders
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
        from pipeline import interrupt

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
                and not _pid_alive(int(info["pid"]))
            )
            if dead_here or now - last_change > self.stale_s:
                why = "its process is gone" if dead_here else f"no heartbeat for {now - last_change:.0f} s"
                if self._take_over(lock_path, info, why, stage, key):
                    return
            if not logged or now - last_log >= self.progress_every_s:
                log.info(
                    "cache entry %s/%s is being built by %s (lock %s); waiting for it (%.0f s so far)",
                    stage, key, _owner(info), lock_path, now - start,
                )
                logged, last_log = True, now
            if self.wait_limit_s is not None and now - start > self.wait_limit_s:
                raise CacheLockTimeout(
                    f"waited {now - start:.0f} s for cache entry {stage}/{key} built by {_owner(info)}; "
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
        log.warning("cache entry %s/%s: took over the stale lock of %s (%s)", stage, key, _owner(seen), why)
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
                    status = f"building ({_owner(read_lock(self.lock_path(stage, key)) or {})})"
                out.append(EntryInfo(stage, key, path, size, age, status))
            for key in sorted(locked - set(keys)):
                info = read_lock(self.lock_path(stage, key)) or {}
                out.append(EntryInfo(stage, key, self.lock_path(stage, key), 0, 0.0, f"building ({_owner(info)})"))
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
                lock = _Lock(self.lock_path(info.stage, info.key), self.heartbeat_s)
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
        lock = _Lock(self.lock_path(info.stage, info.key), self.heartbeat_s)
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
