"""The compress loop's pieces: batched probes equal sequential ones, sparse-aware init, NaN handling."""

import copy

import pytest
import torch

import sparse
from pipeline.config import TrainConfig
from training.batched import CSR_DENSITY
from training.compress import rescale_to_sparse_fan_in
from training.compress.candidates import CandidatePool
from training.compress.steps import Losses, masked_step
from training.loops import NonFiniteLossError, TrainState, make_optimizer
from training.models import MLP


def _state(seed, recipe, density=0.3, activation="relu"):
    torch.manual_seed(seed)
    model = MLP((10,), 4, (16, 12), activation=activation)
    masks = sparse.random_masks(model, density, "erk", torch.Generator().manual_seed(seed))
    masks.apply(model)
    return TrainState(model, make_optimizer(model.parameters(), recipe), masks)


@pytest.mark.parametrize(
    "density,activation",
    # 0.3: every layer denser than CSR_DENSITY (grouped dense step); 0.05: the sparse probe
    [(0.3, "relu"), (0.05, "relu"), (0.05, "tanh"), (0.05, "gelu")],
)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_grouped_probe_equals_sequential_probe(optimizer, density, activation):
    recipe = TrainConfig(epochs=1, batch_size=8, optimizer=optimizer, lr=0.05, weight_decay=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 10, generator=g), torch.randint(0, 4, (40,), generator=g)
    base = _state(0, recipe, density, activation)
    layer_densities = [float(m.float().mean()) for m in base.masks.masks.values()]
    assert (min(layer_densities) < CSR_DENSITY) == (density < 0.1)
    masked_step(base, x[:8], y[:8], Losses())  # creates optimizer state (momentum / Adam moments)
    pool = CandidatePool(base, 3, recipe, batched=True)  # the live path: forked, updated, probed in place
    cands = pool.fork(base)
    for i, c in enumerate(cands):
        sparse.prune_and_grow(c.model, c.masks, 0.3, "magnitude", "random", generator=torch.Generator().manual_seed(i),
                              optimizer=c.optimizer)
    seq = [c.fork(recipe) for c in cands]
    batches = [torch.arange(8 * j, 8 * j + 8) for j in range(1, 4)]
    for c in seq:
        for idx in batches:
            for group in c.optimizer.param_groups:
                group["lr"] = recipe.lr
            masked_step(c, x[idx], y[idx], Losses())
    ok = pool.grouped.probe(batches, x, y, recipe, step=0, total=10**9)
    assert ok == [True, True, True]
    for a, b in zip(seq, cands):
        for (name, pa), (_, pb) in zip(a.model.named_parameters(), b.model.named_parameters()):
            assert torch.allclose(pa, pb, atol=1e-5), name
        assert a.masks.n_active() == b.masks.n_active()
        # masked weights stay zero, and so does their optimizer state
        params = dict(b.model.named_parameters())
        for name, m in b.masks.masks.items():
            assert (params[name][~m] == 0).all()
            for v in b.optimizer.state[params[name]].values():
                if torch.is_tensor(v) and v.shape == m.shape:
                    assert (v[~m] == 0).all()


def _assert_same_state(a, b, atol=1e-5):
    pa, pb = dict(a.model.named_parameters()), dict(b.model.named_parameters())
    for name in pa:
        assert torch.allclose(pa[name], pb[name], atol=atol), name
        sa, sb = a.optimizer.state.get(pa[name], {}), b.optimizer.state.get(pb[name], {})
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.allclose(torch.as_tensor(sa[key]), torch.as_tensor(sb[key]), atol=atol), (name, key)
    for name in a.masks.masks:
        assert torch.equal(a.masks.masks[name], b.masks.masks[name])
        assert torch.equal(a.masks.fired[name], b.masks.fired[name])


@pytest.mark.parametrize("density", [0.3, 0.05])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_candidate_pool_forks_like_deep_copies_update_after_update(optimizer, batched, density):
    """The pool's candidates are overwritten in place each update; they must behave like fresh copies."""
    recipe = TrainConfig(epochs=1, batch_size=8, optimizer=optimizer, lr=0.05, weight_decay=1e-3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 10, generator=g), torch.randint(0, 4, (64,), generator=g)
    base = _state(0, recipe, density)
    masked_step(base, x[:8], y[:8], Losses())
    pool = CandidatePool(base, 3, recipe, batched=batched)
    assert (pool.grouped is not None) == batched
    for update in range(3):  # later forks overwrite the earlier candidates and their probes
        copies = [base.fork(recipe) for _ in range(3)]
        cands = pool.fork(base)
        for cand, ref in zip(cands, copies):
            _assert_same_state(cand, ref, atol=0)
        for i, (cand, ref) in enumerate(zip(cands, copies)):
            for st in (cand, ref):
                sparse.prune_and_grow(st.model, st.masks, 0.3, "magnitude", "random",
                                      generator=torch.Generator().manual_seed(10 * update + i), optimizer=st.optimizer)
            _assert_same_state(cand, ref, atol=0)
        batches = [torch.arange(8 * j, 8 * j + 8) for j in range(1, 4)]
        for ref in copies:
            for idx in batches:
                masked_step(ref, x[idx], y[idx], Losses())
        if batched:
            assert pool.grouped.probe(batches, x, y, recipe, step=0, total=10**9) == [True] * 3
        else:
            for cand in cands:
                for idx in batches:
                    masked_step(cand, x[idx], y[idx], Losses())
        for cand, ref in zip(cands, copies):
            _assert_same_state(cand, ref)
        winner = update % 3
        base.copy_from(cands[winner])
        _assert_same_state(base, copies[winner])
        masked_step(base, x[:8], y[:8], Losses())


def test_sparse_fan_in_rescaling_restores_activation_scale():
    torch.manual_seed(0)
    dense = MLP((256,), 10, (256, 256))
    sparse_model = copy.deepcopy(dense)
    masks = sparse.random_masks(sparse_model, 0.05, "uniform", torch.Generator().manual_seed(0))
    masks.apply(sparse_model)
    x = torch.randn(512, 256)
    before = sparse_model.features(x).std().item()
    rescale_to_sparse_fan_in(sparse_model, masks)
    after = sparse_model.features(x).std().item()
    target = dense.features(x).std().item()
    assert before < 0.3 * target  # unscaled: activations collapse
    assert 0.5 * target < after < 2.0 * target


def test_non_finite_loss_raises_a_clear_error():
    recipe = TrainConfig(epochs=1, batch_size=8, lr=0.05)
    st = _state(0, recipe)
    x = torch.full((8, 10), float("nan"))
    with pytest.raises(NonFiniteLossError, match="lower train.lr"):
        masked_step(st, x, torch.zeros(8, dtype=torch.long), Losses())
