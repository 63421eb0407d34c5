"""Real-data loaders on tiny fake files of the real formats, built in tmp_path (no network)."""

from __future__ import annotations

import collections
import csv
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.context import RunContext, build_model, load_data
from pipeline.datasets import (
    augment_cifar,
    build_vocab,
    file_md5,
    load_ag_news,
    load_cifar,
    load_purchase100,
    load_texas100,
    tokenize,
)
from pipeline.validation import validate

# ----------------------------------------------------------------------------- fake files


def _cifar_batch(n: int, n_classes: int, label_key: bytes, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    batch = {
        b"batch_label": b"fake",
        label_key: rng.integers(0, n_classes, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }
    return pickle.dumps(batch, protocol=2)


def _cifar_members(name: str, n_per_file: int = 10) -> dict[str, bytes]:
    """The member files of a CIFAR archive, each with `n_per_file` random images."""
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        return {
            f"cifar-10-batches-py/{f}": _cifar_batch(n_per_file, 10, b"labels", i)
            for i, f in enumerate(files)
        }
    return {
        f"cifar-100-python/{f}": _cifar_batch(n_per_file, 100, b"fine_labels", i)
        for i, f in enumerate(["train", "test"])
    }


def _write_tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _fake_cifar_archive(root: Path, name: str = "cifar10") -> Path:
    archive = "cifar-10-python.tar.gz" if name == "cifar10" else "cifar-100-python.tar.gz"
    return _write_tar_gz(root / archive, _cifar_members(name))


def _purchase_lines(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        ",".join([str(int(rng.integers(1, 101)))] + [str(int(b)) for b in rng.integers(0, 2, 600)])
        for _ in range(n)
    ]


def _write_ag_news(folder: Path, n_train: int = 30, n_test: int = 10, header: bool = False) -> None:
    folder.mkdir(parents=True)
    words = ["stocks", "fell", "team", "wins", "new", "chip", "war", "talks"]
    rng = np.random.default_rng(0)
    for part, n in (("train.csv", n_train), ("test.csv", n_test)):
        with open(folder / part, "w", newline="") as f:
            writer = csv.writer(f, quoting=csv.QUOTE_ALL)
            if header:
                writer.writerow(["Class Index", "Title", "Description"])
            for i in range(n):
                title = " ".join(rng.choice(words, 3))
                desc = f"Reuters - {' '.join(rng.choice(words, 5))}, it\\'s #39;{i}"
                writer.writerow([str(i % 4 + 1), title, desc])


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name, n_classes, n", [("cifar10", 10, 60), ("cifar100", 100, 20)])
def test_cifar_archive_loads_pooled_and_normalised(tmp_path, name, n_classes, n):
    archive = _fake_cifar_archive(tmp_path, name)
    ds = load_cifar(name, str(tmp_path), expected_md5=file_md5(archive))
    assert ds.x.shape == (n, 3, 32, 32) and ds.x.dtype == torch.float32
    assert ds.y.shape == (n,) and ds.y.dtype == torch.int64 and ds.n_classes == n_classes
    # the first image's first red pixel, normalised by hand
    raw = pickle.loads(_cifar_members(name)[next(iter(_cifar_members(name)))])[b"data"]
    mean, std = (0.4914, 0.2470) if name == "cifar10" else (0.5071, 0.2673)
    assert float(ds.x[0, 0, 0, 0]) == pytest.approx((raw[0, 0] / 255 - mean) / std, abs=1e-5)
    assert ds.augment is augment_cifar


def test_cifar_extracted_folder_equals_archive(tmp_path):
    (tmp_path / "a").mkdir()
    archive = _fake_cifar_archive(tmp_path / "a", "cifar10")
    for member, data in _cifar_members("cifar10").items():
        (tmp_path / "b" / member).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "b" / member).write_bytes(data)
    from_archive = load_cifar("cifar10", str(tmp_path / "a"), expected_md5=file_md5(archive))
    from_folder = load_cifar("cifar10", str(tmp_path / "b"), augment=False)
    assert torch.equal(from_archive.x, from_folder.x) and torch.equal(from_archive.y, from_folder.y)
    assert from_folder.augment is None


def test_cifar_checksum_published_value_rejects_a_fake_archive(tmp_path):
    archive = _fake_cifar_archive(tmp_path)
    with pytest.raises(ValueError) as err:
        load_cifar("cifar10", str(tmp_path))  # default: the published MD5
    assert "c58f30108f718f92721af3b95e74349a" in str(err.value)
    assert file_md5(archive) in str(err.value) and str(archive) in str(err.value)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_cifar("cifar10", str(tmp_path), expected_md5="0" * 32)
    assert len(load_cifar("cifar10", str(tmp_path), verify_checksum=False)) == 60


def test_cifar_missing_file_names_paths_format_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar("cifar100", str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python.tar.gz") in msg
    assert "cifar-100-python" in msg and "python version" in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in msg


def test_cifar_truncated_archive_and_bad_pickle(tmp_path):
    archive = _fake_cifar_archive(tmp_path)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated") as err:
        load_cifar("cifar10", str(tmp_path), verify_checksum=False)
    assert str(archive) in str(err.value)
    members = _cifar_members("cifar10")
    members["cifar-10-batches-py/test_batch"] = b"not a pickle"
    _write_tar_gz(archive, members)
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar("cifar10", str(tmp_path), verify_checksum=False)


def test_cifar_pickle_may_not_name_arbitrary_classes(tmp_path):
    members = _cifar_members("cifar10")
    members["cifar-10-batches-py/data_batch_1"] = pickle.dumps(collections.OrderedDict(a=1))
    _write_tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    with pytest.raises(ValueError, match="refusing"):
        load_cifar("cifar10", str(tmp_path), verify_checksum=False)


def test_cifar_subsample_is_fixed(tmp_path):
    _fake_cifar_archive(tmp_path)
    a = load_cifar("cifar10", str(tmp_path), verify_checksum=False, n_samples=25)
    b = load_cifar("cifar10", str(tmp_path), verify_checksum=False, n_samples=25)
    assert len(a) == 25 and torch.equal(a.x, b.x)


def test_augment_keeps_shape_is_seeded_and_crops_and_flips():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = augment_cifar(x, g1), augment_cifar(x, g2)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(augment_cifar(x, g1), a)  # the generator advanced
    # pad 0, always flip: an exact mirror image
    assert torch.equal(augment_cifar(x, torch.Generator(), pad=0, flip_prob=1.0), x.flip(3))
    # no flip: every output is a shifted window of the zero-padded input
    out = augment_cifar(x, torch.Generator().manual_seed(3), flip_prob=0.0)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        assert any(
            torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])
            for dy in range(9)
            for dx in range(9)
        )


