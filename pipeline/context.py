"""What every stage needs from the config: the data and its splits, models, the cache, specs.

Specs are the declared config fields that enter a stage's cache key. They hold
no paths, devices or thread counts (those live in `paths`, `runtime`,
`tracking`), so moving the cache or changing threads never invalidates it.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.cache import Cache, cache_key, canonical_json
from pipeline.config import DATASETS, AttackConfig, TrainConfig, to_schema
from pipeline.data import Dataset, Splits, make_splits, plant_canaries
from pipeline.models import MODELS
from pipeline.seeds import derive_seed

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


@dataclass(frozen=True)
class DataBundle:
    dataset: Dataset
    splits: Splits
    key: str

    def part(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(getattr(self.splits, name))
        return self.dataset.x[idx], self.dataset.y[idx]


# dataset keys that locate files rather than define the data: never part of a cache key
PATH_KEYS = ("data_dir",)


def data_spec(cfg: DictConfig) -> dict[str, Any]:
    attack = to_schema(AttackConfig, cfg.attack)
    dataset = {k: v for k, v in plain(cfg.dataset).items() if k not in PATH_KEYS}
    return {"dataset": dataset, "seed": int(cfg.seed), "n_audit": attack.n_audit}


DATA_VERSION = 1


def data_key(cfg: DictConfig) -> str:
    """The data's cache key from the config alone (nothing is loaded); equals `load_data(cfg).key`."""
    return cache_key("data", DATA_VERSION, data_spec(cfg))


def load_data(cfg: DictConfig) -> DataBundle:
    name = str(cfg.dataset.name)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {list(DATASETS)}")
    paths = {k: str(cfg.dataset[k]) for k in PATH_KEYS if k in cfg.dataset}
    return _load_data(canonical_json(data_spec(cfg)), canonical_json(paths))


@functools.lru_cache(maxsize=8)
def _load_data(spec_json: str, paths_json: str) -> DataBundle:
    spec = json.loads(spec_json)
    ds_cfg = {**spec["dataset"], **json.loads(paths_json)}
    split = ds_cfg.pop("split")
    n_canaries = int(ds_cfg.pop("canaries", 0) or 0)
    target = ds_cfg.pop("_target_")
    dataset = _call(target, ds_cfg)
    splits = make_splits(len(dataset), split, spec["seed"], n_audit=spec["n_audit"])
    dataset, splits = plant_canaries(dataset, splits, n_canaries, spec["seed"])
    key = cache_key("data", DATA_VERSION, spec)
    return DataBundle(dataset, splits, key)


def _call(target: str, kwargs: dict[str, Any]) -> Dataset:
    return instantiate({"_target_": target, **kwargs})


def model_spec(cfg: DictConfig) -> dict[str, Any]:
    return plain(cfg.model)


def device(cfg: DictConfig) -> torch.device:
    """`runtime.device` (checked by `pipeline.config.validate`): where models live and compute.

    Data stays on the CPU and batches move to the model; initial weights are drawn on the
    CPU, so a seed gives the same starting model on every device.
    """
    return torch.device(str(cfg.runtime.get("device", "cpu")))


def build_model(cfg: DictConfig, data: DataBundle, *seed_path: object, seed: int | None = None) -> nn.Module:
    """Instantiate `cfg.model` for the data's shape, initialised from `derive_seed(seed, *seed_path)`
    (`seed`: the root `cfg.seed` unless given), on `runtime.device`."""
    target = str(cfg.model.get("_target_", ""))
    if target not in MODELS:
        raise ValueError(f"unknown model {target!r}; valid: {list(MODELS)} (conf/model/ has a config for each)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(int(cfg.seed) if seed is None else seed, "init", *seed_path))
        model = instantiate(
            cfg.model, input_shape=list(data.dataset.input_shape), n_classes=data.dataset.n_classes
        )
    return model.to(device(cfg))


def train_recipe(cfg: DictConfig) -> TrainConfig:
    return to_schema(TrainConfig, cfg.train)


def get_cache(cfg: DictConfig) -> Cache:
    return Cache(Path(str(cfg.paths.cache_dir)))


def save_model(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def load_model(cfg: DictConfig, data: DataBundle, path: Path) -> nn.Module:
    model = build_model(cfg, data, "load")
    try:
        state = torch.load(path, map_location=device(cfg), weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError) as err:
        raise RuntimeError(f"cannot load model weights from {path}: {err}") from err
    model.eval()
    return model
