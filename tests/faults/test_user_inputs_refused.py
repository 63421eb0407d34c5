"""What a user brings (issue 24), refused before any work when it is wrong: their data files,
their model class and their checkpoint. Each refusal names the problem, and the refused command
leaves nothing behind (no cache entry, no study, no tracking store or run)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from leftovers import assert_nothing_left

from pipeline.__main__ import run_stage

MODELS = '''
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, n_features, n_classes):
        super().__init__()
        self.fc1 = nn.Linear(n_features, 8)
        self.fc2 = nn.Linear(8, n_classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

class Probabilities(Net):
    def forward(self, x):
        return torch.softmax(super().forward(x), 1)

class Normed(Net):
    def __init__(self, n_features, n_classes):
        super().__init__(n_features, n_classes)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        return self.fc2(self.bn(self.fc1(x)))
'''


def _inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)]).assign(label=np.arange(300) % 3)
    table.to_csv(folder / "good.csv", index=False)
    table.assign(label=table["label"] + 1).to_csv(folder / "labels_from_1.csv", index=False)
    nan = table.copy()
    nan.loc[17, "f2"] = np.nan
    nan.to_csv(folder / "nan.csv", index=False)
    table.head(8).to_csv(folder / "tiny.csv", index=False)
    from PIL import Image

    for c, size in (("a", (4, 4)), ("b", (5, 4))):
        (folder / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)).save(folder / "imgs" / c / f"{i}.png")
    (folder / "user_models_f24.py").write_text(textwrap.dedent(MODELS))
    torch.save({"fc1.weight": torch.zeros(8, 5)}, folder / "partial.pt")
    torch.save({"model": {"fc1.weight": torch.zeros(8, 5)}}, folder / "nested.pt")
    return {"dir": folder}


CSV = ["dataset=files", "dataset.format=csv"]
OWN = ["model=custom", "model._target_=user_models_f24.Net", "+model.n_features=5"]


@pytest.mark.parametrize(
    "overrides, words",
    [
        ([*CSV, "dataset.path={d}/missing.csv"], r"dataset=files \(format=csv\): .*missing.csv is missing"),
        ([*CSV, "dataset.path={d}/good.csv", "dataset.label_column=target"],
         r"has no column 'target'; its columns: \['f0', 'f1', 'f2', 'f3', 'f4', 'label'\]"),
        ([*CSV, "dataset.path={d}/labels_from_1.csv"], r"labels must be integers 0..C-1 with every class present, "
                                                        r"but class\(es\) \[0\] of 0..3 have no record"),
        ([*CSV, "dataset.path={d}/nan.csv"], r"1 record\(s\) have NaN or infinite features \(first: record 17\)"),
        (["dataset=files", "dataset.format=image_folder", "dataset.path={d}/imgs"], r"ragged images: .*b/0.png is 5x4"),
        ([*CSV, "dataset.path={d}/tiny.csv"], r"too few records for split 'val': it gets 1 of the pool's 8 records \(fraction 0.15\)"),
        ([*CSV, "dataset.path={d}/good.csv", "model._target_=os.system"],
         r"model._target_='os.system' is a builtin_function_or_method, not a torch.nn.Module subclass"),
        ([*CSV, "dataset.path={d}/good.csv", *OWN[:1], "model._target_=user_models_f24.Probabilities",
          "+model.n_features=5"], r"its output is not its head's output"),
        ([*CSV, "dataset.path={d}/good.csv", *OWN, "compress=dpsgd", "model._target_=user_models_f24.Normed"],
         r"compress=dpsgd cannot train model 'user_models_f24.Normed': Opacus cannot bound .*'bn'"),
        ([*CSV, "dataset.path={d}/good.csv", *OWN, "teacher.checkpoint={d}/none.pt"],
         r"teacher.checkpoint=.*none.pt': no such file"),
        ([*CSV, "dataset.path={d}/good.csv", *OWN, "teacher.checkpoint={d}/partial.pt"],
         r"teacher.checkpoint=.*partial.pt' does not fit model Net: .*Missing key"),
        ([*CSV, "dataset.path={d}/good.csv", *OWN, "teacher.checkpoint={d}/nested.pt"],
         r"holds a dict, not a state_dict of tensors \(it holds the mapping\(s\) \['model'\]"),
    ],
    ids=["missing-file", "missing-column", "labels-not-0..C-1", "nan", "ragged-images", "too-few-records",
         "not-a-class", "softmax-after-head", "dpsgd-batchnorm", "missing-checkpoint", "checkpoint-mismatch",
         "checkpoint-not-a-state-dict"],
)
def test_refused_before_any_work(cfg_factory, tmp_path, monkeypatch, overrides, words):
    d = _inputs(tmp_path / "in")["dir"]
    monkeypatch.syspath_prepend(str(d))
    cfg = cfg_factory("experiment=smoke", "stage=search", "~model.hidden_sizes",
                      *[o.format(d=d) for o in overrides])
    with pytest.raises((ValueError, FileNotFoundError), match=words):
        run_stage(cfg)
    assert_nothing_left(tmp_path)
