"""DP-SGD's two ways of bounding per-example gradients (`compress.dp.grad_sample_mode`).

Ghost clipping must give the step that clipping every example's gradient by hand gives, as
the hooks mode does; a seeded run is reproducible in either mode and the two train the same
model; models Opacus cannot train are refused before any training.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine

import sparse
from pipeline import compress_jobs as from_config
from pipeline.__main__ import run_stage
from pipeline.validation import validate
from training.compress.methods.dpsgd import privatize
from training.models import MLP, SmallCNN

MODELS = {
    "mlp": (lambda: MLP((6,), 3, (5, 4)), (6,)),
    "cnn": (lambda: SmallCNN((1, 6, 6), 3, (2, 3), 4), (1, 6, 6)),
}


def per_example_grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[list[torch.Tensor]]:
    """Each example's gradient of its own loss, one backward per example."""
    out = []
    for i in range(len(y)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append([p.grad.clone() for p in model.parameters()])
    return out


def one_private_step(model: torch.nn.Module, mode: str, x, y, clip: float) -> list[torch.Tensor]:
    """The parameter change of one Opacus step (SGD lr 1, no momentum, no noise) on the batch."""
    model = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus: secure RNG off; backward hooks without input grads
        dp_model, opt, criterion, loader = privatize(
            PrivacyEngine().make_private, mode, module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            data_loader=loader, noise_multiplier=0.0, max_grad_norm=clip, poisson_sampling=False,
        )
        (xb, yb), = list(loader)
        opt.zero_grad()
        criterion(dp_model(xb), yb).backward()
        opt.step()
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


@pytest.mark.parametrize("name", list(MODELS))
def test_ghost_and_hooks_take_the_step_of_gradients_clipped_by_hand(name):
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make()
    x, y = torch.randn(8, *shape) * 3, torch.randint(0, 3, (8,))
    grads = per_example_grads(model, x, y)
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in gs)) for gs in grads])
    clip = float(norms.median())  # half the examples are clipped, half are not
    assert (norms > clip * 1.01).sum() >= 3 and (norms < clip * 0.99).sum() >= 3
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    # loss_reduction "mean": the clipped sum over the expected batch size, here the batch's 8
    expected = [-sum(f * gs[j] for f, gs in zip(factors, grads)) / len(y) for j in range(len(grads[0]))]
    unclipped = [-sum(gs[j] for gs in grads) / len(y) for j in range(len(grads[0]))]
    for mode in ("hooks", "ghost"):
        step = one_private_step(model, mode, x, y, clip)
        for s, e in zip(step, expected):
            torch.testing.assert_close(s, e, rtol=1e-5, atol=1e-6)
        # a step that ignored the clipping would be told apart
        assert any(not torch.allclose(s, u, rtol=1e-3, atol=1e-5) for s, u in zip(step, unclipped))


def _weights(result) -> dict[str, torch.Tensor]:
    model = MLP((20,), 4, (32,))  # experiment=smoke: 20 features, 4 classes, one hidden layer of 32
    sparse.load_export(result.export_path, model)
    return model.state_dict()


@pytest.mark.smoke
def test_seeded_dpsgd_is_reproducible_and_both_modes_train_the_same_model(cfg_factory, tmp_path):
    args = ("experiment=smoke", "stage=compress", "compress=dpsgd", "compress.dp.epsilon=50",
            "compress.dp.max_grad_norm=0.5", "tracking.enabled=false")
    runs = {}
    for name, mode, root in (("ghost", "ghost", "a"), ("ghost again", "ghost", "b"), ("hooks", "hooks", "c")):
        cfg = cfg_factory(*args, f"compress.dp.grad_sample_mode={mode}", root=tmp_path / root)
        result = run_stage(cfg)
        assert not result.cache_hit
        runs[name] = (result, _weights(result))
    ghost, again, hooks = runs["ghost"], runs["ghost again"], runs["hooks"]
    assert ghost[0].export_path.read_bytes() == again[0].export_path.read_bytes()
    assert ghost[0].metrics == again[0].metrics
    for k, w in ghost[1].items():  # same batches and noise: only float rounding differs
        torch.testing.assert_close(w, hooks[1][k], rtol=1e-4, atol=1e-5)
    assert ghost[0].metrics["test_accuracy"] == hooks[0].metrics["test_accuracy"]


def test_grad_sample_mode_keys_only_dpsgd_models_trained_with_ghost(cfg_factory):
    def spec(*overrides):
        return from_config.spec(cfg_factory("experiment=smoke", *overrides))["compress"]["dp"]

    # left out where it reproduces models cached before it existed (same keys as then)
    assert "grad_sample_mode" not in spec("compress=dpsgd", "compress.dp.grad_sample_mode=hooks")
    assert "grad_sample_mode" not in spec("compress=dst")
    assert spec("compress=dpsgd")["grad_sample_mode"] == "ghost"  # the default
    assert spec("compress=dst", "compress.dp.grad_sample_mode=hooks")["grad_sample_mode"] == "hooks"


def test_bad_mode_and_models_dpsgd_cannot_train_are_refused_up_front(cfg_factory):
    with pytest.raises(ValueError, match=r"compress.dp.grad_sample_mode 'fast'; valid: \['hooks', 'ghost'\]"):
        validate(cfg_factory("experiment=smoke", "compress=dpsgd", "compress.dp.grad_sample_mode=fast"))
    for model, why in (("vgg_c", "BatchNorm"), ("resnet18", "BatchNorm"), ("text_bag", "EmbeddingBag")):
        with pytest.raises(ValueError, match=rf"compress=dpsgd cannot train model .*{why}.*models it trains: "
                                             r"\['training.models.MLP', 'training.models.SmallCNN'\]"):
            validate(cfg_factory("experiment=smoke", "compress=dpsgd", f"model={model}"))
    validate(cfg_factory("experiment=smoke", "compress=dpsgd", "model=mlp"))
    validate(cfg_factory("experiment=smoke", "compress=dst", "model=vgg_c"))  # other methods: any model
