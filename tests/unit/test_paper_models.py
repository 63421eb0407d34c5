"""The paper's models: forward shapes, the features/head contract, parameter counts (batch 2, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.context import MODELS
from training.models import MLP, VGG, ResNet18, TextBagOfEmbeddings


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_contract(model: nn.Module, x: torch.Tensor, n_classes: int) -> None:
    model.eval()  # BatchNorm in eval mode: the same output on every call
    with torch.no_grad():
        out = model(x)
        feats = model.features(x)
        assert out.shape == (x.shape[0], n_classes)
        assert feats.dim() == 2 and feats.shape[0] == x.shape[0]
        assert isinstance(model.head, nn.Linear) and model.head.in_features == feats.shape[1]
        assert torch.allclose(model.head(feats), out)


@pytest.mark.parametrize("n_classes", [10, 100])
def test_vgg_c_shapes_and_parameter_count(n_classes):
    torch.manual_seed(0)
    model = VGG([3, 32, 32], n_classes)
    _check_contract(model, torch.randn(2, 3, 32, 32), n_classes)
    # 1x1 convs padded by 1 (as in the sparse-training code): the body ends at 2x2x512
    assert model.classifier[0].in_features == 2048
    assert 11.2e6 < _n_params(model) < 11.5e6
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13  # 13 conv + 3 FC = 16


def test_vgg_variants():
    textbook = VGG([3, 32, 32], 10, pad_1x1=False)
    assert textbook.classifier[0].in_features == 512 and 10.4e6 < _n_params(textbook) < 10.7e6
    d = VGG([3, 32, 32], 10, cfg="D")
    assert 15.1e6 < _n_params(d) < 15.4e6
    with pytest.raises(ValueError, match="valid"):
        VGG([3, 32, 32], 10, cfg="E")
    with pytest.raises(ValueError, match="image inputs"):
        VGG([600], 10)


def test_vgg_trains_a_step_in_train_mode():
    model = VGG([3, 32, 32], 10)
    loss = nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1]))
    loss.backward()
    assert model.head.weight.grad is not None and model.conv[0].weight.grad is not None


@pytest.mark.parametrize("n_classes, expected", [(10, 11_173_962), (100, 11_220_132)])
def test_resnet18_shapes_and_parameter_count(n_classes, expected):
    torch.manual_seed(0)
    model = ResNet18([3, 32, 32], n_classes)
    _check_contract(model, torch.randn(2, 3, 32, 32), n_classes)
    assert model.head.in_features == 512
    assert _n_params(model) == expected  # the usual CIFAR ResNet-18 count (~11.2M)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.body[0].kernel_size == (3, 3) and model.body[0].stride == (1, 1)


def test_text_bag_ignores_padding_and_follows_the_contract():
    torch.manual_seed(0)
    model = TextBagOfEmbeddings([6], 4, vocab_size=50)
    x = torch.tensor([[5, 7, 9, 0, 0, 0], [3, 0, 0, 0, 0, 0]])
    _check_contract(model, x, 4)
    # padding does not change the mean embedding
    assert torch.allclose(model.embedding(x[:1]), model.embedding(torch.tensor([[5, 7, 9]])))
    # float ids (from generic batching) give the same output
    assert torch.allclose(model(x.float()), model(x))
    with pytest.raises(ValueError, match="token-id"):
        TextBagOfEmbeddings([3, 32, 32], 4, vocab_size=50)


def test_nasr_purchase_mlp():
    model = MLP([600], 100, hidden_sizes=[1024, 512, 256, 128], activation="tanh")
    _check_contract(model, torch.rand(2, 600), 100)
    sizes = [600, 1024, 512, 256, 128, 100]
    assert _n_params(model) == sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))


def test_new_models_are_registered_and_composable(cfg_factory):
    for target in ("VGG", "ResNet18", "TextBagOfEmbeddings"):
        assert f"training.models.{target}" in MODELS
    for model, target in (("vgg_c", "VGG"), ("resnet18", "ResNet18"), ("mlp_purchase", "MLP")):
        cfg = cfg_factory(f"model={model}")
        assert cfg.model._target_ == f"training.models.{target}"
    cfg = cfg_factory("model=text_bag", "dataset=ag_news")
    assert cfg.model.vocab_size == cfg.dataset.vocab_size
