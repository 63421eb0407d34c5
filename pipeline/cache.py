"""Content-addressed cache of stage artifacts (STYLE "Stages and caching").

A cache key hashes the stage name, its version number, the stage's declared
config fields and the keys of its upstream artifacts. Entries are written into a
temporary directory and moved in place with `os.replace`, so an interrupted
run never leaves a partial entry. The spec is stored beside the artifact and
compared on read: an entry whose stored spec differs (a hash collision, a
hand-edited or corrupt entry) is rebuilt, never silently reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SPEC_FILE = "spec.json"
DONE_FILE = "DONE"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same spec always hashes the same."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(stage: str, version: int, spec: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    """Hash of a stage's identity: name, version, config fields and upstream keys."""
    payload = {"stage": stage, "version": version, "spec": spec, "upstream": upstream or {}}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CacheEntry:
    stage: str
    key: str
    path: Path
    hit: bool


class Cache:
    """A directory of `<stage>/<key>/` entries, each holding `spec.json` and the artifacts."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def entry_dir(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def lookup(self, stage: str, key: str, spec: dict[str, Any]) -> Path | None:
        """The entry's directory when it exists, is complete and its spec matches; else None."""
        path = self.entry_dir(stage, key)
        if not path.is_dir():
            return None
        spec_path = path / SPEC_FILE
        try:
            stored = json.loads(spec_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("cache entry %s is corrupt (%s); rebuilding it", path, err)
            return None
        expected = json.loads(canonical_json({"stage": stage, "spec": spec}))
        if stored != expected or not (path / DONE_FILE).exists():
            log.warning("cache entry %s does not match its spec; rebuilding it", path)
            return None
        return path

    def get_or_create(
        self, stage: str, key: str, spec: dict[str, Any], build: Callable[[Path], None]
    ) -> CacheEntry:
        """Return the cached entry, or call `build(tmp_dir)` and move its output in place atomically."""
        found = self.lookup(stage, key, spec)
        if found is not None:
            return CacheEntry(stage, key, found, hit=True)
        final = self.entry_dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            build(tmp)
            (tmp / SPEC_FILE).write_text(canonical_json({"stage": stage, "spec": spec}))
            (tmp / DONE_FILE).write_text("")
            if self.lookup(stage, key, spec) is not None:  # another worker finished it first
                shutil.rmtree(tmp, ignore_errors=True)
                return CacheEntry(stage, key, final, hit=False)
            if final.exists():  # stale or mismatching entry: replace it
                stale = final.with_name(f".stale.{key}.{os.getpid()}")
                os.replace(final, stale)
                shutil.rmtree(stale, ignore_errors=True)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return CacheEntry(stage, key, final, hit=False)
