"""An entry's manifest: the size and SHA-256 of every file, written last, verified on read.

Reading verifies the entry: the spec matches, every listed file is there with its size and
checksum, and no other file is. A file read later than the entry's lookup (a teacher loaded
by every trial of a long study) is checked again on its own (`check_entry_file`).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from pipeline.cache.checksums import file_checksum, sha256_file
from pipeline.cache.keys import canonical_json

SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
_IGNORED_PREFIXES = (".nfs",)  # NFS "silly rename" files of open-but-deleted files


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

