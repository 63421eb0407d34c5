"""`dataset=files` (issue 24): each format read as distributed, the user's membership feeding
disjoint splits, file contents in the data key, and every bad input refused with its reason."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline.context import data_key, load_data
from pipeline.datasets import load_files
from pipeline.membership import member_splits


def _xy(n=200, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    return rng.normal(size=(n, d)).astype(np.float32) + y[:, None], y.astype(np.int64)


def _idx(array: np.ndarray, type_code: int) -> bytes:
    head = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    return head + array.astype(array.dtype.newbyteorder(">")).tobytes()


def test_npz_npy_csv_parquet_give_the_same_pool(tmp_path):
    x, y = _xy()
    np.savez(tmp_path / "d.npz", feats=x, target=y)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])]).assign(label=y)
    table.to_csv(tmp_path / "d.csv", index=False)
    table.to_parquet(tmp_path / "d.parquet")
    pools = [
        load_files(format="npz", path=str(tmp_path / "d.npz"), x_key="feats", y_key="target"),
        load_files(format="npy", path=str(tmp_path / "x.npy"), labels_path=str(tmp_path / "y.npy")),
        load_files(format="csv", path=str(tmp_path / "d.csv")),
        load_files(format="parquet", path=str(tmp_path / "d.parquet")),
    ]
    for ds in pools:
        assert ds.n_classes == 3 and ds.x.shape == (200, 6)
        np.testing.assert_allclose(ds.x.numpy(), x, rtol=1e-6)
        assert (ds.y.numpy() == y).all()


def test_feature_columns_and_categorical_onehot_or_refused(tmp_path):
    table = pd.DataFrame({"a": [1.0, 2, 3, 4], "colour": ["red", "blue", "red", "green"], "label": [0, 1, 0, 1],
                          "unused": [9, 9, 9, 9]})
    table.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=r"non-numeric feature column\(s\) \['colour'\].*categorical=onehot"):
        load_files(format="csv", path=str(tmp_path / "t.csv"))
    ds = load_files(format="csv", path=str(tmp_path / "t.csv"), categorical="onehot", feature_columns=["a", "colour"])
    # a, then colour_blue, colour_green, colour_red (sorted values)
    assert ds.x.tolist() == [[1, 0, 0, 1], [2, 1, 0, 0], [3, 0, 0, 1], [4, 0, 1, 0]]
    with pytest.raises(ValueError, match=r"no column 'size'; its columns: \['a', 'colour', 'label', 'unused'\]"):
        load_files(format="csv", path=str(tmp_path / "t.csv"), feature_columns=["a", "size"])
    with pytest.raises(ValueError, match=r"no column 'target'"):
        load_files(format="csv", path=str(tmp_path / "t.csv"), label_column="target")


def test_idx_with_and_without_gzip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(30, 5, 4), dtype=np.uint8)
    labels = (np.arange(30) % 3).astype(np.uint8)
    (tmp_path / "img-idx3-ubyte").write_bytes(_idx(images, 0x08))
    (tmp_path / "lab-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels, 0x08)))
    ds = load_files(format="idx", path=str(tmp_path / "img-idx3-ubyte"), labels_path=str(tmp_path / "lab-idx1-ubyte.gz"))
    assert ds.x.shape == (30, 1, 5, 4)
    np.testing.assert_allclose(ds.x[:, 0].numpy() * 255, images, atol=1e-4)
    assert ds.y.tolist() == labels.tolist()
    (tmp_path / "bad-idx3-ubyte").write_bytes(_idx(images, 0x08)[:-7])
    with pytest.raises(ValueError, match=r"declares shape \(30, 5, 4\).*truncated"):
        load_files(format="idx", path=str(tmp_path / "bad-idx3-ubyte"), labels_path=str(tmp_path / "lab-idx1-ubyte.gz"))


def _image_folder(root, sizes=((6, 5),), n=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(n):
            w, h = sizes[(c * n + i) % len(sizes)]
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name / f"{i}.png")


def test_image_folder_classes_size_and_channels(tmp_path):
    _image_folder(tmp_path / "imgs")
    grey = load_files(format="image_folder", path=str(tmp_path / "imgs"))
    assert grey.x.shape == (8, 1, 5, 6) and grey.y.tolist() == [0] * 4 + [1] * 4
    assert 0 <= float(grey.x.min()) and float(grey.x.max()) <= 1
    rgb = load_files(format="image_folder", path=str(tmp_path / "imgs"), channels=3, image_size=[8, 8])
    assert rgb.x.shape == (8, 3, 8, 8)


def test_ragged_images_are_refused_naming_both_files(tmp_path):
    _image_folder(tmp_path / "imgs", sizes=((6, 5), (7, 5)))
    with pytest.raises(ValueError, match=r"ragged images: .*cat/1.png is 7x5 but .*cat/0.png is 6x5.*image_size"):
        load_files(format="image_folder", path=str(tmp_path / "imgs"))
    ds = load_files(format="image_folder", path=str(tmp_path / "imgs"), image_size=[5, 6])
    assert ds.x.shape == (8, 1, 5, 6)


@pytest.mark.parametrize("labels, words", [
    ([1, 2, 3, 1], r"labels must be integers 0..C-1 with every class present.*class\(es\) \[0\]"),
    ([0, -1, 1, 0], r"labels must be integers 0..C-1 \(C=2\), found -1..1"),
    ([0, 1.5, 1, 0], r"labels must be integers 0..C-1, got values like"),
    (["a", "b", "a", "b"], r"labels must be integers 0..C-1, got values like \['a', 'b'\]"),
])
def test_bad_labels(tmp_path, labels, words):
    pd.DataFrame({"f": [0.0, 1, 2, 3], "label": labels}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(ValueError, match=words):
        load_files(format="csv", path=str(tmp_path / "t.csv"))


def test_nan_and_inf_features_and_missing_files(tmp_path):
    x, y = _xy(10)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(ValueError, match=r"2 record\(s\) have NaN or infinite features \(first: record 3\)"):
        load_files(format="npz", path=str(tmp_path / "d.npz"))
    with pytest.raises(FileNotFoundError, match=r"missing"):
        load_files(format="npz", path=str(tmp_path / "nope.npz"))
    np.savez(tmp_path / "e.npz", x=x)
    with pytest.raises(ValueError, match=r"has no array 'y'; its arrays: \['x'\]"):
        load_files(format="npz", path=str(tmp_path / "e.npz"))
    with pytest.raises(ValueError, match=r"unknown dataset.format 'xlsx'; valid: \['npz', 'npy', 'csv'"):
        load_files(format="xlsx", path="x")


def test_member_splits_follow_the_users_membership_and_are_disjoint():
    rng = np.random.default_rng(1)
    membership = rng.choice([1, 0, -1], size=1000, p=[0.4, 0.5, 0.1]).astype(np.int8)
    s = member_splits(membership, {"train": 0.3, "val": 0.15, "test": 0.15, "population": 0.4}, seed=0)
    assert set(s.train) == set(np.flatnonzero(membership == 1))
    non = set(np.flatnonzero(membership == 0))
    assert set(s.val) | set(s.test) | set(s.population) == non
    parts = [s.val, s.test, s.population, s.train]
    assert sum(map(len, parts)) == len(set(np.concatenate(parts)))  # disjoint
    assert abs(len(s.test) / len(non) - 0.15 / 0.7) < 0.01
    audit, search, known = set(s.audit_members), set(s.search_members), set(s.known_members)
    assert audit | search | known == set(s.train) and not (audit & search or audit & known or search & known)
    assert len(audit) == len(s.test)


def test_too_few_records_name_the_split_and_the_numbers():
    with pytest.raises(ValueError, match=r"too few non-members for split 'val': it gets 1 of the 6 records.*share 0.15/0.7"):
        member_splits(np.array([1] * 40 + [0] * 6, np.int8), {"train": 0.3, "val": 0.15, "test": 0.15,
                                                              "population": 0.4}, seed=0)
    with pytest.raises(ValueError, match=r"too few members for split 'train': .*n_audit=20 .* of the 5 the user marked, leaving 0"):
        member_splits(np.array([1] * 5 + [0] * 100, np.int8), {"train": 0.3, "val": 0.1, "test": 0.1,
                                                               "population": 0.3}, seed=0)
    from training.data import make_splits

    with pytest.raises(ValueError, match=r"too few records for split 'val': it gets 1 of the pool's 12 records "
                                         r"\(fraction 0.1\)"):
        make_splits(12, {"train": 0.5, "val": 0.1, "test": 0.2, "population": 0.2}, seed=0)


def test_membership_from_index_files_and_column(tmp_path, cfg_factory):
    x, y = _xy(300)
    member = (np.arange(300) % 5 < 2).astype(int)
    pd.DataFrame(x).add_prefix("f").assign(label=y, member=member).to_csv(tmp_path / "d.csv", index=False)
    ds = load_files(format="csv", path=str(tmp_path / "d.csv"), member_column="member")
    assert ds.x.shape == (300, 6) and ds.membership.tolist() == member.tolist()  # the column is no feature
    np.savetxt(tmp_path / "in.txt", np.flatnonzero(member == 1), fmt="%d")
    np.save(tmp_path / "out.npy", np.flatnonzero(member == 0)[:100])
    by_files = load_files(format="csv", path=str(tmp_path / "d.csv"), feature_columns=[f"f{i}" for i in range(6)],
                          members_file=str(tmp_path / "in.txt"), non_members_file=str(tmp_path / "out.npy"))
    assert (by_files.membership == 1).sum() == 120 and (by_files.membership == 0).sum() == 100
    assert (by_files.membership == -1).sum() == 80  # in neither list: left out
    np.savetxt(tmp_path / "clash.txt", [0, 1, 2], fmt="%d")
    with pytest.raises(ValueError, match=r"both members and non-members"):
        load_files(format="csv", path=str(tmp_path / "d.csv"), members_file=str(tmp_path / "in.txt"),
                   non_members_file=str(tmp_path / "clash.txt"))
    cfg = cfg_factory("experiment=smoke", "dataset=files", "dataset.format=csv", f"dataset.path={tmp_path / 'd.csv'}",
                      "dataset.member_column=member")
    bundle = load_data(cfg)
    assert set(bundle.splits.train) == set(np.flatnonzero(member == 1))
    assert not set(bundle.splits.test) & set(np.flatnonzero(member == 1))


def test_every_files_content_enters_the_data_key_and_not_its_folder(tmp_path, cfg_factory):
    _image_folder(tmp_path / "a" / "imgs", n=12)
    def key(folder):
        return data_key(cfg_factory("experiment=smoke", "dataset=files", "dataset.format=image_folder",
                                    f"dataset.path={folder}", "dataset.split.train=0.4", "dataset.split.population=0.3"))
    base = key(tmp_path / "a" / "imgs")
    shutil.copytree(tmp_path / "a" / "imgs", tmp_path / "b" / "imgs")
    assert key(tmp_path / "b" / "imgs") == base  # moved: same content, same key
    from PIL import Image

    Image.fromarray(np.zeros((5, 6), np.uint8)).save(tmp_path / "b" / "imgs" / "dog" / "3.png")
    assert key(tmp_path / "b" / "imgs") != base  # one image changed
    shutil.move(tmp_path / "a" / "imgs" / "dog", tmp_path / "a" / "imgs" / "wolf")
    assert key(tmp_path / "a" / "imgs") != base  # a class renamed: its folder name is in the key
