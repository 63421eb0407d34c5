"""The data set registry: the only list of data set names (`dataset=NAME`), each tied to the
loader that builds it.

A loader registers the names it loads (`@register`); config validation, `load_data`'s error
messages and `--help`'s data set list are built from `DATASETS`. A config's `dataset.name`
must be registered and its `_target_` must be that name's loader, so a name never reaches
the cache keys with another loader's data behind it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.data import Dataset

Loader = Callable[..., Dataset]


@dataclass(frozen=True)
class DatasetInfo:
    """One registered data set: its loader and a one-line description for `--help`."""

    name: str
    loader: Loader
    description: str
    reads_files: bool  # reads files under `paths.data_dir` (never downloads); else generated in memory

    @property
    def target(self) -> str:
        """The loader's `_target_` as conf/dataset/<name>.yaml writes it (the package's name)."""
        module = self.loader.__module__
        public = "pipeline.datasets" if module.startswith("pipeline.datasets.") else module
        return f"{public}.{self.loader.__name__}"


DATASETS: dict[str, DatasetInfo] = {}


def register(name: str, description: str, reads_files: bool = False) -> Callable[[Loader], Loader]:
    """Register `name` as loaded by the decorated loader (one loader may load several names)."""

    def add(loader: Loader) -> Loader:
        if name in DATASETS:
            raise ValueError(f"data set {name!r} is registered twice ({DATASETS[name].target} and {loader.__name__})")
        DATASETS[name] = DatasetInfo(name, loader, description, reads_files)
        return loader

    return add


def dataset_info(name: str) -> DatasetInfo:
    """The registered data set `name`; an unknown name raises naming the registered ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {list(DATASETS)} (conf/dataset/ has a config for each)")
    return DATASETS[name]


def check_target(name: str, target: Any) -> None:
    """`dataset._target_` must be the registered loader of `dataset.name`."""
    from hydra.utils import get_method

    info = dataset_info(name)
    try:
        loader = get_method(str(target))
    except Exception as err:  # noqa: BLE001 - hydra raises ImportError or ValueError here
        raise ValueError(f"dataset._target_={target!r} cannot be imported ({err}); dataset {name!r} is "
                         f"loaded by {info.target}") from err
    if loader is not info.loader:
        raise ValueError(f"dataset {name!r} is loaded by {info.target}, but dataset._target_ is {target!r}; "
                         f"a new data set registers its own name (pipeline.datasets.register)")


def datasets_help() -> str:
    """--help's data set list, one line per registered set."""
    import inspect

    def where(info: DatasetInfo) -> str:
        if not info.reads_files:
            return ""
        takes_dir = "data_dir" in inspect.signature(info.loader).parameters
        return " (files in paths.data_dir)" if takes_dir else " (the files dataset.path names)"

    return "\n".join(f"{name:<15} {info.description}{where(info)}" for name, info in DATASETS.items())
