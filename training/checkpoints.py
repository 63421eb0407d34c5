"""The user's own trained model as the dense starting point (`teacher.checkpoint=PATH`, issue 24).

The file is a state_dict (`torch.save(model.state_dict(), PATH)`) of the configured model class,
read with `torch.load(weights_only=True)` (tensors only: a pickle that would run code is refused).
Its SHA-256 replaces the training recipe in the teacher's cache key, so every stage built on it
(oneshot/gmp pruning from it, distillation and DMP learning from it, the dense audit auditing
it) follows its content, never its path. `check` runs before any training: a missing file, one
that is not a state_dict, or one whose tensors do not fit the model is refused, named.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.model_adapter import load_user_state

_hashes: dict[tuple[str, int, int, int], str] = {}


def sha256(path: Path) -> str:
    """SHA-256 of the checkpoint file (memoised per file version in this process)."""
    if not path.is_file():
        raise FileNotFoundError(f"teacher.checkpoint={str(path)!r}: no such file (a state_dict saved with "
                                "torch.save(model.state_dict(), PATH))")
    st = os.stat(path)
    sig = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if sig not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _hashes[sig] = digest.hexdigest()
    return _hashes[sig]


def read_state(path: Path) -> Mapping[str, torch.Tensor]:
    """The state_dict in `path` (weights only), or a ValueError saying what the file holds instead."""
    sha256(path)  # a missing file is named first
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, ...
        raise ValueError(f"teacher.checkpoint={str(path)!r} cannot be read with torch.load(weights_only=True) "
                         f"({str(err).splitlines()[0]}); save the weights with torch.save(model.state_dict(), PATH)") from err
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        hint = ""
        if isinstance(state, Mapping):
            nested = [k for k, v in state.items() if isinstance(v, Mapping)]
            hint = f" (it holds the mapping(s) {nested}: save that state_dict alone)" if nested else ""
        raise ValueError(f"teacher.checkpoint={str(path)!r} holds a {type(state).__name__}, not a state_dict of "
                         f"tensors{hint}; save it with torch.save(model.state_dict(), PATH)")
    return state


def load_into(model: nn.Module, path: Path) -> None:
    """Load the checkpoint into `model` (strict: every key and shape must match)."""
    load_user_state(model, read_state(path), f"teacher.checkpoint={str(path)!r}")
