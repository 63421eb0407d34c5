"""prune_and_grow and resize: exact counts, disjoint drop/grow, criteria, state reset, bad inputs."""

from __future__ import annotations

import copy

import pytest
import torch
from sparse_testing import linear_stack
from torch import nn

from sparse import (
    GROW_CRITERIA,
    PRUNE_CRITERIA,
    GradientMomentum,
    MaskSet,
    layer_target_counts,
    prune_and_grow,
    prune_and_grow_many,
    random_masks,
    resize,
)

DENSITIES = [0.01, 0.05, 0.2, 0.5]


def mlp(sizes=(20, 64, 48, 6)) -> nn.Sequential:
    return linear_stack(sizes)


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    )


def setup(model_fn=mlp, density=0.1, seed=0):
    torch.manual_seed(seed)
    model = model_fn()
    masks = random_masks(model, density, "erk", torch.Generator().manual_seed(seed))
    masks.apply(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, masks, opt


def step(model, masks, opt, x, y):
    """One masked SGD step; returns the dense gradients (taken before masking)."""
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    params = dict(model.named_parameters())
    grads = {n: params[n].grad.detach().clone() for n in masks.masks}
    masks.apply_to_grads(model)
    opt.step()
    masks.apply(model)
    masks.apply_to_optimizer(opt, model)
    return grads


def data(model_fn):
    g = torch.Generator().manual_seed(9)
    x = (
        torch.randn(16, 3, 8, 8, generator=g)
        if model_fn is cnn
        else torch.randn(16, 20, generator=g)
    )
    return x, torch.randint(0, 5, (16,), generator=g)


@pytest.mark.parametrize(
    "model_fn,density",
    [(mlp, d) for d in DENSITIES] + [(cnn, 0.1)],
    ids=[f"mlp-{d}" for d in DENSITIES] + ["cnn-0.1"],
)
@pytest.mark.parametrize("prune", PRUNE_CRITERIA)
@pytest.mark.parametrize("grow", GROW_CRITERIA)
def test_exact_counts_and_disjoint_drop_grow_every_update(model_fn, density, prune, grow):
    model, masks, opt = setup(model_fn, density)
    x, y = data(model_fn)
    n0 = masks.n_active()
    assert n0 == round(density * masks.n_total())
    layer0 = masks.layer_n_active()
    g = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    for frac in [0.5, 0.3, 0.1]:
        grads = step(model, masks, opt, x, y)
        old = {k: m.clone() for k, m in masks.masks.items()}
        stats = prune_and_grow(model, masks, frac, prune, grow, g, grads=grads, optimizer=opt)
        assert masks.n_active() == n0 and masks.layer_n_active() == layer0
        total = 0
        for k, m in masks.masks.items():
            n_drop = min(round(frac * layer0[k]), m.numel() - layer0[k])
            dropped, grown = old[k] & ~m, m & ~old[k]
            # a weight dropped and regrown in the same update would show up in neither set
            assert (
                int(dropped.sum())
                == n_drop
                == int(grown.sum())
                == stats["per_layer"][k]["n_dropped"]
            )
            assert torch.all(params[k][grown] == 0) and torch.all(params[k][~m] == 0)
            assert torch.all(opt.state[params[k]]["momentum_buffer"][grown | ~m] == 0)
            total += n_drop
        assert stats["n_dropped"] == stats["n_grown"] == total > 0


def test_magnitude_prune_drops_the_smallest_and_gradient_growth_picks_largest_grad():
    model, masks, _ = setup(density=0.2)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    grads = {k: torch.randn(p.shape, generator=g) for k, p in params.items() if k in masks.masks}
    old = {k: m.clone() for k, m in masks.masks.items()}
    w_old = {k: params[k].detach().clone() for k in masks.masks}
    prune_and_grow(
        model, masks, 0.25, "magnitude", "gradient", torch.Generator().manual_seed(5), grads=grads
    )
    for k, m in masks.masks.items():
        n = round(0.25 * int(old[k].sum()))
        dropped, grown = old[k] & ~m, m & ~old[k]
        active_abs = w_old[k].abs()[old[k]]
        assert torch.equal(
            torch.sort(w_old[k].abs()[dropped]).values, torch.sort(active_abs).values[:n]
        )
        inactive_g = grads[k].abs()[~old[k]]
        assert torch.equal(
            torch.sort(grads[k].abs()[grown], descending=True).values,
            torch.sort(inactive_g, descending=True).values[:n],
        )


def test_taylor_prune_drops_smallest_w_times_g():
    model, masks, _ = setup(density=0.3)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(0)
    grads = {k: torch.randn(params[k].shape, generator=g) for k in masks.masks}
    old = {k: m.clone() for k, m in masks.masks.items()}
    score = {k: (params[k].detach() * grads[k]).abs() for k in masks.masks}
    prune_and_grow(
        model, masks, 0.2, "taylor", "random", torch.Generator().manual_seed(0), grads=grads
    )
    n_checked = 0
    for k, m in masks.masks.items():
        dropped = old[k] & ~m
        if dropped.any():  # a dense ERK layer drops nothing
            assert score[k][dropped].max() <= score[k][old[k] & m].min()
            n_checked += 1
    assert n_checked >= 2


def test_set_prune_takes_the_same_fraction_from_each_sign():
    w = torch.tensor([-3.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    model = nn.Linear(24, 1, bias=False)  # 12 active, 12 inactive to regrow into
    with torch.no_grad():
        model.weight.zero_()
        model.weight[0, :12] = w
    m = torch.zeros(1, 24, dtype=torch.bool)
    m[0, :12] = True
    masks = MaskSet({"weight": m})
    prune_and_grow(model, masks, 0.5, "set", "random", torch.Generator().manual_seed(0))
    dropped = m & ~masks.masks["weight"]
    # 6 of 12 dropped: half the 4 negatives closest to 0 (-1, -0.5), half the 8 positives (0.5..3);
    # plain magnitude would drop -1, -0.5, 0.5, 1, -2, 2 instead
    assert sorted(w[dropped[0, :12]].tolist()) == [-1.0, -0.5, 0.5, 1.0, 2.0, 3.0]


def test_momentum_growth_picks_largest_momentum_and_needs_one():
    model, masks, _ = setup(density=0.2)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(3)
    ema = GradientMomentum(beta=0.9)
    for _ in range(2):
        ema.update({k: torch.randn(params[k].shape, generator=g) for k in masks.masks})
    old = {k: m.clone() for k, m in masks.masks.items()}
    prune_and_grow(
        model, masks, 0.3, "magnitude", "momentum", torch.Generator(), momenta=ema.momenta
    )
    for k, m in masks.masks.items():
        grown = m & ~old[k]
        mom = ema.momenta[k].abs()
        assert mom[grown].min() >= mom[~old[k] & ~grown].max()
    with pytest.raises(ValueError, match="needs momentum"):
        prune_and_grow(model, masks, 0.3, "magnitude", "momentum", torch.Generator())


def test_unfired_grows_never_active_weights_first_and_fired_is_updated():
    model, masks, _ = setup(density=0.1)
    fired = {k: m.clone() for k, m in masks.masks.items()}
    # mark most inactive positions as already fired, leaving a known unfired pool
    g = torch.Generator().manual_seed(0)
    pools = {}
    for k, f in fired.items():
        inactive = (~f).reshape(-1).nonzero().squeeze(1)
        keep_unfired = inactive[
            torch.randperm(inactive.numel(), generator=g)[: inactive.numel() // 2]
        ]
        f.fill_(True)
        f.view(-1)[keep_unfired] = False
        pools[k] = ~f.clone()
    old = {k: m.clone() for k, m in masks.masks.items()}
    prune_and_grow(
        model, masks, 0.5, "magnitude", "unfired", torch.Generator().manual_seed(1), fired=fired
    )
    for k, m in masks.masks.items():
        grown = m & ~old[k]
        assert grown.any() and torch.all(pools[k][grown])  # only from the unfired pool
        assert torch.all(fired[k][m])  # updated in place
        assert torch.all(masks.fired[k][m]) and torch.all(masks.fired[k][old[k]])


def test_ties_are_broken_by_the_generator_reproducibly():
    model = nn.Linear(40, 10, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)  # every magnitude equal
    base = torch.zeros(10, 40, dtype=torch.bool)
    base[:, :20] = True

    def run(seed):
        masks = MaskSet({"weight": base})
        prune_and_grow(
            model, masks, 0.25, "magnitude", "random", torch.Generator().manual_seed(seed)
        )
        with torch.no_grad():
            model.weight.fill_(1.0)
        return masks.masks["weight"]

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    assert int(run(3).sum()) == 200


@pytest.mark.parametrize("n_scores,k", [(400, 3), (400, 200), (5000, 40), (5000, 4000)])
@pytest.mark.parametrize("lowest", [True, False])
@pytest.mark.parametrize("few", [True, False])
def test_select_equals_a_stable_sort_of_the_shuffled_scores(n_scores, k, lowest, few):
    """Both paths (top-k for small k, kthvalue otherwise) pick the set the docstring promises,
    with many ties straddling the k-th place, and leave the generator where the permutation does."""
    from sparse.update import _select

    g = torch.Generator().manual_seed(5)
    scores = torch.randint(0, 7, (n_scores,), generator=g).float()  # heavy ties
    cand = torch.rand(n_scores, generator=g) < (0.3 if few else 0.9)
    k = min(k, int(cand.sum()))
    got = _select(scores, cand, k, torch.Generator().manual_seed(11), lowest, "layer")
    ref_g = torch.Generator().manual_seed(11)
    where = cand.nonzero().squeeze(1)
    shuffled = where[torch.randperm(len(where), generator=ref_g)]
    s = scores[shuffled]
    order = torch.sort(s if lowest else -s, stable=True).indices
    assert set(got.tolist()) == set(shuffled[order[:k]].tolist())
    assert len(got) == k


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_prune_and_grow_many_equals_one_candidate_at_a_time(optimizer):
    """Shared prune rankings give exactly the masks, weights and state of sequential calls,
    also with ties in the prune scores (zeroed active weights) and mixed criteria."""
    model, masks, _ = setup(mlp, 0.2)
    with torch.no_grad():  # a third of the active weights exactly 0: ties straddle the k-th place
        for name, p in model.named_parameters():
            if name in masks.masks:
                p[
                    masks.masks[name]
                    & (torch.rand(p.shape, generator=torch.Generator().manual_seed(3)) < 0.3)
                ] = 0
    x, y = data(mlp)
    make = {
        "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        "adam": lambda ps: torch.optim.Adam(ps),
    }
    base_opt = make[optimizer](model.parameters())
    grads = step(model, masks, base_opt, x, y)
    criteria = [
        ("magnitude", "random"),
        ("magnitude", "random"),
        ("set", "gradient"),
        ("magnitude", "unfired"),
        ("taylor", "momentum"),
        ("set", "random"),
    ]

    def fork():
        out = []
        for _ in criteria:
            m = copy.deepcopy(model)
            opt = make[optimizer](m.parameters())
            opt.load_state_dict(copy.deepcopy(base_opt.state_dict()))
            ms = masks.clone()
            out.append((m, ms, opt))
        return out

    seq, many = fork(), fork()
    seq_stats = [
        prune_and_grow(
            m, ms, 0.3, p, gr, torch.Generator().manual_seed(i), grads=grads, optimizer=opt
        )
        for i, ((m, ms, opt), (p, gr)) in enumerate(zip(seq, criteria))
    ]
    many_stats = prune_and_grow_many(
        [m for m, _, _ in many],
        [ms for _, ms, _ in many],
        0.3,
        criteria,
        [torch.Generator().manual_seed(i) for i in range(len(criteria))],
        grads=grads,
        optimizers=[opt for _, _, opt in many],
    )
    assert many_stats == seq_stats
    assert not torch.equal(seq[0][1].masks["0.weight"], seq[1][1].masks["0.weight"])  # own seeds
    for (m1, ms1, o1), (m2, ms2, o2) in zip(seq, many):
        for n in ms1.masks:
            assert torch.equal(ms1.masks[n], ms2.masks[n]) and torch.equal(
                ms1.fired[n], ms2.fired[n]
            )
        for p1, p2 in zip(m1.parameters(), m2.parameters()):
            assert torch.equal(p1, p2)
            for key, v in o1.state[p1].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(o2.state[p2][key]))


def test_prune_and_grow_many_checks_its_lists():
    model, masks, opt = setup()
    with pytest.raises(ValueError, match="one masks, criteria pair, generator"):
        prune_and_grow_many(
            [model], [masks], 0.3, [("magnitude", "random")] * 2, [torch.Generator()]
        )


def test_fully_dense_layer_swaps_nothing():
    model = mlp()
    masks = MaskSet.ones(model)
    stats = prune_and_grow(model, masks, 0.3)
    assert stats["n_dropped"] == 0 and masks.density() == 1.0


@pytest.mark.parametrize("distribution", ["erk", "uniform"])
@pytest.mark.parametrize("path", [(0.5, 0.1, 0.01), (0.05, 0.3, 0.5), (1.0, 0.05)])
def test_resize_hits_exact_global_and_layer_counts(distribution, path):
    model, masks, opt = setup(density=path[0] if path[0] < 1 else 0.5)
    if path[0] == 1.0:
        masks = MaskSet.ones(model)
    x, y = data(mlp)
    params = dict(model.named_parameters())
    for d in path[1:]:
        step(model, masks, opt, x, y)
        old = {k: m.clone() for k, m in masks.masks.items()}
        resize(
            model, masks, d, distribution=distribution, generator=torch.Generator(), optimizer=opt
        )
        assert masks.n_active() == round(d * masks.n_total())
        assert masks.layer_n_active() == layer_target_counts(masks.shapes(), d, distribution)
        for k, m in masks.masks.items():
            grown = m & ~old[k]
            assert torch.all(params[k][grown | ~m] == 0)
            assert torch.all(opt.state[params[k]]["momentum_buffer"][grown | ~m] == 0)


def test_gradual_magnitude_pruning_from_dense_keeps_largest_per_layer():
    torch.manual_seed(0)
    model = mlp()
    masks = MaskSet.ones(model)
    params = dict(model.named_parameters())
    w = {k: params[k].detach().clone() for k in masks.masks}
    resize(model, masks, 0.2, "magnitude", distribution="uniform")
    for k, m in masks.masks.items():
        assert w[k].abs()[m].min() >= w[k].abs()[~m].max()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"drop_fraction": 1.0}, r"\[0, 1\)"),
        ({"drop_fraction": -0.1}, r"\[0, 1\)"),
        ({"prune": "l1"}, r"unknown prune criterion 'l1'.*'magnitude', 'set', 'taylor'"),
        (
            {"grow": "best"},
            r"unknown grow criterion 'best'.*'random', 'gradient', 'momentum', 'unfired'",
        ),
        ({"grow": "gradient"}, "needs grads"),
        ({"prune": "taylor"}, "needs grads"),
        (
            {"grow": "gradient", "grads": {"0.weight": torch.zeros(64, 20)}},
            "needs grads for layer '2.weight'",
        ),
        ({"grow": "momentum"}, "needs momentum"),
        ({"generator": 3}, "torch.Generator"),
    ],
)
def test_prune_and_grow_bad_inputs_raise_before_changing_anything(kwargs, match):
    model, masks, _ = setup()
    before = masks.clone()
    args = {"drop_fraction": 0.3, **kwargs}
    with pytest.raises(ValueError, match=match):
        prune_and_grow(model, masks, **args)
    assert all(torch.equal(before.masks[k], masks.masks[k]) for k in masks.masks)


