"""The data sets: a registry of names tied to their loaders, and the loaders of the real sets,
read from files the user puts under `paths.data_dir` (default `./data`).

Every loader returns one labelled pool (`training.data.Dataset`); the data protocol
(`training.data.make_splits`) re-splits it, so published train/test splits are pooled.
`registry` holds the names (`DATASETS`); `embedded` registers the file-free sets of
`training.data`; `images` (CIFAR-10/100), `tabular` (Purchase100, Texas100) and `text`
(AG News) and `fashion_mnist` read files, with what they share (file lookup, checksums, the
reads they report for the cache keys) in `files`; `user_files` (`dataset=files`) reads the
user's own files (NumPy, CSV, Parquet, image folders, IDX: `readers`). Each loader module's docstring lists the files it expects.
Importing this package registers every set, in the order `--help` lists them.
"""

from pipeline.datasets import embedded  # noqa: F401 - registers digits, synthetic, purchase_synth
from pipeline.datasets.fashion_mnist import load_fashion_mnist
from pipeline.datasets.files import file_md5, record_read, recording_reads
from pipeline.datasets.images import augment_cifar, load_cifar
from pipeline.datasets.registry import (
    DATASETS,
    DatasetInfo,
    check_target,
    dataset_info,
    datasets_help,
    register,
)
from pipeline.datasets.tabular import load_purchase100, load_texas100
from pipeline.datasets.text import build_vocab, load_ag_news, tokenize
from pipeline.datasets.user_files import load_files

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "augment_cifar",
    "build_vocab",
    "check_target",
    "dataset_info",
    "datasets_help",
    "file_md5",
    "load_ag_news",
    "load_cifar",
    "load_fashion_mnist",
    "load_files",
    "load_purchase100",
    "load_texas100",
    "record_read",
    "recording_reads",
    "register",
    "tokenize",
]
