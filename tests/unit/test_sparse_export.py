"""Compressed export: round trip with identical logits, real byte sizes, encodings, bad input."""

from __future__ import annotations

import os

import pytest
import torch
from sparse_testing import linear_stack
from torch import nn

from sparse import (
    MaskSet,
    dense_size_bytes,
    export_model,
    exported_size_bytes,
    load_export,
    random_masks,
    read_export,
    save_export,
)


def mlp(sizes=(64, 256, 256, 10)) -> nn.Sequential:
    return linear_stack(sizes)


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.Flatten(),
        nn.Linear(128, 5),
    )


def sparse_model(model_fn, density, seed=0):
    torch.manual_seed(seed)
    model = model_fn()
    masks = random_masks(model, density, "erk", torch.Generator().manual_seed(seed))
    masks.apply(model)
    if model_fn is cnn:  # non-trivial BatchNorm running statistics
        model.train()
        model(torch.randn(32, 3, 8, 8))
    model.eval()
    return model, masks


def inputs(model_fn):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(16, 3, 8, 8, generator=g)
        if model_fn is cnn
        else torch.randn(16, 64, generator=g)
    )


@pytest.mark.parametrize("model_fn", [mlp, cnn], ids=["mlp", "cnn"])
@pytest.mark.parametrize("density", [0.01, 0.05, 0.1, 0.5, 1.0])
def test_round_trip_gives_identical_logits(model_fn, density):
    model, masks = sparse_model(model_fn, density)
    data = export_model(model, masks)
    fresh = model_fn()
    fresh.eval()
    x = inputs(model_fn)
    assert not torch.equal(fresh(x), model(x))
    load_export(data, fresh)
    assert torch.equal(fresh(x), model(x))
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_size_is_the_byte_length_and_save_is_atomic(tmp_path):
    model, masks = sparse_model(mlp, 0.1)
    n = exported_size_bytes(model, masks)
    assert n == len(export_model(model, masks))
    path = tmp_path / "sub" / "model.scmp"
    assert save_export(model, path, masks) == n == path.stat().st_size
    assert os.listdir(path.parent) == ["model.scmp"]  # no temp file left behind
    fresh = mlp()
    load_export(path, fresh)
    x = inputs(mlp)
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize("density,limit", [(0.5, 0.57), (0.1, 0.19), (0.05, 0.09), (0.01, 0.03)])
def test_export_is_really_smaller(density, limit):
    model, masks = sparse_model(mlp, density)
    ratio = exported_size_bytes(model, masks) / dense_size_bytes(model)
    assert ratio <= limit
    assert ratio >= density  # values alone need density * 4 bytes per weight


