"""Cache keys: the hash of a stage's identity (name, version, declared config fields, upstream
keys) over canonical JSON, so the same spec always gives the same key."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the same spec always hashes the same."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(stage: str, version: int, spec: dict[str, Any], upstream: dict[str, str] | None = None) -> str:
    """Hash of a stage's identity: name, version, config fields and upstream keys."""
    payload = {"stage": stage, "version": version, "spec": spec, "upstream": upstream or {}}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:20]

