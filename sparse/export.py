"""A real compressed export of a sparse model, its exact byte size, and a loader back into a model.

One job: bytes on disk. RigL (Evci et al. 2020) and the official SafeCompress code only *count*
nonzeros; SafeCompress (Zhu et al., TSE 2024) reports model size, so we write a file whose length
is the size we report. Every prunable (masked) weight is stored as the smallest of
bitmask+values, indices+values (uint16 indices when numel <= 2**16, else uint32/uint64) or raw
dense values; every other tensor of ``model.state_dict()`` (biases, norms, buffers) raw.

Layout (little-endian)::

    b"SCMP" | version: uint16 | header_len: uint32 | header (compact JSON, UTF-8) | payload

The header lists per tensor: name, shape, stored dtype, encoding, nnz, index dtype; plus the
value dtype and the payload's length and CRC-32. Payload blocks follow the header's order:
``dense``: numel values; ``bitmask``: ceil(numel/8) bytes of little-endian bit order then nnz
values; ``indices``: nnz ascending flat indices then nnz values. Values of floating tensors are
stored as ``value_dtype`` ("float32" or "float16"); other dtypes (e.g. int64 counters) as they are.
With a mask, the stored positions are the mask's active positions, so loading gives the masked
model; without one, a prunable weight's nonzeros.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sparse.masks import MaskSet

MAGIC = b"SCMP"
VERSION = 1
VALUE_DTYPES = ("float32", "float16")
ENCODINGS = ("dense", "bitmask", "indices")
_PREFIX = struct.Struct("<4sHI")  # magic, version, header length

_NP_DTYPES: dict[str, Any] = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
}


def _index_dtype(numel: int) -> str:
    if numel <= 2**16:
        return "uint16"
    if numel <= 2**32:
        return "uint32"
    return "uint64"


def _stored_dtype(t: torch.Tensor, value_dtype: str) -> str:
    if t.is_floating_point():
        return value_dtype
    name = str(t.dtype).removeprefix("torch.")
    if name not in _NP_DTYPES:
        raise ValueError(
            f"cannot export tensor dtype {t.dtype}; supported: floating types, {sorted(_NP_DTYPES)}"
        )
    return name


def _to_numpy(t: torch.Tensor, dtype: str) -> np.ndarray:
    t = t.detach().cpu()
    if t.is_floating_point():
        t = t.float()  # bfloat16 has no numpy dtype; values are cast to ``dtype`` below
    return t.numpy().astype(_NP_DTYPES[dtype], copy=False)


def _sparse_tensors(model: nn.Module, masks: MaskSet | None) -> dict[str, torch.Tensor]:
    """State-dict name -> bool mask of stored positions, for the tensors stored sparsely."""
    if masks is not None:
        if not isinstance(masks, MaskSet):
            raise ValueError(f"masks must be a MaskSet or None, got {type(masks).__name__}")
        masks._pairs(model)  # validates names and shapes
        return {k: m.detach().cpu() for k, m in masks.masks.items()}
    params = dict(model.named_parameters())
    return {k: (params[k].detach() != 0).cpu() for k in MaskSet.prunable_names(model)}


def _check_value_dtype(value_dtype: str) -> None:
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"unknown value_dtype {value_dtype!r}; valid: {list(VALUE_DTYPES)}")


def export_model(
    model: nn.Module, masks: MaskSet | None = None, value_dtype: str = "float32"
) -> bytes:
    """The model (``state_dict``) as compressed bytes; see the module docstring for the format."""
    _check_value_dtype(value_dtype)
    sparse = _sparse_tensors(model, masks)
    entries: list[dict[str, Any]] = []
    blocks: list[bytes] = []
    for name, t in model.state_dict().items():
        dtype = _stored_dtype(t, value_dtype)
        arr = _to_numpy(t, dtype).reshape(-1)
        entry: dict[str, Any] = {
            "name": name,
            "shape": list(t.shape),
            "dtype": dtype,
            "enc": "dense",
        }
        if name in sparse:
            keep = sparse[name].reshape(-1).cpu().numpy()
            n, k = keep.size, int(keep.sum())
            vb = arr.itemsize
            idx_dtype = _index_dtype(n)
            cost = {
                "bitmask": math.ceil(n / 8) + k * vb,
                "indices": k * np.dtype(_NP_DTYPES[idx_dtype]).itemsize + k * vb,
                "dense": n * vb,
            }
            enc = min(ENCODINGS[::-1], key=lambda e: cost[e])  # ties: indices, bitmask, then dense
            entry["enc"] = enc
            if enc == "bitmask":
                entry["nnz"] = k
                blocks.append(np.packbits(keep, bitorder="little").tobytes())
                blocks.append(arr[keep].tobytes())
                entries.append(entry)
                continue
            if enc == "indices":
                entry["nnz"] = k
                entry["idx"] = idx_dtype
                blocks.append(np.flatnonzero(keep).astype(_NP_DTYPES[idx_dtype]).tobytes())
                blocks.append(arr[keep].tobytes())
                entries.append(entry)
                continue
            arr = np.where(keep, arr, np.zeros((), dtype=arr.dtype))
        blocks.append(arr.tobytes())
        entries.append(entry)
    payload = b"".join(blocks)
    header = {
        "value_dtype": value_dtype,
        "payload_bytes": len(payload),
        "crc32": zlib.crc32(payload),
        "tensors": entries,
    }
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return _PREFIX.pack(MAGIC, VERSION, len(hb)) + hb + payload


def exported_size_bytes(
    model: nn.Module, masks: MaskSet | None = None, value_dtype: str = "float32"
) -> int:
    """``len(export_model(model, masks, value_dtype))``."""
    return len(export_model(model, masks, value_dtype))


def save_export(
    model: nn.Module,
    path: str | os.PathLike[str],
    masks: MaskSet | None = None,
    value_dtype: str = "float32",
) -> int:
    """Write the export atomically (temp file in the same folder, then ``os.replace``); return bytes."""
    data = export_model(model, masks, value_dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return len(data)


def _read_bytes(data_or_path: bytes | bytearray | memoryview | str | os.PathLike[str]) -> bytes:
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path)
    if isinstance(data_or_path, (str, os.PathLike)):
        return Path(data_or_path).read_bytes()
    raise ValueError(f"expected export bytes or a file path, got {type(data_or_path).__name__}")


def read_export(
    data_or_path: bytes | bytearray | memoryview | str | os.PathLike[str],
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Decode an export: (header, name -> dense CPU tensor in its stored dtype, name -> stored-position mask).

    Raises ``ValueError`` on a wrong magic, an unsupported version, a truncated file or a CRC mismatch.
    """
    data = _read_bytes(data_or_path)
    if len(data) < _PREFIX.size:
        raise ValueError(f"export too short ({len(data)} bytes) to be a SafeCompress export")
    magic, version, hlen = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise ValueError(f"not a SafeCompress export: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ValueError(f"unsupported export version {version}; this reader supports {VERSION}")
    start = _PREFIX.size + hlen
    try:
        header = json.loads(data[_PREFIX.size : start].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"export header is corrupt: {err}") from None
    payload = data[start:]
    if len(payload) != header.get("payload_bytes"):
        raise ValueError(
            f"export payload is {len(payload)} bytes, header says {header.get('payload_bytes')}"
        )
    if zlib.crc32(payload) != header.get("crc32"):
        raise ValueError("export payload CRC-32 mismatch: the file is corrupt")
    tensors: dict[str, torch.Tensor] = {}
    stored: dict[str, torch.Tensor] = {}
    off = 0

    def take(nbytes: int) -> bytes:
        nonlocal off
        chunk = payload[off : off + nbytes]
        off += nbytes
        return chunk

    for e in header["tensors"]:
        shape = tuple(e["shape"])
        n = math.prod(shape)
        vdt = np.dtype(_NP_DTYPES[e["dtype"]])
        if e["enc"] == "dense":
            arr = np.frombuffer(take(n * vdt.itemsize), dtype=vdt).copy()
            keep = np.ones(n, dtype=bool)
        else:
            k = int(e["nnz"])
            if e["enc"] == "bitmask":
                bits = np.frombuffer(take(math.ceil(n / 8)), dtype=np.uint8)
                keep = np.unpackbits(bits, count=n, bitorder="little").astype(bool)
            elif e["enc"] == "indices":
                idt = np.dtype(_NP_DTYPES[e["idx"]])
                idx = np.frombuffer(take(k * idt.itemsize), dtype=idt).astype(np.int64)
                keep = np.zeros(n, dtype=bool)
                keep[idx] = True
            else:
                raise ValueError(
                    f"tensor {e['name']!r} has unknown encoding {e['enc']!r}; valid: {list(ENCODINGS)}"
                )
            arr = np.zeros(n, dtype=vdt)
            arr[keep] = np.frombuffer(take(k * vdt.itemsize), dtype=vdt)
        tensors[e["name"]] = torch.from_numpy(arr.reshape(shape))
        stored[e["name"]] = torch.from_numpy(keep.reshape(shape))
    return header, tensors, stored


def load_export(
    data_or_path: bytes | bytearray | memoryview | str | os.PathLike[str], model: nn.Module
) -> nn.Module:
    """Load an export into ``model`` (same architecture) in place and return it.

    The header must list exactly the model's ``state_dict`` names with the same shapes; otherwise a
    ``ValueError`` names the first offending tensor. Values are cast to the model's dtypes and
    devices; a float32 export gives bit-identical weights.
    """
    _, tensors, _ = read_export(data_or_path)
    own = model.state_dict()
    for name in tensors:
        if name not in own:
            raise ValueError(f"export has tensor {name!r}, which the model does not have")
    for name, t in own.items():
        if name not in tensors:
            raise ValueError(f"model tensor {name!r} is missing from the export")
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise ValueError(
                f"tensor {name!r}: export shape {tuple(tensors[name].shape)} != model shape {tuple(t.shape)}"
            )
    new_state = {name: tensors[name].to(dtype=t.dtype, device=t.device) for name, t in own.items()}
    model.load_state_dict(new_state, strict=True)
    return model


def dense_size_bytes(model: nn.Module) -> int:
    """float32 bytes of every parameter and buffer (each counted once): the dense reference."""
    seen: set[int] = set()
    n = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            n += t.numel()
    return 4 * n


def size_report(
    model: nn.Module, masks: MaskSet | None = None, value_dtype: str = "float32"
) -> Mapping[str, float]:
    """Exported bytes, dense fp32 bytes, their ratio, and (with masks) nonzero counts and density."""
    exported = exported_size_bytes(model, masks, value_dtype)
    dense = dense_size_bytes(model)
    out: dict[str, float] = {
        "model_size_bytes": exported,
        "dense_size_bytes": dense,
        "size_ratio": exported / dense,
    }
    if masks is not None:
        out.update(
            {"n_active": masks.n_active(), "n_total": masks.n_total(), "density": masks.density()}
        )
    return out
