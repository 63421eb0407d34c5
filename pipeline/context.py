"""What every stage needs from the config: the run context (seed, device, runtime switches, cache,
tracking settings, data), the data and its splits, models, specs.

Specs are the declared config fields that enter a stage's cache key. They hold
no paths, devices or thread counts (those live in `paths`, `runtime`,
`tracking`), so moving the cache or changing threads never invalidates it.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.cache import (
    DATA_INDEX_FILE,
    Cache,
    cache_key,
    canonical_json,
    check_entry_file,
    data_file_hashes,
)
from pipeline.config import (
    AttackConfig,
    PathsConfig,
    RuntimeConfig,
    TrackingConfig,
    TrainConfig,
    to_schema,
)
from pipeline.datasets import dataset_info, recording_reads
from pipeline.membership import member_splits
from training import model_adapter
from training.data import DataBundle, Dataset, make_splits, plant_canaries, standardise_on
from training.models import MODELS
from training.seeds import derive_seed

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """A resolved plain-Python copy of a config node."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


# dataset keys that locate files rather than define the data: never part of a cache key (the
# content of every file read is: `LoadedData.load`)
PATH_KEYS = ("data_dir", "path", "labels_path", "members_file", "non_members_file", "folder")


def data_spec(cfg: DictConfig) -> dict[str, Any]:
    attack = to_schema(AttackConfig, cfg.attack)
    # no reference split (`reference_size` 0 or absent) is one data set, one key
    dataset = {k: v for k, v in plain(cfg.dataset).items() if k not in PATH_KEYS and not (k == "reference_size" and not v)}
    return {"dataset": dataset, "seed": int(cfg.seed), "n_audit": attack.n_audit}


# 2: search members carved from train (issue 18); standardisation fitted on train
DATA_VERSION = 2


def data_key(cfg: DictConfig) -> str:
    """The data's cache key, equal to `load_data(cfg).key`: from the config alone for embedded
    sets (nothing is loaded); a set read from files keys on their content, so it is loaded
    (once per process) to learn which files it reads."""
    if any(k in cfg.dataset for k in PATH_KEYS):
        return load_data(cfg).key
    return cache_key("data", DATA_VERSION, data_spec(cfg))


def load_data(cfg: DictConfig, loaded: LoadedData | None = None) -> DataBundle:
    """The data set and its splits; `key` hashes the data spec and the content of every file
    the loader read (embedded sets: their generator parameters only). Served by `loaded` (the
    process's `LOADED` unless given) while the files are unchanged."""
    dataset_info(str(cfg.dataset.name))  # an unknown name raises, naming the registered ones
    paths = {k: None if cfg.dataset[k] is None else str(cfg.dataset[k]) for k in PATH_KEYS if k in cfg.dataset}
    index = Path(str(cfg.paths.cache_dir)) / DATA_INDEX_FILE
    return (LOADED if loaded is None else loaded).load(canonical_json(data_spec(cfg)), canonical_json(paths), index)


