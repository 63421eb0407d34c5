"""Real data sets read from files the user puts under `paths.data_dir` (default `./data`).

This tool never downloads: each loader looks for the file(s) the data set is
usually distributed as and, when they are missing, raises a `FileNotFoundError`
that names the expected paths, the format and where to get them. Every loader
returns one labelled pool (`pipeline.data.Dataset`); the data protocol
(`pipeline.data.make_splits`) re-splits it, so published train/test splits are
pooled.

Expected files (relative to `data_dir`):

- CIFAR-10  (Krizhevsky 2009): `cifar-10-python.tar.gz` (the "python version"
  archive, MD5 c58f30108f718f92721af3b95e74349a) or the extracted folder
  `cifar-10-batches-py/` with `data_batch_1` .. `data_batch_5` and `test_batch`.
- CIFAR-100: `cifar-100-python.tar.gz` (MD5 eb9058c3a382ffc7106e4002c42a8d85) or
  the extracted folder `cifar-100-python/` with `train` and `test` (fine labels).
- Purchase100 (Shokri et al. S&P'17): `dataset_purchase` (or
  `purchase100/dataset_purchase`, or the archive `dataset_purchase.tgz`): CSV
  lines `label,f1,...,f600`, label in 1..100, features 0/1.
- Texas100 (Shokri et al.): `texas/100/feats` and `texas/100/labels` (or under
  `texas100/`, or the archive `dataset_texas.tgz`): `feats` has 6169
  comma-separated 0/1 features per line, `labels` one label 1..100 per line.
- AG News (Zhang et al. 2015, the CSV release): `ag_news_csv/train.csv` and
  `ag_news_csv/test.csv` (or under `ag_news/`): rows `class,title,description`,
  class in 1..4, no header (a `Class Index,Title,Description` header, as in the
  Kaggle copy, is skipped).

Every file a loader reads is reported to `recording_reads()`; `pipeline.context` hashes
those files into the data's cache key, so a replaced file retrains what was built on it.

Checksums: the CIFAR archives are checked against their published MD5 by
default; every loader takes `expected_md5` to check the file it reads (for the
tabular and text sets no checksum is published, so the default is no check and
the MD5 is logged so that runs can be compared). Extracted folders cannot be
checked against the archive's MD5; the loader logs that it skipped the check.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import pickle
import re
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pipeline.data import Dataset

log = logging.getLogger(__name__)

CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
SHOKRI_SOURCE = "https://www.comp.nus.edu.sg/~reza/files/"
AG_NEWS_SOURCE = (
    "the AG News CSV release of Zhang, Zhao & LeCun 2015 (ag_news_csv.tar.gz, linked from "
    "https://github.com/zhangxiangxiao/Crepe; a copy with a header row is on Kaggle as "
    "'AG News Classification Dataset')"
)

# name -> archive, extracted folder, files in the folder, label key, n_classes, MD5, mean, std
_CIFAR = {
    "cifar10": {
        "archive": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "files": [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"],
        "label_key": b"labels",
        "n_classes": 10,
        "md5": "c58f30108f718f92721af3b95e74349a",
        # per-channel mean/std of the 50k training images, the values commonly used
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
    },
    "cifar100": {
        "archive": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
        "files": ["train", "test"],
        "label_key": b"fine_labels",
        "n_classes": 100,
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}

PURCHASE_FEATURES = 600
TEXAS_FEATURES = 6169
AG_NEWS_CLASSES = 4


# --------------------------------------------------------------------------- helpers

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


def _check_md5(path: Path, expected: Optional[str], verify: bool) -> None:
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


def _first_existing(candidates: Sequence[Path]) -> Optional[Path]:
    for path in candidates:
        if path.exists():
            return path
    return None


def _subsample(ds_name: str, x: np.ndarray, y: np.ndarray, n_samples: Optional[int], seed: int):
    """A fixed random subset of the pool (same subset for every root seed), for CPU-sized runs."""
    if n_samples is None or int(n_samples) >= len(y):
        return x, y
    if int(n_samples) < 1:
        raise ValueError(f"{ds_name}: n_samples must be >= 1 or null, got {n_samples}")
    idx = np.sort(np.random.default_rng(seed).permutation(len(y))[: int(n_samples)])
    return x[idx], y[idx]


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file must not run code."""

    _ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer", "frombuffer"}

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "numpy" and name in self._ALLOWED:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):  # how Python 3 protocol-2 pickles store bytes
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # any failure here means an unreadable file
        raise ValueError(f"cannot read the pickled CIFAR batch {where}: {err}") from err
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict, got {type(obj).__name__}")
    return obj


def _read_tar_members(path: Path, names: Sequence[str]) -> dict[str, bytes]:
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


# --------------------------------------------------------------------------- CIFAR


