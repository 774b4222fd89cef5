"""SET/RigL policies of NMMask: drop/regrow against brute force; training keeps counts and patterns."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

import nmsparse as nms
from nmsparse.errors import ArgumentError
from nmsparse.nn import attach_mask_, drop_and_regrow, drop_fraction_schedule, set_update_, sparsified_parameters, track_optimizers
from nmsparse.examples import load_digits_split, small_cnn, steps_per_epoch, train
from nmsparse.sift import transform


def masked_layers(model):
    for name, (module, pname) in sparsified_parameters(model).items():
        yield name, module.parametrizations[pname][0], module.parametrizations[pname].original


def test_unstructured_drop_and_regrow_by_hand():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 7, generator=g)
    mask = torch.rand(6, 7, generator=g) < 0.5
    grow = torch.rand(6, 7, generator=g)
    n_drop = 5
    new, kept = drop_and_regrow(w, mask, n_drop, grow)
    # Oracle in numpy: drop the n smallest |w| among active, grow the n best never-active.
    wa, ma, ga = w.abs().numpy().ravel(), mask.numpy().ravel(), grow.numpy().ravel()
    active = np.flatnonzero(ma)
    dropped = set(active[np.argsort(wa[active], kind="stable")[:n_drop]])
    inactive = np.flatnonzero(~ma)
    grown = set(inactive[np.argsort(-ga[inactive], kind="stable")[:n_drop]])
    expect = (set(active) - dropped) | grown
    assert set(np.flatnonzero(new.numpy().ravel())) == expect
    assert set(np.flatnonzero(kept.numpy().ravel())) == set(active) - dropped
    assert int(new.sum()) == int(mask.sum())


def test_just_dropped_regrow_only_when_needed():
    # One 2:4 group with 2 active; dropping both leaves 2 never-active candidates, which regrow.
    w = torch.tensor([[1.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False, False]])
    new, _ = drop_and_regrow(w, mask, 2, torch.tensor([[9.0, 9.0, 0.1, 0.2]]), "2:4")
    assert new.tolist() == [[False, False, True, True]]
    # 3:4 with 3 active: dropping 2 must regrow one just-dropped entry (only one other slot).
    mask = torch.tensor([[True, True, True, False]])
    w = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    new, kept = drop_and_regrow(w, mask, 2, torch.tensor([[0.5, 0.1, 0.0, 0.0]]), "3:4")
    assert kept.tolist() == [[False, False, True, False]]
    assert new.tolist() == [[True, False, True, True]]


@settings(max_examples=40, deadline=None)
@given(
    pattern=st.sampled_from(["2:4", "1:4", "3:4", "4:8", "2:4T", "1:4T", "4:8T"]),
    tiles=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    frac=st.floats(0, 1),
    seed=st.integers(0, 2**16),
)
def test_regrow_keeps_pattern_and_exact_count(pattern, tiles, frac, seed):
    p = nms.NMPattern.parse(pattern)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(tiles[0] * p.m, tiles[1] * p.m, generator=g)
    mask = nms.find_mask(torch.rand(w.shape, generator=g), pattern)
    n_drop = int(frac * int(mask.sum()))
    new, kept = drop_and_regrow(w, mask, n_drop, torch.rand(w.shape, generator=g), pattern)
    nms.check_mask(new, pattern, exact=True)
    assert int(new.sum()) == int(mask.sum())
    assert not (kept & ~new).any() and int((mask & ~kept).sum()) == n_drop


def _all_2_4t_tiles():
    rows = [c for c in itertools.combinations(range(4), 2)]
    for choice in itertools.product(rows, repeat=4):
        m = np.zeros((4, 4), bool)
        for r, cols in enumerate(choice):
            m[r, list(cols)] = True
        if (m.sum(0) == 2).all():
            yield m


def test_transposable_regrow_is_the_best_completion():
    # Brute force over all 90 2:4T tiles: the regrown mask holds every kept weight and, among
    # such masks, maximises the grow-score rank of never-active entries.
    tiles = list(_all_2_4t_tiles())
    assert len(tiles) == 90
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(4, 4, generator=g)
        mask = torch.from_numpy(tiles[seed * 4])
        grow = torch.rand(4, 4, generator=g)
        new, kept = drop_and_regrow(w, mask, 3, grow, "2:4T")
        k, m, gn = kept.numpy(), mask.numpy(), (grow / grow.max()).double().numpy()
        value = np.where(m, gn, 2 + gn)
        best = max(float(value[t & ~k].sum()) for t in tiles if (t | ~k).all())
        assert float(value[new.numpy() & ~k].sum()) == pytest.approx(best)


def test_schedule_is_cosine_from_drop_fraction():
    assert drop_fraction_schedule(0, 1000) == pytest.approx(0.3)
    assert drop_fraction_schedule(375, 1000) == pytest.approx(0.15)
    assert drop_fraction_schedule(250, 1000) == pytest.approx(0.15 * (1 + math.cos(math.pi / 3)))
    assert drop_fraction_schedule(750, 1000) == 0.0 and drop_fraction_schedule(900, 1000) == 0.0


def test_rigl_captures_the_dense_gradient():
    layer = nn.Linear(3, 2, bias=False)
    nm = attach_mask_(layer, "weight", torch.tensor([[True, False, False], [False, True, False]]), 1 / 3)
    nm.capture_dense_grad = True
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    layer(x).sum().backward()
    # d sum(x W^T) / dW_eff[o, i] = sum_b x[b, i] at every position, pruned ones included.
    assert torch.equal(nm.dense_grad, torch.tensor([[5.0, 7.0, 9.0]] * 2))
    grad = layer.parametrizations.weight.original.grad
    assert torch.equal(grad, torch.tensor([[5.0, 0.0, 0.0], [0.0, 7.0, 0.0]]))  # masked gradient


@pytest.fixture(scope="module")
def data():
    from nmsparse.examples import DigitsData

    full = load_digits_split(0)
    # 320 training images (5 steps per epoch) keep these end-to-end checks fast.
    return DigitsData(full.x_train[:320], full.y_train[:320], full.x_test[:64], full.y_test[:64])


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("method, pattern", [("set", None), ("rigl", None), ("rigl", "2:4"), ("set", "4:8T")])
def test_training_keeps_counts_patterns_and_zero_state(data, method, pattern):
    model = transform(small_cnn(width=4), "wide", 0.5, pattern=pattern, input_shape=(1, 1, 8, 8))
    steps = 3 * steps_per_epoch(data)
    set_update_(model, method, total_steps=steps, update_every=2)
    before = {n: nm.mask.clone() for n, nm, _ in masked_layers(model)}
    with track_optimizers(model):
        train(model, data, epochs=3)
    changed = False
    regrown = {}
    for name, nm, dense in masked_layers(model):
        assert [h["step"] for h in nm.history] == [t for t in range(2, steps, 2) if t < 0.75 * steps]
        for h in nm.history:
            regrown[h["step"]] = regrown.get(h["step"], 0) + h["regrown"]
        assert int(nm.mask.sum()) == int(before[name].sum())
        changed |= not torch.equal(nm.mask, before[name])
        if pattern:
            nms.check_mask(nm.mask, pattern, exact=True)
        pruned = dense[~nm.mask]
        assert torch.equal(pruned, torch.zeros_like(pruned)) and not torch.signbit(pruned).any()
    assert changed and all(v > 0 for v in regrown.values())


def test_regrown_weights_and_optimizer_state_start_at_zero(data):
    model = transform(small_cnn(width=4), "doped", 0.75)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    set_update_(model, "rigl", total_steps=100, update_every=1, optimizer=opt)
    for step in (1, 2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x_train[:32]), data.y_train[:32]).backward()
        opt.step()
    old = {n: nm.mask.clone() for n, nm, _ in masked_layers(model)}
    model(data.x_train[:32])  # the update after step 2 runs at the start of pass 3
    for name, nm, dense in masked_layers(model):
        grown = nm.mask & ~old[name]
        assert grown.any() and not dense[grown].any()
        assert not opt.state[dense]["momentum_buffer"][grown].any()
    static = transform(small_cnn(width=4), "parallel", 0.5)
    masks = [nm.mask.clone() for _, nm, _ in masked_layers(static)]
    train(static, data, epochs=1)
    assert all(torch.equal(a, nm.mask) for a, (_, nm, _) in zip(masks, masked_layers(static)))


def test_bad_policy_input():
    model = transform(small_cnn(width=4), "doped", 0.5)
    with pytest.raises(ArgumentError, match="update must be one of refresh, static, set, rigl, got 'snip'"):
        set_update_(model, "snip", total_steps=10)
    with pytest.raises(ArgumentError, match="total_steps"):
        set_update_(model, "set", total_steps=0)
    with pytest.raises(ArgumentError, match="drop_fraction"):
        set_update_(model, "set", total_steps=10, drop_fraction=1.5)
    with pytest.raises(ArgumentError, match="no nmsparse mask"):
        set_update_(small_cnn(), "set", total_steps=10)
    with pytest.raises(ArgumentError, match="n_drop"):
        drop_and_regrow(torch.ones(4), torch.ones(4, dtype=torch.bool), 5, torch.ones(4))
