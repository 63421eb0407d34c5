"""The data set registry is the only list of data set names: every conf/dataset/ option is a
registered name loaded by its registered loader, and bad names and loaders fail up front."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.datasets import DATASETS, check_target, dataset_info, datasets_help, register
from pipeline.datasets import registry as dataset_registry
from pipeline.validation import validate
from training.data import Dataset

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"


def _options() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(CONF.glob("*.yaml"))}


def test_every_config_option_is_a_registered_set_with_its_loader():
    options = _options()
    assert set(options) == set(DATASETS), "conf/dataset/ and the registry name different sets"
    for option, node in options.items():
        assert node["name"] == option
        assert node["_target_"] == DATASETS[option].target
        check_target(node["name"], node["_target_"])  # resolves to the registered function


def test_file_sets_are_marked():
    reads = {name for name, info in DATASETS.items() if info.reads_files}
    assert reads == {"cifar10", "cifar100", "purchase100", "texas100", "ag_news", "fashion_mnist", "files"}
    for name in reads - {"files"}:  # a set read from files takes paths.data_dir
        assert "data_dir" in _options()[name]
    assert _options()["files"]["path"] == "???"  # the user's own files: the path they name


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'.*'digits'.*'ag_news'"):
        dataset_info("imagenet")


def test_a_target_that_is_not_the_names_loader_is_refused():
    with pytest.raises(ValueError, match=r"'cifar10' is loaded by pipeline.datasets.load_cifar"):
        check_target("cifar10", "pipeline.datasets.load_purchase100")
    with pytest.raises(ValueError, match="cannot be imported"):
        check_target("digits", "training.data.no_such_loader")


def test_validation_refuses_a_mismatched_name_before_any_work(cfg_factory):
    cfg = cfg_factory("experiment=smoke", "stage=teacher", "dataset.name=digits")
    with pytest.raises(ValueError, match=r"dataset 'digits' is loaded by training.embedded.load_digits"):
        validate(cfg)
    cfg = cfg_factory("experiment=smoke", "stage=teacher", "dataset.name=mnist")
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        validate(cfg)


def test_register_adds_a_set_and_refuses_a_second_registration(monkeypatch):
    monkeypatch.setattr(dataset_registry, "DATASETS", dict(DATASETS))

    @dataset_registry.register("tiny", "two points")
    def load_tiny(name: str = "tiny") -> Dataset:  # pragma: no cover - never loaded here
        raise AssertionError

    assert dataset_registry.DATASETS["tiny"].loader is load_tiny
    assert "tiny" not in DATASETS
    with pytest.raises(ValueError, match="registered twice"):
        dataset_registry.register("tiny", "again")(load_tiny)
    assert register is dataset_registry.register


def test_help_lists_every_set_once_in_registration_order():
    lines = datasets_help().splitlines()
    assert [line.split()[0] for line in lines] == list(DATASETS)
