"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009), read from the python-pickle release, and their
training augmentation (random crop + flip).

Expected files (relative to `data_dir`): `cifar-10-python.tar.gz` (the "python version"
archive, MD5 c58f30108f718f92721af3b95e74349a) or the extracted folder `cifar-10-batches-py/`
with `data_batch_1` .. `data_batch_5` and `test_batch`; `cifar-100-python.tar.gz` (MD5
eb9058c3a382ffc7106e4002c42a8d85) or the extracted folder `cifar-100-python/` with `train` and
`test` (fine labels). Train and test are pooled; the data protocol re-splits the pool.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path
from typing import Any, Optional, TypedDict

import numpy as np
import torch

from pipeline.datasets.files import check_md5, read_tar_members, record_read, subsample
from pipeline.datasets.registry import register
from training.data import Dataset

log = logging.getLogger(__name__)

CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"


class _CifarSpec(TypedDict):
    archive: str
    folder: str
    files: list[str]
    label_key: bytes  # the labels' key in each pickled batch
    n_classes: int
    md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# name -> archive, extracted folder, files in the folder, label key, n_classes, MD5, mean, std
_CIFAR: dict[str, _CifarSpec] = {
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


@register("cifar100", "CIFAR-100: 60000 images 3x32x32, 100 classes", reads_files=True)
@register("cifar10", "CIFAR-10: 60000 images 3x32x32, 10 classes", reads_files=True)
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
    files = spec["files"]
    if archive.is_file():
        record_read(archive)
        check_md5(archive, expected_md5 or spec["md5"], verify_checksum)
        members = read_tar_members(archive, [f"{spec['folder']}/{f}" for f in files])
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
    x_u8, y = subsample(name, np.concatenate(xs), np.concatenate(ys), n_samples, subsample_seed)
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

