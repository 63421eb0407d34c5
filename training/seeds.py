"""Seed derivation: every stage, shadow and candidate gets its own seed from one root seed.

`derive_seed(root, "shadow", 3)` is stable across processes and Python versions
(it hashes the names with SHA-256, not Python's salted `hash`), so a cached
artifact can always be traced back to the root seed that made it.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(root: int, *names: object) -> int:
    """Return a 63-bit seed derived from `root` and a path of names."""
    text = "/".join([str(int(root))] + [str(n) for n in names])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(root: int, *names: object) -> torch.Generator:
    """A CPU `torch.Generator` seeded with `derive_seed(root, *names)`."""
    g = torch.Generator()
    g.manual_seed(derive_seed(root, *names))
    return g
