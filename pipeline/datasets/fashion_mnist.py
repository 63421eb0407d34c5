"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 grey 28x28 images of clothing, 10 classes.

Read from the IDX files as distributed (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`; gzipped or not), train and test pooled
(the data protocol re-splits them). Looked up in `dataset.folder` when set, else in Debian's
package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`), else in `paths.data_dir`
and `paths.data_dir/fashion-mnist`. Pixels are scaled to [0, 1]; shape (1, 28, 28).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.datasets.files import subsample
from pipeline.datasets.images import augment_cifar
from pipeline.datasets.readers import read_idx
from pipeline.datasets.registry import register
from training.data import Dataset

DEBIAN_FOLDER = "/usr/share/datasets/fashion-mnist"
PARTS = ("train", "t10k")


def _find(stem: str, folders: list[Path]) -> Optional[Path]:
    for folder in folders:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


@register("fashion_mnist", "Fashion-MNIST: 70,000 grey 28x28 images, 10 classes; /usr/share/datasets/fashion-mnist "
          "(apt-get install dataset-fashion-mnist) or",
          reads_files=True)
def load_fashion_mnist(
    name: str = "fashion_mnist",
    folder: Optional[str] = None,
    data_dir: str = "./data",
    n_samples: Optional[int] = None,
    subsample_seed: int = 0,
    augment: bool = False,
) -> Dataset:
    """The pooled 70,000 images (or a fixed random subset of `n_samples`). `augment=True` trains
    with a random crop after padding by 4 and a horizontal flip (`augment_cifar`; the padding is
    black, the images' background), and the audit's LiRA then queries augmented views too."""
    folders = [Path(folder)] if folder else [Path(DEBIAN_FOLDER), Path(data_dir), Path(data_dir) / "fashion-mnist"]
    xs, ys = [], []
    for part in PARTS:
        stems = {kind: f"{part}-{kind}-idx{dim}-ubyte" for kind, dim in (("images", 3), ("labels", 1))}
        found = {kind: path for kind, stem in stems.items() if (path := _find(stem, folders)) is not None}
        if len(found) < len(stems):
            missing = [f"{stem}.gz" for kind, stem in stems.items() if kind not in found]
            raise FileNotFoundError(
                f"Fashion-MNIST not found: no {missing} in {[str(f) for f in folders]}. Install Debian's package "
                "(`apt-get install dataset-fashion-mnist`, which puts the IDX files in "
                f"{DEBIAN_FOLDER}), or put the four IDX files (train-images-idx3-ubyte.gz, "
                "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz, from "
                "https://github.com/zalandoresearch/fashion-mnist) in paths.data_dir or set dataset.folder"
            )
        x = read_idx(found["images"], f"Fashion-MNIST {part} images")
        y = read_idx(found["labels"], f"Fashion-MNIST {part} labels")
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (len(x),):
            raise ValueError(f"Fashion-MNIST {part}: images {x.shape} and labels {y.shape}; expected (n, 28, 28) "
                             f"and (n,): {found['images']} or {found['labels']} is not Fashion-MNIST")
        xs.append(x)
        ys.append(y)
    x = (np.concatenate(xs).astype(np.float32) / 255.0)[:, None]  # (n, 1, 28, 28)
    y = np.concatenate(ys).astype(np.int64)
    if y.min() < 0 or y.max() > 9:
        raise ValueError(f"Fashion-MNIST labels must be 0..9, found {int(y.min())}..{int(y.max())}")
    x, y = subsample(name, x, y, n_samples, subsample_seed)
    return Dataset(name, torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), 10,
                   augment=augment_cifar if augment else None)