def augment_cifar(
    x: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    pad: int = 4,
    flip_prob: float = 0.5,
) -> torch.Tensor:
    """Random crop after zero padding by `pad`, then random horizontal flip, per image.

    x: (B, C, H, W) normalised images, so the zero padding is the per-channel mean.
    The random draws come from `generator` (CPU), so a seeded generator gives the
    same batch on every run and device.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_cifar expects (B, C, H, W) images, got shape {tuple(x.shape)}")
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = (torch.rand(b, generator=generator) < flip_prob).to(x.device)
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = dx[:, None] + torch.arange(w, device=x.device)  # (B, W)
    # a flipped image reads its crop's columns right to left
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def load_cifar(
    name: str = "cifar10",
    data_dir: str = "./data",
    verify_checksum: bool = True,
    expected_md5: Optional[str] = None,
    augment: bool = True,
    n_samples: Optional[int] = None,
    subsample_seed: int = 0,
) -> Dataset:
    """CIFAR-10 or CIFAR-100 (`name`), train and test pooled: x (60000, 3, 32, 32) float32.

    Reads `<data_dir>/cifar-10-python.tar.gz` (resp. `cifar-100-python.tar.gz`) if
    present, checked against the published MD5 (or `expected_md5`), else the
    extracted folder `cifar-10-batches-py/` (resp. `cifar-100-python/`).
    Pixels are scaled to [0, 1] and normalised with the per-channel mean/std.
    `augment=True` attaches `augment_cifar` (random crop + flip) for training.
    `n_samples` keeps a fixed random subset of the pool (seeded by `subsample_seed`).
    """
    if name not in _CIFAR:
        raise ValueError(f"load_cifar: unknown name {name!r}; valid: {sorted(_CIFAR)}")
    spec = _CIFAR[name]
    root = Path(data_dir)
    archive = root / spec["archive"]
    folder = root / spec["folder"]
    files: list[str] = spec["files"]
    if archive.is_file():
        record_read(archive)
        _check_md5(archive, expected_md5 or spec["md5"], verify_checksum)
        members = _read_tar_members(archive, [f"{spec['folder']}/{f}" for f in files])
        blobs = [(f"{archive}:{k}", v) for k, v in members.items()]
    elif folder.is_dir():
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{name}: folder {folder} lacks {missing}; it should hold {files} "
                f"(extract {spec['archive']} from {CIFAR_SOURCE} into {root})"
            )
        if verify_checksum:
            log.info(
                "%s: reading extracted folder %s; the archive MD5 cannot be checked", name, folder
            )
        for f in files:
            record_read(folder / f)
        blobs = [(str(folder / f), (folder / f).read_bytes()) for f in files]
    else:
        raise FileNotFoundError(
            f"{name} not found: expected the python-pickle archive {archive} or its extracted "
            f"folder {folder}/ with {files}. Download the 'python version' from {CIFAR_SOURCE} "
            f"and put the .tar.gz (or the extracted folder) in {root} "
            "(set paths.data_dir to use another folder; this tool does not download)"
        )
    xs, ys = [], []
    for where, blob in blobs:
        batch = _unpickle(blob, where)
        if b"data" not in batch or spec["label_key"] not in batch:
            raise ValueError(
                f"{where}: expected keys b'data' and {spec['label_key']!r}, got {sorted(batch)[:6]}"
            )
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[spec["label_key"]], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{where}: expected data (n, 3072) uint8 and n labels, got data {data.shape} "
                f"and {labels.shape[0]} labels"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= spec["n_classes"]):
            raise ValueError(f"{where}: labels outside 0..{spec['n_classes'] - 1}")
        xs.append(data)
        ys.append(labels)
    x_u8, y = _subsample(name, np.concatenate(xs), np.concatenate(ys), n_samples, subsample_seed)
    x = torch.from_numpy(x_u8).reshape(-1, 3, 32, 32).float().div_(255.0)  # (n, 3, 32, 32)
    mean = torch.tensor(spec["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(spec["std"]).view(1, 3, 1, 1)
    x = (x - mean) / std
    return Dataset(
        name,
        x.contiguous(),
        torch.from_numpy(y),
        spec["n_classes"],
        augment=augment_cifar if augment else None,
    )


# --------------------------------------------------------------------------- tabular (Shokri)


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
                _check_md5(paths[0], expected_md5, verify=True)
            elif expected_md5 is not None:
                log.info(
                    "%s: expected_md5 applies to %s; extracted files not checked", ds, archive_name
                )
            return {r: (str(p), p.read_bytes()) for r, p in zip(relative, paths, strict=True)}
    archive = _first_existing([root / archive_name, *(root / s / archive_name for s in subfolders)])
    if archive is not None:
        record_read(archive)
        _check_md5(archive, expected_md5, verify=True)
        members = _read_tar_members(archive, list(relative))
        return {r: (f"{archive}:{r}", members[r]) for r in relative}
    expected = [str(root / r) for r in relative]
    alt = [str(root / s / r) for s in subfolders for r in relative]
    raise FileNotFoundError(
        f"{ds} not found: expected {expected} (or {alt}, or the archive {root / archive_name}). "
        f"Format: {fmt}. Get {archive_name} from {source}{archive_name} (Shokri et al. S&P'17 "
        f"release) and put it, or its extracted contents, in {root} "
        "(set paths.data_dir to use another folder; this tool does not download)"
    )


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
    x, y = _subsample(name, rows[:, 1:], y, n_samples, subsample_seed)
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), 100)


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
    x, y = _subsample(name, x, y, n_samples, subsample_seed)
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), 100)


# --------------------------------------------------------------------------- AG News

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
# HTML entities as they appear in the AG News CSV (" #39;s", "&amp;", " quot;")
_ENTITY = re.compile(r"&?#\d+;|&?\b(?:quot|amp|lt|gt|nbsp);")
PAD_ID = 0
UNK_ID = 1


def tokenize(text: str) -> list[str]:
    """Lowercase words and numbers; HTML entities and the CSV's backslashes are separators."""
    return _TOKEN.findall(_ENTITY.sub(" ", text.lower()).replace("\\", " "))


