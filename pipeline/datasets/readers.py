"""Readers for data files as they are usually distributed: NumPy arrays (`.npz`, `.npy`), tables
(CSV, Parquet), image folders (`root/<class>/*.png|jpg`, as torchvision's `ImageFolder` reads
them) and IDX files (LeCun's MNIST format, gzipped or not).

Each reader returns plain NumPy arrays and reports every file it reads (`record_read`), so its
content enters the data's cache key. Every problem raises a ValueError or FileNotFoundError
that names the file and what was expected, before any model trains.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.datasets.files import record_read

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# IDX type codes (http://yann.lecun.com/exdb/mnist/): the data type of the values
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def existing_file(path: str | Path, what: str) -> Path:
    """`path` as an existing file (reported as read), else a FileNotFoundError naming `what`."""
    p = Path(path).expanduser()
    if not p.is_file():
        where = "a folder, not a file" if p.is_dir() else "missing"
        raise FileNotFoundError(f"{what}: {p.resolve()} is {where}")
    record_read(p.resolve())
    return p


def read_arrays(path: str | Path, keys: list[str], what: str) -> dict[str, np.ndarray]:
    """The arrays `keys` of a `.npz` archive; a missing key names the archive's keys."""
    p = existing_file(path, what)
    try:
        with np.load(p, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise ValueError(
                    f"{what}: {p} has no array {missing[0]!r}; its arrays: {sorted(archive.files)} "
                    "(name them with dataset.x_key / dataset.y_key / dataset.member_column)"
                )
            return {k: archive[k] for k in keys}
    except ValueError as err:
        if "Object arrays cannot be loaded" in str(err):
            raise ValueError(f"{what}: {p} holds an object array (ragged rows?); store one numeric array of "
                             "equal-shaped records") from err
        raise
    except (OSError, EOFError) as err:
        raise ValueError(f"{what}: cannot read {p} as a .npz archive: {err}") from err


def read_npy(path: str | Path, what: str) -> np.ndarray:
    p = existing_file(path, what)
    try:
        return np.load(p, allow_pickle=False)
    except ValueError as err:
        if "Object arrays cannot be loaded" in str(err):
            raise ValueError(f"{what}: {p} holds an object array (ragged rows?); store one numeric array of "
                             "equal-shaped records") from err
        raise ValueError(f"{what}: cannot read {p} as a .npy array: {err}") from err
    except (OSError, EOFError) as err:
        raise ValueError(f"{what}: cannot read {p} as a .npy array: {err}") from err


def read_table(path: str | Path, fmt: str, what: str):
    """A CSV (header row) or Parquet file as a pandas DataFrame."""
    import pandas as pd

    p = existing_file(path, what)
    try:
        if fmt == "csv":
            return pd.read_csv(p)
        return pd.read_parquet(p)
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{what}: cannot read {p} as {fmt}: {err}") from err
    except Exception as err:  # noqa: BLE001 - pyarrow raises its own error types
        raise ValueError(f"{what}: cannot read {p} as {fmt}: {err}") from err


def read_idx(path: str | Path, what: str) -> np.ndarray:
    """An IDX file (gzipped or not, told by its first bytes): (dims...) in its stored type."""
    p = existing_file(path, what)
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{what}: {p} is a truncated or damaged gzip file: {err}") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise ValueError(f"{what}: {p} is not an IDX file (expected the magic bytes 0x00 0x00 <type> <ndim>, "
                         f"type one of {[hex(t) for t in IDX_TYPES]})")
    dtype, ndim = np.dtype(IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4"))
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{what}: {p} declares shape {dims} ({expected} bytes of data) but holds "
                         f"{len(raw) - header}: the file is truncated or damaged")
    return np.frombuffer(raw[header:], dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def read_image_folder(
    root: str | Path, size: Optional[list[int]], channels: int, what: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`root/<class>/*.png|jpg`: (n, channels, H, W) float32 in [0, 1], labels by the sorted class
    folder names, and those names. Without `size` every image must have the first one's size."""
    from PIL import Image, UnidentifiedImageError

    base = Path(root).expanduser()
    if not base.is_dir():
        raise FileNotFoundError(f"{what}: image folder {base.resolve()} is missing (expected root/<class>/*.png|jpg)")
    if channels not in (1, 3):
        raise ValueError(f"{what}: dataset.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir())
    if len(classes) < 2:
        raise ValueError(f"{what}: {base} has {len(classes)} class folder(s) {classes}; expected root/<class>/*.png|jpg "
                         "with at least 2 classes")
    images, labels = [], []
    first: Optional[tuple[Path, tuple[int, int]]] = None
    for label, name in enumerate(classes):
        files = sorted(f for f in (base / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{what}: class folder {base / name} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        for f in files:
            record_read(f.resolve())
            try:
                with Image.open(f) as src:
                    img = src.convert("L" if channels == 1 else "RGB")
                    if size is not None:
                        img = img.resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
                    elif first is None:
                        first = (f, img.size)
                    elif img.size != first[1]:
                        raise ValueError(
                            f"{what}: ragged images: {f} is {img.size[0]}x{img.size[1]} but {first[0]} is "
                            f"{first[1][0]}x{first[1][1]} (width x height); set dataset.image_size=[H, W] to resize "
                            "every image"
                        )
                    arr = np.asarray(img, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"{what}: cannot read image {f}: {err}") from err
            images.append(arr[None] if channels == 1 else arr.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


def read_indices(path: str | Path, what: str) -> np.ndarray:
    """Record indices from a `.npy` file or a text file (one integer per line, or comma/space separated)."""
    p = existing_file(path, what)
    if p.suffix == ".npy":
        values = read_npy(p, what).ravel()
    else:
        text = p.read_text().replace(",", " ").split()
        try:
            values = np.asarray([float(t) for t in text])
        except ValueError as err:
            raise ValueError(f"{what}: {p} must hold integer record indices: {err}") from err
    if values.size and (not np.all(values == np.round(values)) or values.min() < 0):
        raise ValueError(f"{what}: {p} must hold integer record indices >= 0")
    return values.astype(np.int64)
