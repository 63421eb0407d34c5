"""What every file loader shares: where it reads from, the checksums, the reads it reports.

This tool never downloads: each loader looks for the file(s) the data set is usually
distributed as and, when they are missing, raises a `FileNotFoundError` that names the
expected paths, the format and where to get them. Every file a loader reads is reported to
`recording_reads()`; `pipeline.context` hashes those files into the data's cache key, so a
replaced file retrains what was built on it.

Checksums: the CIFAR archives are checked against their published MD5 by default; every
loader takes `expected_md5` to check the file it reads (for the tabular and text sets no
checksum is published, so the default is no check and the MD5 is logged so that runs can be
compared). Extracted folders cannot be checked against the archive's MD5; the loader logs that
it skipped the check.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

_recorders: list[list[Path]] = []


@contextmanager
def recording_reads() -> Iterator[list[Path]]:
    """Collect the paths of the data files the loaders read inside this block."""
    files: list[Path] = []
    _recorders.append(files)
    try:
        yield files
    finally:
        _recorders.remove(files)


def record_read(path: Path) -> None:
    """Report a data file a loader reads (its content enters the cache keys)."""
    for files in _recorders:
        if path not in files:
            files.append(path)


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: Path, expected: Optional[str], verify: bool) -> None:
    if not verify:
        return
    actual = file_md5(path)
    if expected is None:
        log.info("%s: MD5 %s (no published checksum to compare with)", path, actual)
        return
    if actual.lower() != str(expected).lower():
        raise ValueError(
            f"checksum mismatch for {path}: expected MD5 {expected}, got {actual}. "
            "The file is corrupt, incomplete or a different release; download it again "
            "(or pass expected_md5=<md5> / verify_checksum=false if you trust this copy)"
        )
    log.info("%s: MD5 %s verified", path, actual)


def first_existing(candidates: Sequence[Path]) -> Optional[Path]:
    for path in candidates:
        if path.exists():
            return path
    return None


def subsample(ds_name: str, x: np.ndarray, y: np.ndarray, n_samples: Optional[int], seed: int):
    """A fixed random subset of the pool (same subset for every root seed), for CPU-sized runs."""
    if n_samples is None or int(n_samples) >= len(y):
        return x, y
    if int(n_samples) < 1:
        raise ValueError(f"{ds_name}: n_samples must be >= 1 or null, got {n_samples}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[: int(n_samples)])
    return x[idx], y[idx]


def read_tar_members(path: Path, names: Sequence[str]) -> dict[str, bytes]:
    """The bytes of the members `names` of a (gzipped) tar archive; errors name the file."""
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            by_name = {m.name.removeprefix("./"): m for m in tar.getmembers()}
            for name in names:
                member = by_name.get(name)
                if member is None or not member.isfile():
                    raise ValueError(
                        f"archive {path} has no member {name!r}; expected members {list(names)}"
                    )
                handle = tar.extractfile(member)
                assert handle is not None  # isfile() checked above
                out[name] = handle.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ValueError(f"cannot read archive {path} (truncated or not a tar.gz?): {err}") from err
    return out