# ----------------------------------------------------------------------------- Purchase / Texas


def test_purchase100_file_and_archive(tmp_path):
    lines = _purchase_lines(20)
    (tmp_path / "dataset_purchase").write_text("\n".join(lines) + "\n")
    ds = load_purchase100(data_dir=str(tmp_path))
    assert ds.x.shape == (20, 600) and ds.n_classes == 100
    assert set(ds.x.unique().tolist()) <= {0.0, 1.0}
    assert int(ds.y[0]) == int(lines[0].split(",")[0]) - 1  # shifted to 0-based
    arch = tmp_path / "arch"
    arch.mkdir()
    _write_tar_gz(arch / "dataset_purchase.tgz", {"dataset_purchase": "\n".join(lines).encode()})
    from_tgz = load_purchase100(
        data_dir=str(arch), expected_md5=file_md5(arch / "dataset_purchase.tgz")
    )
    assert torch.equal(from_tgz.x, ds.x) and torch.equal(from_tgz.y, ds.y)
    with pytest.raises(ValueError, match="checksum mismatch"):
        load_purchase100(data_dir=str(arch), expected_md5="0" * 32)


def test_purchase100_bad_rows_and_missing_file(tmp_path):
    lines = _purchase_lines(5)
    lines[3] = lines[3].rsplit(",", 1)[0]  # one feature short
    (tmp_path / "dataset_purchase").write_text("\n".join(lines))
    with pytest.raises(ValueError, match=r"dataset_purchase, line 4: expected 601 .* got 600"):
        load_purchase100(data_dir=str(tmp_path))
    lines = _purchase_lines(5)
    lines[1] = "0" + lines[1][lines[1].index(",") :]  # label 0: not in 1..100
    (tmp_path / "dataset_purchase").write_text("\n".join(lines))
    with pytest.raises(ValueError, match="outside 1..100"):
        load_purchase100(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_purchase100(data_dir=str(tmp_path / "empty"))
    msg = str(err.value)
    assert str(tmp_path / "empty" / "dataset_purchase") in msg and "600" in msg
    assert "https://www.comp.nus.edu.sg/~reza/files/dataset_purchase.tgz" in msg


def _write_texas(base: Path, n: int = 12, n_features: int = 6169) -> np.ndarray:
    rng = np.random.default_rng(1)
    (base / "texas" / "100").mkdir(parents=True)
    feats = rng.integers(0, 2, (n, n_features))
    labels = rng.integers(1, 101, n)
    (base / "texas/100/feats").write_text("\n".join(",".join(map(str, r)) for r in feats) + "\n")
    (base / "texas/100/labels").write_text("\n".join(map(str, labels)) + "\n")
    return labels


def test_texas100_loads_and_checks_feature_count(tmp_path):
    labels = _write_texas(tmp_path)
    ds = load_texas100(data_dir=str(tmp_path))
    assert ds.x.shape == (12, 6169) and ds.n_classes == 100
    assert ds.y.tolist() == (labels - 1).tolist()
    _write_texas(tmp_path / "short", n_features=6168)
    with pytest.raises(ValueError, match=r"feats, line 1: expected 6169"):
        load_texas100(data_dir=str(tmp_path / "short"))
    with pytest.raises(FileNotFoundError, match="texas/100/labels"):
        load_texas100(data_dir=str(tmp_path / "nothing"))


def test_texas100_label_count_mismatch(tmp_path):
    _write_texas(tmp_path)
    with open(tmp_path / "texas/100/labels", "a") as f:
        f.write("7\n")
    with pytest.raises(ValueError, match="13 labels but .* 12 rows"):
        load_texas100(data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- AG News


def test_tokenizer_and_vocab_are_deterministic():
    assert tokenize("Wall St. Bears Claw Back Into the Black (Reuters)") == [
        "wall", "st", "bears", "claw", "back", "into", "the", "black", "reuters",
    ]  # fmt: skip
    assert tokenize("Google #39;s IPO &amp; quot;up quot; it's dwindling\\band") == [
        "google", "s", "ipo", "up", "it's", "dwindling", "band",
    ]  # fmt: skip
    vocab = build_vocab([["b", "a", "b"], ["c", "a"]], vocab_size=4)
    assert vocab == {"a": 2, "b": 3}  # ties broken alphabetically; 0 pad, 1 unknown


def test_ag_news_loads_token_ids(tmp_path):
    _write_ag_news(tmp_path / "ag_news_csv", header=True)
    ds = load_ag_news(data_dir=str(tmp_path), vocab_size=8, max_len=6)
    assert ds.x.shape == (40, 6) and ds.x.dtype == torch.int64 and ds.n_classes == 4
    assert int(ds.x.min()) >= 0 and int(ds.x.max()) < 8
    assert (ds.x == 1).any()  # some tokens fall outside a vocabulary of 6 words
    assert ds.y[:4].tolist() == [0, 1, 2, 3]
    again = load_ag_news(data_dir=str(tmp_path), vocab_size=8, max_len=6)
    assert torch.equal(ds.x, again.x)
    long = load_ag_news(data_dir=str(tmp_path), vocab_size=100, max_len=40)
    assert (long.x[:, -1] == 0).all()  # short documents are padded with 0


def test_ag_news_bad_rows_and_missing_files(tmp_path):
    folder = tmp_path / "ag_news"
    _write_ag_news(folder)
    with open(folder / "test.csv", "a") as f:
        f.write('"3","only a title"\n')
    with pytest.raises(ValueError, match=r"test.csv, line 11: expected 3 columns"):
        load_ag_news(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        load_ag_news(data_dir=str(tmp_path / "none"))
    assert "ag_news_csv" in str(err.value) and "train.csv" in str(err.value)


# ----------------------------------------------------------------------------- through the config


def test_composed_config_loads_ag_news_and_builds_text_model(cfg_factory, tmp_path):
    _write_ag_news(tmp_path / "data" / "ag_news_csv")
    cfg = cfg_factory(
        "dataset=ag_news", "model=text_bag", "dataset.vocab_size=50", "dataset.max_len=8"
    )
    validate(cfg)
    data = load_data(cfg)
    assert data.dataset.x.shape == (40, 8)
    model = build_model(RunContext.build(cfg), data, "test")
    x, _ = data.part("train")
    assert model(x).shape == (len(x), 4)
    assert model.embedding.num_embeddings == 50


def test_composed_config_loads_cifar_from_data_dir(cfg_factory, tmp_path):
    (tmp_path / "data").mkdir()
    _fake_cifar_archive(tmp_path / "data")
    cfg = cfg_factory("dataset=cifar10", "model=resnet18", "dataset.verify_checksum=false")
    validate(cfg)
    assert str(tmp_path / "data") == str(Path(cfg.dataset.data_dir))
    data = load_data(cfg)
    assert data.dataset.input_shape == (3, 32, 32) and len(data.dataset) == 60