def test_grads_of_wrong_shape_raise():
    model, masks, _ = setup()
    grads = {k: torch.zeros(3) for k in masks.masks}
    with pytest.raises(ValueError, match=r"grads for layer '0.weight' has shape \(3,\)"):
        prune_and_grow(model, masks, 0.3, grow="gradient", grads=grads)


def test_resize_bad_inputs():
    model, masks, _ = setup()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        resize(model, masks, 0.0)
    with pytest.raises(ValueError, match="unknown distribution"):
        resize(model, masks, 0.2, distribution="normal")
    with pytest.raises(ValueError, match="needs grads"):
        resize(model, masks, 0.05, prune="taylor")


def test_library_never_touches_the_global_rng():
    model = mlp()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    masks = random_masks(model, 0.1, "erk", torch.Generator().manual_seed(0))
    prune_and_grow(model, masks, 0.3, "set", "unfired", torch.Generator().manual_seed(1))
    prune_and_grow(model, masks, 0.3, "magnitude", "random")  # generator=None: fixed seed 0
    resize(model, masks, 0.3, grow="random")
    assert torch.equal(torch.get_rng_state(), before)


def test_a_score_without_its_input_names_the_criterion_what_it_needs_and_the_layer():
    # prune_and_grow checks its inputs first; the scores themselves guard direct callers too
    from sparse import grow_scores
    from sparse.scores import LayerInputs

    w = torch.ones(3, 4)
    li = LayerInputs("fc.weight", w, w > 0, torch.Generator().manual_seed(0))
    with pytest.raises(
        ValueError,
        match=r"^criterion 'gradient' needs dense gradients \(grads=\{name: grad\}, taken before masking\) "
        r"for layer 'fc\.weight', none was given$",
    ):
        grow_scores("gradient", li)


def test_shrinking_needs_no_grow_scores():
    # every layer only drops when the density falls: a gradient grow criterion needs no gradients
    model, masks, _ = setup(density=0.2)
    resize(model, masks, 0.1, prune="magnitude", grow="gradient")
    assert masks.n_active() == round(0.1 * masks.n_total())


def test_a_missing_fired_record_is_named_with_its_remedy():
    model, masks, _ = setup()
    with pytest.raises(ValueError, match=r"needs fired for layer '0\.weight': pass fired=\{name: bool tensor\}$"):
        prune_and_grow(model, masks, 0.3, grow="unfired", fired={})
