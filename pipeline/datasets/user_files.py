"""`dataset=files`: the user's own data from files, no code (issue 24).

`dataset.format` says how `dataset.path` is read (readers in `pipeline.datasets.readers`):

- `npz`    one archive with the features `x_key` (default `x`) and labels `y_key` (`y`);
- `npy`    `path` the features, `labels_path` the labels;
- `csv`, `parquet`   a table: `label_column` (default `label`), `feature_columns` (default every
           other column but the membership column). Numeric features only unless
           `categorical=onehot`: then each non-numeric column becomes one 0/1 column per value
           (sorted); by default (`categorical=refuse`) such columns are refused, named;
- `image_folder`  `root/<class>/*.png|jpg` (Pillow), labels by sorted class folder name,
           `channels` 1 or 3, `image_size` [H, W] to resize (else every image must be the same size);
- `idx`    `path` the images/features IDX file, `labels_path` the labels IDX file (gzipped or not).

Labels must be integers 0..C-1 with every class present (C = the largest label + 1);
features must be finite. Images are scaled to [0, 1]; IDX `uint8` values too; `standardise=true`
standardises every feature with the members' statistics.

**User membership** (optional): which records trained the user's model and which it never saw,
as a column / `.npz` array (`member_column`: 1 member, 0 non-member) or index files
(`members_file`, `non_members_file`: record numbers from 0, `.npy` or text). Then the protocol's
members (`train`) are exactly the user's members, and `val`, `test` (the audit's non-members)
and `population` are cut from the user's non-members (`pipeline.membership`); records in
neither list are left out. Every file read enters the data's cache key by its content.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import numpy as np
import torch

from pipeline.datasets import readers
from pipeline.datasets.registry import register
from training.data import Dataset

log = logging.getLogger(__name__)

FORMATS = ("npz", "npy", "csv", "parquet", "image_folder", "idx")
CATEGORICAL = ("refuse", "onehot")


@register("files", "your own data from files: npz | npy | csv | parquet | image_folder | idx (dataset.format)",
          reads_files=True)
def load_files(
    name: str = "files",
    format: str = "npz",  # noqa: A002 - the config key users write
    path: Optional[str] = None,
    labels_path: Optional[str] = None,
    x_key: str = "x",
    y_key: str = "y",
    label_column: str = "label",
    feature_columns: Optional[list[str]] = None,
    categorical: str = "refuse",
    image_size: Optional[list[int]] = None,
    channels: int = 1,
    standardise: bool = False,
    member_column: Optional[str] = None,
    members_file: Optional[str] = None,
    non_members_file: Optional[str] = None,
    n_samples: Optional[int] = None,
    subsample_seed: int = 0,
    **_: Any,
) -> Dataset:
    """The labelled pool (with the user's membership when given) read from `path`."""
    what = f"dataset={name} (format={format})"
    if format not in FORMATS:
        raise ValueError(f"unknown dataset.format {format!r}; valid: {list(FORMATS)}")
    if categorical not in CATEGORICAL:
        raise ValueError(f"unknown dataset.categorical {categorical!r}; valid: {list(CATEGORICAL)}")
    if not path:
        raise ValueError(f"{what}: set dataset.path to the {'folder' if format == 'image_folder' else 'file'} to read")
    member = None
    if format == "npz":
        keys = [x_key, y_key] + ([member_column] if member_column else [])
        arrays = readers.read_arrays(path, keys, what)
        x, y = arrays[x_key], arrays[y_key]
        member = arrays[member_column] if member_column else None
    elif format in ("npy", "idx"):
        if not labels_path:
            raise ValueError(f"{what}: set dataset.labels_path to the labels file (dataset.path holds the features)")
        read = readers.read_npy if format == "npy" else readers.read_idx
        x, y = read(path, f"{what} features"), read(labels_path, f"{what} labels")
        if format == "idx" and x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
            if x.ndim == 3:  # (n, H, W) grey images, as MNIST-like IDX files hold them
                x = x[:, None]
    elif format in ("csv", "parquet"):
        x, y, member = _table(path, format, label_column, feature_columns, categorical, member_column, what)
    else:
        x, y, classes = readers.read_image_folder(path, image_size, int(channels), what)
        log.info("%s: classes %s", what, dict(enumerate(classes)))
    if member_column and format not in ("npz", "csv", "parquet"):
        raise ValueError(f"{what}: dataset.member_column works with npz, csv and parquet; use "
                         "dataset.members_file / dataset.non_members_file for format={format}")
    x = _features(x, what)
    y, n_classes = _labels(y, len(x), what)
    membership = _membership(len(y), member, members_file, non_members_file, what)
    if n_samples is not None and int(n_samples) < len(y):
        if int(n_samples) < 1:
            raise ValueError(f"{what}: dataset.n_samples must be >= 1 or null, got {n_samples}")
        idx = np.sort(np.random.default_rng(subsample_seed).permutation(len(y))[: int(n_samples)])
        x, y = x[idx], y[idx]
        membership = membership[idx] if membership is not None else None
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), n_classes,
                   standardise=bool(standardise), membership=membership)


