"""Checksums of cache files and data files, remembered while a file is unchanged.

Checksums of verified files are remembered per process by their (size, mtime, ctime, inode),
and only for files whose mtime was older than the hash by more than `SETTLE_S` (as git does
for its index: a file changed within the same clock tick as its hashing is hashed again).
Data files' hashes are also remembered across runs, in `<cache_dir>/data_hashes.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pipeline.cache.permissions import chmod, make_dir, modes_for

log = logging.getLogger(__name__)

SETTLE_S = 2.0  # a file hashed within this many seconds of its mtime is hashed again next time

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
            make_dir(index_path.parent)
            tmp = index_path.with_name(f".{index_path.name}.{uuid.uuid4().hex}")
            tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
            chmod(tmp, modes_for(index_path.parent)[1])
            os.replace(tmp, index_path)
        except OSError as err:  # a read-only cache still works: files are hashed each run
            log.warning("cannot update the data hash index %s: %s", index_path, err)
    return out