def build_vocab(docs: Sequence[Sequence[str]], vocab_size: int) -> dict[str, int]:
    """The `vocab_size - 2` most frequent tokens, ties broken alphabetically: token -> id.

    Id 0 is padding and id 1 unknown, so ids are in [0, vocab_size).
    """
    if vocab_size < 3:
        raise ValueError(f"vocab_size must be >= 3 (padding, unknown, one token), got {vocab_size}")
    counts = Counter(tok for doc in docs for tok in doc)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - 2]
    return {tok: i + 2 for i, (tok, _) in enumerate(ranked)}


def _read_ag_news_csv(path: Path) -> tuple[list[int], list[list[str]]]:
    labels: list[int] = []
    docs: list[list[str]] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for number, row in enumerate(csv.reader(f), start=1):
                if not row:
                    continue
                if number == 1 and row[0].strip().lower() in {"class index", "class", "label"}:
                    continue  # header of the Kaggle copy
                if len(row) < 3:
                    raise ValueError(
                        f"{path}, line {number}: expected 3 columns (class index 1..4, title, "
                        f"description), got {len(row)}"
                    )
                try:
                    label = int(row[0])
                except ValueError:
                    raise ValueError(
                        f"{path}, line {number}: class index {row[0]!r} is not an integer 1..4"
                    ) from None
                if not 1 <= label <= AG_NEWS_CLASSES:
                    raise ValueError(f"{path}, line {number}: class index {label} outside 1..4")
                labels.append(label - 1)
                docs.append(tokenize(" ".join(row[1:])))
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"cannot parse {path} as CSV: {err}") from err
    return labels, docs


def load_ag_news(
    name: str = "ag_news",
    data_dir: str = "./data",
    vocab_size: int = 20000,
    max_len: int = 64,
    expected_md5: Optional[str] = None,
    n_samples: Optional[int] = None,
    subsample_seed: int = 0,
) -> Dataset:
    """AG News (4 topics, 120,000 + 7,600 articles) as int64 token ids: x (n, max_len).

    Reads `<data_dir>/ag_news_csv/{train,test}.csv` (or `ag_news/`). Title and
    description are tokenised by `tokenize`; the vocabulary (`build_vocab`) is the
    most frequent tokens of the whole pool, so it is the same for every split of
    it (it sees the text of non-members, never their labels). Documents are
    truncated or padded with id 0 to `max_len`; unknown tokens get id 1.
    `expected_md5`, if given, is checked on `train.csv`.
    """
    if max_len < 1:
        raise ValueError(f"ag_news: max_len must be >= 1, got {max_len}")
    root = Path(data_dir)
    folders = [root / "ag_news_csv", root / "ag_news"]
    folder = next(
        (d for d in folders if (d / "train.csv").is_file() and (d / "test.csv").is_file()), None
    )
    if folder is None:
        raise FileNotFoundError(
            f"AG News not found: expected {folders[0] / 'train.csv'} and {folders[0] / 'test.csv'} "
            f"(or the same under {folders[1]}). Format: CSV rows 'class index (1..4),title,description', "
            f"no header. Get {AG_NEWS_SOURCE}, extract it into {root} "
            "(set paths.data_dir to use another folder; this tool does not download)"
        )
    record_read(folder / "train.csv")
    record_read(folder / "test.csv")
    _check_md5(folder / "train.csv", expected_md5, verify=True)
    labels: list[int] = []
    docs: list[list[str]] = []
    for part in ("train.csv", "test.csv"):
        part_labels, part_docs = _read_ag_news_csv(folder / part)
        labels += part_labels
        docs += part_docs
    if not labels:
        raise ValueError(f"AG News: no rows in {folder / 'train.csv'} and {folder / 'test.csv'}")
    vocab = build_vocab(docs, vocab_size)
    x = np.full((len(docs), max_len), PAD_ID, dtype=np.int64)  # (n, L)
    for i, doc in enumerate(docs):
        ids = [vocab.get(tok, UNK_ID) for tok in doc[:max_len]]
        x[i, : len(ids)] = ids
    x, y = _subsample(name, x, np.asarray(labels, dtype=np.int64), n_samples, subsample_seed)
    return Dataset(name, torch.from_numpy(x), torch.from_numpy(y), AG_NEWS_CLASSES)