def _table(path, fmt, label_column, feature_columns, categorical, member_column, what):
    import pandas as pd

    table = readers.read_table(path, fmt, what)
    columns = [str(c) for c in table.columns]
    table.columns = columns
    wanted = [label_column, *([member_column] if member_column else []), *(feature_columns or [])]
    missing = [c for c in wanted if c not in columns]
    if missing:
        raise ValueError(f"{what}: {path} has no column {missing[0]!r}; its columns: {columns} "
                         "(dataset.label_column, dataset.feature_columns, dataset.member_column)")
    features = list(feature_columns) if feature_columns else [
        c for c in columns if c not in (label_column, member_column)]
    if not features:
        raise ValueError(f"{what}: {path} has no feature column besides {label_column!r}")
    frame = table[features]
    text = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    if text and categorical == "refuse":
        raise ValueError(f"{what}: non-numeric feature column(s) {text} in {path}; set dataset.categorical=onehot "
                         "(one 0/1 column per value) or leave them out with dataset.feature_columns")
    if text:
        if frame[text].isna().any().any():
            bad = [c for c in text if frame[c].isna().any()]
            raise ValueError(f"{what}: categorical column(s) {bad} have missing values")
        frame = pd.get_dummies(frame, columns=text, dtype=np.float32)
    try:
        x = frame.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: feature columns of {path} are not numeric: {err}") from err
    y = table[label_column].to_numpy()
    member = table[member_column].to_numpy() if member_column else None
    return x, y, member


def _features(x: np.ndarray, what: str) -> np.ndarray:
    if x.dtype == object:
        raise ValueError(f"{what}: the features are ragged (records of different shapes); store equal-shaped records")
    if x.ndim < 2:
        raise ValueError(f"{what}: the features have shape {x.shape}; expected (n_records, ...) with >= 1 feature")
    if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
        raise ValueError(f"{what}: the features have dtype {x.dtype}; expected numbers")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{what}: {len(rows)} record(s) have NaN or infinite features (first: record {rows[0]}); "
                         "drop or impute them first")
    return x


def _labels(y: np.ndarray, n: int, what: str) -> tuple[np.ndarray, int]:
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise ValueError(f"{what}: {len(y)} labels for {n} records")
    if not np.issubdtype(y.dtype, np.number) or (np.issubdtype(y.dtype, np.floating) and
                                                 not (np.isfinite(y).all() and np.all(y == np.round(y)))):
        sample = sorted({str(v) for v in y[:1000]})[:5]
        raise ValueError(f"{what}: labels must be integers 0..C-1, got values like {sample}; map classes to 0..C-1 first")
    y = y.astype(np.int64)
    c = int(y.max()) + 1
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"{what}: labels must be integers 0..C-1 (C={c}), found {int(y.min())}..{int(y.max())}")
    absent = sorted(set(range(c)) - set(np.unique(y).tolist()))
    if absent:
        raise ValueError(f"{what}: labels must be integers 0..C-1 with every class present, but class(es) "
                         f"{absent[:10]} of 0..{c - 1} have no record")
    if c < 2:
        raise ValueError(f"{what}: found {c} class; classification needs >= 2")
    return y, c


def _membership(n: int, column: Optional[np.ndarray], members_file: Optional[str],
                non_members_file: Optional[str], what: str) -> Optional[np.ndarray]:
    """(n,) int8: 1 the user's member, 0 its non-member, -1 in neither list (left out); None: not given."""
    if column is not None and (members_file or non_members_file):
        raise ValueError(f"{what}: give the membership once: dataset.member_column or dataset.members_file/"
                         "non_members_file, not both")
    if column is not None:
        col = np.asarray(column).reshape(-1)
        values = set(np.unique(col).tolist()) if len(col) else set()
        if not values <= {0, 1}:
            raise ValueError(f"{what}: the member column must hold 1 (member) or 0 (non-member), found "
                             f"{sorted(map(str, values))[:5]}")
        return col.astype(np.int8)
    if not (members_file or non_members_file):
        return None
    if not (members_file and non_members_file):
        raise ValueError(f"{what}: user membership needs both dataset.members_file and dataset.non_members_file")
    out = np.full(n, -1, dtype=np.int8)
    sets = {}
    for flag, file in ((1, members_file), (0, non_members_file)):
        idx = readers.read_indices(file, f"{what} {'members' if flag else 'non-members'} file")
        if idx.size and idx.max() >= n:
            raise ValueError(f"{what}: {file} names record {int(idx.max())} but the data has {n} records (0..{n - 1})")
        sets[flag] = idx
        out[idx] = flag
    both = np.intersect1d(sets[1], sets[0])
    if both.size:
        raise ValueError(f"{what}: {both.size} record(s) are both members and non-members (first: {int(both[0])}): "
                         f"{members_file} and {non_members_file} must be disjoint")
    return out