def _stat_sig(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class LoadedData:
    """The data sets one process has loaded, by (data spec, file paths), each with the stat of every
    file its loader read: a set is loaded once while its files are unchanged (a search's trials
    and a flow's stages share one load; a file changed since is read again, and its key follows
    the new content). The process has one, `LOADED`, that every `RunContext` carries unless
    built with its own (`RunContext.build(cfg, loaded=LoadedData())`)."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], tuple[DataBundle, dict[str, tuple[int, int, int]]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def load(self, spec_json: str, paths_json: str, index: Path | None = None) -> DataBundle:
        memo = self._entries.get((spec_json, paths_json))
        if memo is not None and all(_stat_sig(p) == sig for p, sig in memo[1].items()):
            return memo[0]
        spec = json.loads(spec_json)
        ds_cfg = {**spec["dataset"], **json.loads(paths_json)}
        split = ds_cfg.pop("split")
        n_canaries = int(ds_cfg.pop("canaries", 0) or 0)
        target = ds_cfg.pop("_target_")
        # the defender's reference split (`training.data`): a loader that generates its records takes
        # `reference_size`; the others' come from pool records the split fractions leave unused
        n_reference = int(ds_cfg.get("reference_size", 0) or 0)
        if not _takes(target, "reference_size"):
            ds_cfg.pop("reference_size", None)
        with recording_reads() as files:
            dataset = _call(target, ds_cfg)
        sigs = {os.path.abspath(f): _stat_sig(str(f)) for f in files}
        if dataset.membership is not None:  # the user said who their model's members are
            splits = member_splits(dataset.membership, split, spec["seed"], n_audit=spec["n_audit"],
                                   n_reference=n_reference, name=dataset.name)
        else:
            splits = make_splits(
                len(dataset), split, spec["seed"], n_audit=spec["n_audit"], n_reference=n_reference,
                reserved=dataset.reference_rows,
            )
        dataset = standardise_on(dataset, splits.train)  # the members' statistics only
        dataset, splits = plant_canaries(dataset, splits, n_canaries, spec["seed"])
        hashes = data_file_hashes(files, index)
        data_dir = ds_cfg.get("data_dir")
        key_spec = dict(spec)
        if hashes:  # by path relative to data_dir (else the files' common folder): moving it keeps the key
            base = data_dir or _common_folder(list(hashes))
            key_spec["files"] = {_relative(p, base): h for p, h in sorted(hashes.items())}
        key = cache_key("data", DATA_VERSION, key_spec)
        bundle = DataBundle(dataset, splits, key)
        if memo is not None and memo[0].key != key:
            log.info("data set %s: files changed since loaded in this process; data key %s -> %s",
                     spec["dataset"].get("name"), memo[0].key, key)
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[(spec_json, paths_json)] = (bundle, {p: s for p, s in sigs.items() if s is not None})
        return bundle


LOADED = LoadedData()


def _relative(path: str, data_dir: str | None) -> str:
    if data_dir:
        try:
            return Path(path).relative_to(Path(data_dir).resolve()).as_posix()
        except ValueError:
            try:
                return Path(path).relative_to(Path(os.path.abspath(data_dir))).as_posix()
            except ValueError:
                pass
    return Path(path).name


def _common_folder(paths: list[str]) -> str | None:
    """The deepest folder holding every file (an image folder's root: its class folders, which
    are the labels, stay in the names); None for a single file (keyed by its name)."""
    if len(paths) < 2:
        return None
    return os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])


def _call(target: str, kwargs: dict[str, Any]) -> Dataset:
    from hydra.errors import InstantiationException

    try:
        return instantiate({"_target_": target, **kwargs})
    except InstantiationException as err:  # the loader's own error says what is wrong: raise it as it is
        if isinstance(err.__cause__, (ValueError, OSError)):
            raise err.__cause__ from None
        raise


def _takes(target: str, parameter: str) -> bool:
    """Whether the loader `target` declares `parameter` (not merely swallows it in **kwargs)."""
    return parameter in inspect.signature(get_method(target)).parameters


def checkpoint_path(cfg: DictConfig) -> Path | None:
    """`teacher.checkpoint` (the user's own trained weights, `training.checkpoints`), or None."""
    value = OmegaConf.select(cfg, "teacher.checkpoint", default=None)
    return Path(str(value)).expanduser() if value else None


def check_user_inputs(cfg: DictConfig, bundle: DataBundle) -> None:
    """The user's model class and checkpoint, checked on the loaded data before any training."""
    from pipeline import user_checks

    user_checks.check_user_inputs(
        plain(cfg.model), str(cfg.compress.method), checkpoint_path(cfg), int(cfg.dataset.get("canaries", 0) or 0),
        bundle, lambda: build_model(RunContext.build(cfg), bundle, "check"),
    )


def model_spec(cfg: DictConfig) -> dict[str, Any]:
    """The model group; a user's class adds the SHA-256 of its source file (an edited class retrains)."""
    spec = plain(cfg.model)
    digest = model_adapter.source_hash(str(spec.get("_target_", "")))
    return spec if digest is None else {**spec, "source_sha256": digest}


@dataclass(frozen=True)
class RunContext:
    """One command's run settings, built once at the entry point (`RunContext.build`) and handed
    to every stage: the root seed, the device, the runtime switches (threads, progress bars,
    batching), the cache, the tracking settings, the model group and the data.

    A stage's entry function reads its own config group from `cfg` (its schema, and the
    declared fields of its cache key); code below it takes what it needs from here, typed.
    Nothing here enters a cache key except through `seed`, `model` and `data`'s own key.
    """

    cfg: DictConfig
    seed: int
    # `runtime.device` (checked by `pipeline.validation.validate`): where models live and compute.
    # Data stays on the CPU and batches move to the model; initial weights are drawn on the
    # CPU, so a seed gives the same starting model on every device.
    device: torch.device
    runtime: RuntimeConfig
    paths: PathsConfig
    tracking: TrackingConfig
    cache: Cache
    model: dict[str, Any]  # the model group: `_target_` and the constructor's arguments
    loaded: LoadedData = LOADED  # the data sets this process loaded (`data` reads through it)

    @classmethod
    def build(cls, cfg: DictConfig, loaded: LoadedData | None = None) -> RunContext:
        runtime = to_schema(RuntimeConfig, cfg.runtime)
        paths = to_schema(PathsConfig, cfg.paths)
        return cls(
            cfg=cfg,
            seed=int(cfg.seed),
            device=torch.device(runtime.device),
            runtime=runtime,
            paths=paths,
            tracking=to_schema(TrackingConfig, cfg.tracking),
            cache=Cache(Path(paths.cache_dir)),
            model=plain(cfg.model),
            loaded=LOADED if loaded is None else loaded,
        )

    @property
    def data(self) -> DataBundle:
        """The data set and its splits (loaded on first use, then the same bundle for every stage
        of this process while its files are unchanged: `loaded`)."""
        return load_data(self.cfg, self.loaded)

    @property
    def progress(self) -> bool:
        return self.runtime.progress


def build_model(ctx: RunContext, data: DataBundle, *seed_path: object, seed: int | None = None) -> nn.Module:
    """Instantiate the model group for the data's shape, initialised from `derive_seed(seed,
    *seed_path)` (`seed`: the root seed unless given), on the run's device."""
    target = str(ctx.model.get("_target_", ""))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(ctx.seed if seed is None else seed, "init", *seed_path))
        if target in MODELS:
            model = instantiate(
                ctx.model, input_shape=list(data.dataset.input_shape), n_classes=data.dataset.n_classes
            )
        else:  # a user's nn.Module class (refused naming why when it is not one), adapted
            model = model_adapter.instantiate_model(
                ctx.model, list(data.dataset.input_shape), data.dataset.n_classes
            )
    return model.to(ctx.device)


def train_recipe(cfg: DictConfig) -> TrainConfig:
    return to_schema(TrainConfig, cfg.train)


def save_model(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def load_model(ctx: RunContext, data: DataBundle, path: Path) -> nn.Module:
    model = build_model(ctx, data, "load")
    check_entry_file(path)
    try:
        state = torch.load(path, map_location=ctx.device, weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError) as err:
        raise RuntimeError(f"cannot load model weights from {path}: {err}") from err
    model.eval()
    return model
