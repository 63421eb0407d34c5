"""A data file replaced by different data: the data key changes, so the teacher and everything
built on it are trained again, and a warning names the file. Moving the folder changes nothing."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
from conftest import make_cfg

from pipeline.cache import DATA_INDEX_FILE
from pipeline.context import RunContext, load_data
from pipeline.stages import teacher as teacher_stage

pytestmark = pytest.mark.smoke


def _write_purchase(path, seed: int, n: int = 300) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, 101, n)
    feats = rng.integers(0, 2, (n, 600))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(f"{y}," + ",".join(map(str, f)) for y, f in zip(labels, feats)) + "\n")


def _cfg(root, data_dir):
    return make_cfg(
        [
            "dataset=purchase100", "model=mlp", "model.hidden_sizes=[32]", "train.batch_size=32",
            "runtime.progress=false", "tracking.enabled=false", f"paths.data_dir={data_dir}",
            "dataset.split.train=0.3", "dataset.split.val=0.1", "dataset.split.test=0.1",
            "dataset.split.population=0.4", "train.epochs=1",
        ],
        root,
    )


def test_replaced_data_file_retrains_and_says_so(tmp_path, caplog):
    data = tmp_path / "data" / "dataset_purchase"
    _write_purchase(data, seed=0)
    cfg = _cfg(tmp_path, tmp_path / "data")
    first = teacher_stage.run(RunContext.build(cfg))
    assert not first.cache_hit
    assert (tmp_path / ".cache" / DATA_INDEX_FILE).exists()  # hashes remembered across runs

    moved = tmp_path / "elsewhere" / "dataset_purchase"  # same content, another folder: same key
    moved.parent.mkdir()
    shutil.copy(data, moved)
    assert teacher_stage.run(RunContext.build(_cfg(tmp_path, tmp_path / "elsewhere"))).cache_hit

    _write_purchase(data, seed=1)  # replaced by different data at the same path
    with caplog.at_level(logging.WARNING):
        second = teacher_stage.run(RunContext.build(cfg))
    assert not second.cache_hit and second.key != first.key
    assert f"data file {data}" in caplog.text and "changed" in caplog.text
    assert (first.path / "model.pt").exists()  # the earlier entry is intact, for the earlier data
    assert load_data(cfg).key != load_data(_cfg(tmp_path, tmp_path / "elsewhere")).key


def test_embedded_sets_key_on_generator_parameters(tmp_path):
    base = load_data(make_cfg(["experiment=smoke"], tmp_path)).key
    assert load_data(make_cfg(["experiment=smoke"], tmp_path / "other")).key == base
    assert load_data(make_cfg(["experiment=smoke", "dataset.generator_seed=1"], tmp_path)).key != base
