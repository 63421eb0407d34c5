"""Models written in the project (no torchvision).

Every model exposes `features(x)` (penultimate activations, shape (n, d)) and
`head` (its last `nn.Linear`), with `forward(x) == head(features(x))`: the
white-box attack reads the gradient of the loss w.r.t. `head.weight`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, cast

import torch
from torch import nn


class FeatureModel(Protocol):
    """What every model here offers (see the module's docstring): `features(x)` and its `head`."""

    @property
    def head(self) -> nn.Module: ...

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def feature_model(model: nn.Module) -> FeatureModel:
    """`model` as a `FeatureModel`; a clear error for a module without `features` and `head`
    (a user's own module goes through `training.model_adapter.AdaptedModel` first)."""
    if not callable(getattr(model, "features", None)) or not isinstance(getattr(model, "head", None), nn.Module):
        raise TypeError(
            f"{type(model).__name__} has no features(x) and head: the white-box signals need both; "
            "wrap a model of your own with training.model_adapter (model.head names its last nn.Linear)"
        )
    return cast(FeatureModel, model)


class MLP(nn.Module):
    """Fully connected net: flatten, [Linear, activation] per hidden size, Linear head.

    The tabular models of Nasr et al. (CCS'18) are MLPs of this form
    (e.g. 600-1024-512-256-128-100 with tanh on Purchase100).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        hidden_sizes: Sequence[int] = (256, 256),
        activation: str = "relu",
    ):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"unknown activation {activation!r}; valid: {sorted(acts)}")
        if any(int(h) < 1 for h in hidden_sizes):
            raise ValueError(f"hidden sizes must be >= 1, got {list(hidden_sizes)}")
        layers: list[nn.Module] = [nn.Flatten()]
        width = int(math.prod(input_shape))
        for h in hidden_sizes:
            layers += [nn.Linear(width, int(h)), acts[activation]()]
            width = int(h)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallCNN(nn.Module):
    """A small CNN for image-shaped inputs (C, H, W): conv blocks, pooling, MLP head.

    `pool="global"` (default): a 2x2 max-pool between blocks, then global average pooling.
    `pool="flatten"`: a 2x2 max-pool after every block, then the flattened map (the classic
    2-conv CNN of Fashion-MNIST's benchmark table, which keeps where a feature is)."""

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden_size: int = 128,
        pool: str = "global",
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"SmallCNN needs image-shaped inputs (C, H, W), got input shape {tuple(input_shape)}; "
                "use model=mlp for flat features"
            )
        if pool not in ("global", "flatten"):
            raise ValueError(f"unknown SmallCNN pool {pool!r}; valid: ['global', 'flatten']")
        blocks: list[nn.Module] = []
        c_in, h, w = (int(s) for s in input_shape)
        for i, c in enumerate(channels):
            blocks += [nn.Conv2d(c_in, int(c), 3, padding=1), nn.ReLU()]
            if i < len(channels) - 1 or pool == "flatten":
                blocks.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            c_in = int(c)
        if pool == "global":
            blocks += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, hidden_size), nn.ReLU()]
        else:
            if h < 1 or w < 1:
                raise ValueError(f"SmallCNN: input {tuple(input_shape)} is too small for {len(channels)} pools")
            blocks += [nn.Flatten(), nn.Linear(c_in * h * w, hidden_size), nn.ReLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden_size, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# VGG configurations: ints are 3x3 conv widths, ("1x1", c) a 1x1 conv, "M" a 2x2 max-pool.
# "C" is Simonyan & Zisserman's configuration C (VGG-16 with 1x1 convs in the last three
# stages), the "vgg-C" of the sparse-training code SafeCompress builds on (SNIP, Sparse
# Momentum, RigL and ITOP re-implementations). "D" is the usual all-3x3 VGG-16.
# fmt: off
VGG_CONFIGS: dict[str, list] = {
    "C": [64, 64, "M", 128, 128, "M", 256, 256, ("1x1", 256), "M",
          512, 512, ("1x1", 512), "M", 512, 512, ("1x1", 512), "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
          512, 512, 512, "M", 512, 512, 512, "M"],
}
# fmt: on


class VGG(nn.Module):
    """VGG-16 for small images with BatchNorm (default `cfg="C"`, the SafeCompress VGG-C).

    Body: [conv, BatchNorm2d, ReLU] per entry of `VGG_CONFIGS[cfg]`, max-pools at "M",
    flatten; then Linear(flat, 512), ReLU, BatchNorm1d, Linear(512, 512), ReLU,
    BatchNorm1d (BatchNorm instead of dropout, FC layers cut to 512), then `head`
    Linear(512, n_classes).

    `pad_1x1=True` (default) reproduces a quirk of the sparse-training code the
    authors used: every conv, the 1x1 ones included, pads by 1, so each 1x1 conv
    grows the map by 2 and a 32x32 input leaves the body at 2x2x512 = 2048 features
    (32>16>8>10>5>7>3>5>2), which is why that code's first FC layer takes 2048
    inputs. About 11.3M parameters for cfg "C" (11.32M with 10 classes, 11.37M with
    100). `pad_1x1=False` gives the textbook layer (512 flat features, about 10.5M).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        cfg: str = "C",
        hidden_size: int = 512,
        pad_1x1: bool = True,
    ):
        super().__init__()
        if cfg not in VGG_CONFIGS:
            raise ValueError(f"unknown VGG cfg {cfg!r}; valid: {sorted(VGG_CONFIGS)}")
        if len(input_shape) != 3:
            raise ValueError(
                f"VGG needs image inputs (C, H, W), got input shape {tuple(input_shape)}"
            )
        c_in, h, w = (int(s) for s in input_shape)
        layers: list[nn.Module] = []
        for entry in VGG_CONFIGS[cfg]:
            if entry == "M":
                if h < 2 or w < 2:
                    raise ValueError(
                        f"VGG cfg {cfg!r}: input {tuple(input_shape)} is too small for its pools"
                    )
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
                continue
            kernel, c_out = (1, entry[1]) if isinstance(entry, tuple) else (3, entry)
            padding = 1 if (kernel == 3 or pad_1x1) else 0
            layers += [
                nn.Conv2d(c_in, c_out, kernel, padding=padding),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            h, w = h + 2 * padding - kernel + 1, w + 2 * padding - kernel + 1
            c_in = c_out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Sequential(
            nn.Linear(c_in * h * w, hidden_size),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden_size),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(inplace=True),
            nn.BatchNorm1d(hidden_size),
        )
        self.head = nn.Linear(hidden_size, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.conv(x))  # (n, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN) shortcut, He et al. 2016."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images: 3x3 stem (no max-pool), BasicBlocks [2, 2, 2, 2].

    Stage widths `width * (1, 2, 4, 8)` with strides (1, 2, 2, 2), global average
    pooling, `head` Linear(8 * width, n_classes). About 11.2M parameters (width 64).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        width: int = 64,
        blocks: Sequence[int] = (2, 2, 2, 2),
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(
                f"ResNet18 needs image inputs (C, H, W), got input shape {tuple(input_shape)}"
            )
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks must be 4 counts >= 1, got {list(blocks)}")
        layers: list[nn.Module] = [
            nn.Conv2d(int(input_shape[0]), width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        c_in = width
        for stage, n_blocks in enumerate(blocks):
            c_out = width * 2**stage
            for i in range(int(n_blocks)):
                layers.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (n, 8 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TextBagOfEmbeddings(nn.Module):
    """Bag of word embeddings for token-id inputs (n, L): mean embedding, Linear+ReLU, head.

    Id 0 is padding and is left out of the mean (an all-padding row gives zeros).
    `vocab_size` must exceed the largest id; `conf/model/text_bag.yaml` takes it from
    `dataset.vocab_size`. The embedding is not a conv/linear weight, so the sparse
    engine leaves it dense; the hidden and head layers are masked.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        n_classes: int,
        vocab_size: int,
        embed_dim: int = 64,
        hidden_size: int = 128,
    ):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(
                f"TextBagOfEmbeddings needs token-id inputs of shape (L,), got {tuple(input_shape)}"
            )
        if int(vocab_size) < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.embedding = nn.EmbeddingBag(self.vocab_size, embed_dim, mode="mean", padding_idx=0)
        self.hidden = nn.Sequential(nn.Linear(embed_dim, hidden_size), nn.ReLU())
        self.head = nn.Linear(hidden_size, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # ids may arrive as floats from generic batching code; they are exact small integers
        ids = x if not x.is_floating_point() else x.round().long()
        return self.hidden(self.embedding(ids))  # (n, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# The model registry: every class a `model=` config may instantiate, by its `_target_`
# (`pipeline.context.build_model` refuses any other).
MODELS: dict[str, type[nn.Module]] = {
    f"{__name__}.{cls.__name__}": cls for cls in (MLP, SmallCNN, VGG, ResNet18, TextBagOfEmbeddings)
}
