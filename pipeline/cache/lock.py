"""The build lock of one cache entry, `<stage>/.<key>.lock`, that works across processes and
across hosts sharing `cache_dir` (NFS included), so a teacher or reference model is trained
once per study, not once per worker or machine.

The lock is a file created with `O_CREAT | O_EXCL` (atomic on local file systems and on
NFSv3+; `flock`/`fcntl` locks are not dependable over NFS) holding the owner's host, pid and a
counter the owner rewrites every `heartbeat_s` seconds. A lock is stale, and taken over, when
its owner is on this host and its pid is gone, or when its counter has not changed for
`stale_s` seconds of the waiter's own clock (no clock comparison between hosts; the lock's
contents are re-read through `open`, which NFS's close-to-open consistency keeps fresh).
Correctness never depends on the lock: entries are published atomically and verified on read,
so a lost race only costs a duplicate build.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.cache.permissions import chmod, modes_for

log = logging.getLogger(__name__)


class CacheLockTimeout(RuntimeError):
    """Raised when waiting for another process's build exceeds `wait_limit_s`."""


class EntryLock:
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
        chmod(self.path, modes_for(self.path.parent)[1])
        self.held = True
        held_locks[str(self.path)] = self
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
        held_locks.pop(str(self.path), None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_lock(self.path)
        if current is not None and current.get("token") == self.token:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


held_locks: dict[str, EntryLock] = {}  # lock path -> a lock this process holds (claims are re-entrant)


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


def pid_alive(pid: int) -> bool:
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


def owner(info: dict[str, Any]) -> str:
    return f"{info.get('host', '?')}:{info.get('pid', '?')}" if info else "unknown owner"

