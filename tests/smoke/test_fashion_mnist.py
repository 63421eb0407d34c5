"""`dataset=fashion_mnist` on the real files of Debian's `dataset-fashion-mnist` (issue 24): a
subset runs teacher, compression and audit; without the files the error says where to put them.

`.ci/run` installs the package; elsewhere the smoke test is skipped with the reason, and fails
under CI=true (as tests/integration do without PostgreSQL)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.__main__ import run_stage
from pipeline.datasets import augment_cifar, load_fashion_mnist
from pipeline.datasets.fashion_mnist import DEBIAN_FOLDER

HAVE_FILES = (Path(DEBIAN_FOLDER) / "train-images-idx3-ubyte.gz").is_file()


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist.*paths.data_dir"):
        load_fashion_mnist(folder=str(tmp_path))


@pytest.mark.smoke
def test_a_subset_of_the_real_files_end_to_end(cfg_factory):
    if not HAVE_FILES:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Fashion-MNIST is not installed in {DEBIAN_FOLDER} (.ci/run installs dataset-fashion-mnist)")
        pytest.skip(f"Fashion-MNIST is not installed in {DEBIAN_FOLDER} (apt-get install dataset-fashion-mnist)")
    ds = load_fashion_mnist(n_samples=1500)
    assert ds.x.shape == (1500, 1, 28, 28) and ds.n_classes == 10 and 0 <= float(ds.x.min()) < float(ds.x.max()) <= 1
    assert ds.augment is None and load_fashion_mnist(n_samples=10, augment=True).augment is augment_cifar
    cfg = cfg_factory("experiment=smoke", "stage=attack", "dataset=fashion_mnist", "dataset.n_samples=1500",
                      "model=cnn", "model.channels=[4,8]", "model.hidden_size=32", "+model.pool=flatten",
                      "~model.hidden_sizes", "~dataset.n_features", "~dataset.n_informative", "~dataset.n_classes",
                      "train.epochs=3")
    result = run_stage(cfg)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=str(cfg.tracking.uri))
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment))
    tracked = client.search_runs([exp.experiment_id])[0].data.metrics
    assert tracked["teacher_test_accuracy"] > 0.3  # chance: 0.1
    assert abs(tracked["density"] - 0.2) < 0.01  # compressed (a 3-epoch sparse CNN this small learns little)
    assert 0.3 < result.metrics["audit_auc"] < 0.9