def test_encoding_is_the_smallest_and_index_width_follows_numel():
    model, masks = sparse_model(mlp, 0.05)
    header, _, stored = read_export(export_model(model, masks))
    enc = {e["name"]: e for e in header["tensors"]}
    assert enc["0.bias"]["enc"] == "dense"
    for k, m in masks.masks.items():
        n, nnz = m.numel(), int(m.sum())
        e = enc[k]
        width = 2 if n <= 2**16 else 4
        costs = {"bitmask": -(-n // 8) + 4 * nnz, "indices": (width + 4) * nnz, "dense": 4 * n}
        assert costs[e["enc"]] == min(costs.values())
        if e["enc"] == "indices":
            assert e["idx"] == ("uint16" if n <= 2**16 else "uint32")
        assert torch.equal(stored[k], m)
    big = nn.Linear(300, 300)  # 90 000 > 2**16 weights
    bm = random_masks(big, 0.01)
    bm.apply(big)
    e = {t["name"]: t for t in read_export(export_model(big, bm))[0]["tensors"]}["weight"]
    assert (e["enc"], e["idx"]) == ("indices", "uint32")


def test_without_masks_stores_the_nonzeros():
    model, masks = sparse_model(mlp, 0.05)
    assert export_model(model) == export_model(model, masks)  # kaiming weights are never exactly 0


def test_float16_values():
    model, masks = sparse_model(mlp, 0.1)
    n32, n16 = exported_size_bytes(model, masks), exported_size_bytes(model, masks, "float16")
    assert n16 < 0.7 * n32
    fresh = load_export(export_model(model, masks, "float16"), mlp())
    x = inputs(mlp)
    assert torch.allclose(fresh(x), model(x), atol=1e-2)
    assert fresh[0].weight.dtype == torch.float32


def test_header_mismatch_raises_naming_the_tensor():
    model, masks = sparse_model(mlp, 0.1)
    data = export_model(model, masks)
    with pytest.raises(ValueError, match=r"'0.weight'.*\(256, 64\).*\(128, 64\)"):
        load_export(data, mlp((64, 128, 256, 10)))
    with pytest.raises(ValueError, match="'6.weight' is missing"):
        load_export(data, mlp((64, 256, 256, 10, 10)))
    with pytest.raises(ValueError, match="export has tensor '4.weight'"):
        load_export(data, mlp((64, 256, 10)))


def test_corrupt_or_foreign_data_raises():
    model, masks = sparse_model(mlp, 0.1)
    data = bytearray(export_model(model, masks))
    with pytest.raises(ValueError, match="magic"):
        load_export(b"PK\x03\x04" + bytes(data[4:]), mlp())
    data[-5] ^= 0xFF
    with pytest.raises(ValueError, match="CRC"):
        load_export(bytes(data), mlp())
    with pytest.raises(ValueError, match="payload"):
        load_export(bytes(data[:-10]), mlp())
    with pytest.raises(ValueError, match="too short"):
        load_export(b"SC", mlp())


def test_bad_options_raise():
    model, masks = sparse_model(mlp, 0.1)
    with pytest.raises(ValueError, match=r"unknown value_dtype 'int8'.*'float32', 'float16'"):
        export_model(model, masks, "int8")
    with pytest.raises(ValueError, match="does not match weight"):
        export_model(model, MaskSet({"0.weight": torch.ones(3, 3, dtype=torch.bool)}))
    with pytest.raises(ValueError, match="bytes or a file path"):
        load_export(123, model)  # type: ignore[arg-type]


def test_dense_size_bytes_counts_params_and_buffers_once():
    model = cnn()
    n = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    assert dense_size_bytes(model) == 4 * n


def test_index_width_boundaries():
    from sparse.export import _index_dtype

    # positions 0 .. numel-1: uint16 up to 2**16 weights, uint32 up to 2**32
    assert [_index_dtype(n) for n in (2**16, 2**16 + 1, 2**32, 2**32 + 1)] == [
        "uint16", "uint32", "uint32", "uint64"]


def test_bitmask_of_a_size_not_a_multiple_of_8_round_trips_in_the_stored_dtype():
    torch.manual_seed(0)
    model = nn.Linear(7, 3)  # 21 weights: a 3-byte bitmask with 3 padding bits
    masks = random_masks(model, 0.6, "uniform", torch.Generator().manual_seed(0))
    masks.apply(model)
    header, tensors, stored = read_export(export_model(model, masks, "float16"))
    assert {e["name"]: e["enc"] for e in header["tensors"]}["weight"] == "bitmask"
    assert torch.equal(stored["weight"], masks.masks["weight"])
    assert tensors["weight"].dtype == torch.float16  # the stored dtype, as documented
    assert torch.equal(tensors["weight"], model.weight.detach().half())


def test_corrupt_payload_message_is_exact():
    model, masks = sparse_model(mlp, 0.1)
    data = bytearray(export_model(model, masks))
    data[-5] ^= 0xFF
    with pytest.raises(ValueError, match=r"^export payload CRC-32 mismatch: the file is corrupt$"):
        read_export(bytes(data))


def test_size_report_counts_what_the_masks_keep():
    from sparse import size_report

    torch.manual_seed(0)
    model = mlp()
    masks = random_masks(model, 0.1, "erk", torch.Generator().manual_seed(0))  # not applied: the
    report = size_report(model, masks)  # export must still store only the kept positions
    exported = exported_size_bytes(model, masks)
    assert exported < exported_size_bytes(model)
    assert report == {
        "model_size_bytes": exported,
        "dense_size_bytes": dense_size_bytes(model),
        "size_ratio": exported / dense_size_bytes(model),
        "n_active": masks.n_active(),
        "n_total": masks.n_total(),
        "density": masks.density(),
    }
