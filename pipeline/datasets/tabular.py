"""The tabular sets of Shokri et al. (S&P'17): Purchase100 and Texas100, binary features.

Expected files (relative to `data_dir`): Purchase100 `dataset_purchase` (or
`purchase100/dataset_purchase`, or the archive `dataset_purchase.tgz`): CSV lines
`label,f1,...,f600`, label in 1..100, features 0/1. Texas100 `texas/100/feats` and
`texas/100/labels` (or under `texas100/`, or the archive `dataset_texas.tgz`): `feats` has 6169
comma-separated 0/1 features per line, `labels` one label 1..100 per line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.datasets.files import (
    check_md5,
    first_existing,
    read_tar_members,
    record_read,
    subsample,
)
from pipeline.datasets.registry import register
from training.data import Dataset

log = logging.getLogger(__name__)

SHOKRI_SOURCE = "https://www.comp.nus.edu.sg/~reza/files/"
PURCHASE_FEATURES = 600
TEXAS_FEATURES = 6169

def _parse_binary_rows(data: bytes, where: str, n_fields: int, what: str) -> np.ndarray:
    """Comma-separated numeric rows, each with exactly `n_fields` fields: (n, n_fields) float32.

    Blank lines are skipped; a row with another field count is reported with its
    1-based line number.
    """
    lines = data.splitlines()
    keep = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        got = line.count(b",") + 1
        if got != n_fields:
            raise ValueError(
                f"{where}, line {number}: expected {n_fields} comma-separated fields ({what}), got {got}"
            )
        keep.append(line)
    if not keep:
        raise ValueError(f"{where}: no data rows")
    try:
        return np.loadtxt(keep, delimiter=",", dtype=np.float32, ndmin=2)
    except ValueError as err:
        raise ValueError(
            f"{where}: non-numeric value ({err}; rows counted from 0 over non-blank lines)"
        ) from err


def _labels_1_based(raw: np.ndarray, where: str, n_classes: int) -> np.ndarray:
    """Labels 1..n_classes (as released) shifted to 0..n_classes-1."""
    if not np.all(raw == np.round(raw)):
        raise ValueError(f"{where}: labels must be integers 1..{n_classes}")
    y = raw.astype(np.int64)
    bad = np.flatnonzero((y < 1) | (y > n_classes))
    if bad.size:
        raise ValueError(
            f"{where}: label {y[bad[0]]} on data row {bad[0] + 1} is outside 1..{n_classes} "
            "(the released files number classes from 1)"
        )
    return y - 1


def _read_from_tree_or_archive(
    ds: str,
    root: Path,
    relative: Sequence[str],
    subfolders: Sequence[str],
    archive_name: str,
    source: str,
    fmt: str,
    expected_md5: Optional[str],
) -> dict[str, tuple[str, bytes]]:
    """Find `relative` files under `root` (or `root/<subfolder>`) or inside `archive_name`."""
    for base in [root, *(root / s for s in subfolders)]:
        paths = [base / r for r in relative]
        if all(p.is_file() for p in paths):
            for p in paths:
                record_read(p)
            if len(paths) == 1:
                check_md5(paths[0], expected_md5, verify=True)
            elif expected_md5 is not None:
                log.info(
                    "%s: expected_md5 applies to %s; extracted files not checked", ds, archive_name
                )
            return {r: (str(p), p.read_bytes()) for r, p in zip(relative, paths, strict=True)}
    archive = first_existing([root / archive_name, *(root / s / archive_name for s in subfolders)])
    if archive is not None:
        record_read(archive)
        check_md5(archive, expected_md5, verify=True)
        members = read_tar_members(archive, list(relative))
        return {r: (f"{archive}:{r}", members[r]) for r in relative}
    expected = [str(root / r) for r in relative]
    alt = [str(root / s / r) for s in subfolders for r in relative]
    raise FileNotFoundError(
        f"{ds} not found: expected {expected} (or {alt}, or the archive {root / archive_name}). "
        f"Format: {fmt}. Get {archive_name} from {source}{archive_name} (Shokri et al. S&P'17 "
        f"release) and put it, or its extracted contents, in {root} "
        "(set paths.data_dir to use another folder; this tool does not download)"
    )


@register("purchase100", "Purchase100 (Shokri et al.): 197,324 records, 600 binary features, 100 classes",
          reads_files=True)
def load_purchase100(
    name: str = "purchase100",
    data_dir: str = "./data",
    expected_md5: Optional[str] = None,
    n_samples: Optional[int] = None,
    subsample_seed: int = 0,
) -> Dataset:
    """Purchase100: 197,324 shoppers, 600 binary "bought item" features, 100 classes.

    Reads `<data_dir>/dataset_purchase` (or `purchase100/dataset_purchase`, or
    `dataset_purchase.tgz`): CSV lines `label,f1,...,f600` with label 1..100
    (shifted to 0..99). `expected_md5`, if given, is checked on the file read.
    """
    files = _read_from_tree_or_archive(
        "Purchase100",
        Path(data_dir),
        ["dataset_purchase"],
        ["purchase100", "purchase"],
        "dataset_purchase.tgz",
        SHOKRI_SOURCE,
        f"CSV lines 'label,f1,...,f{PURCHASE_FEATURES}', label 1..100, features 0/1, no header",
        expected_md5,
    )
    where, blob = files["dataset_purchase"]
    rows = _parse_binary_rows(
        blob, where, PURCHASE_FEATURES + 1, f"a label then {PURCHASE_FEATURES} features"
    )
    y = _labels_1_based(rows[:, 0], where, 100)
    x, y = subsample(name, rows[:, 1:], y, n_samples, subsample_seed)
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), 100)


@register("texas100", "Texas100 (Shokri et al.): 67,330 records, 6169 binary features, 100 classes",
          reads_files=True)
def load_texas100(
    name: str = "texas100",
    data_dir: str = "./data",
    expected_md5: Optional[str] = None,
    n_samples: Optional[int] = None,
    subsample_seed: int = 0,
) -> Dataset:
    """Texas100: 67,330 hospital discharge records, 6169 binary features, 100 procedures.

    Reads `<data_dir>/texas/100/feats` and `texas/100/labels` (or under
    `texas100/`, or inside `dataset_texas.tgz`): `feats` has 6169 comma-separated
    0/1 values per line, `labels` one label 1..100 per line (shifted to 0..99).
    `expected_md5`, if given, is checked on the archive (files from a folder are
    not checked).
    """
    files = _read_from_tree_or_archive(
        "Texas100",
        Path(data_dir),
        ["texas/100/feats", "texas/100/labels"],
        ["texas100"],
        "dataset_texas.tgz",
        SHOKRI_SOURCE,
        f"'feats': {TEXAS_FEATURES} comma-separated 0/1 features per line; "
        "'labels': one label 1..100 per line, same number of lines",
        expected_md5,
    )
    feats_where, feats = files["texas/100/feats"]
    labels_where, labels = files["texas/100/labels"]
    x = _parse_binary_rows(feats, feats_where, TEXAS_FEATURES, "binary features")
    raw = _parse_binary_rows(labels, labels_where, 1, "one label")[:, 0]
    if raw.shape[0] != x.shape[0]:
        raise ValueError(
            f"{labels_where} has {raw.shape[0]} labels but {feats_where} has {x.shape[0]} rows"
        )
    y = _labels_1_based(raw, labels_where, 100)
    x, y = subsample(name, x, y, n_samples, subsample_seed)
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), 100)

