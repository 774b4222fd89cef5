"""Layer group definitions partition the weights the way each kind promises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nmsparse.errors import ShapeError
from nmsparse.examples import small_cnn
from nmsparse.layout import matrix_layout
from nmsparse.regularizers.groups import layer_groups, model_groups


def _members(g):
    """group id -> sorted list of (param index, flat index)."""
    out = {}
    for t, lab in enumerate(g.labels):
        for j, gid in enumerate(lab.reshape(-1).tolist()):
            out.setdefault(gid, []).append((t, j))
    return out


def _check_partition(g):
    mem = _members(g)
    assert sorted(mem) == list(range(g.n_groups))
    assert sum(len(v) for v in mem.values()) == sum(p.numel() for p in g.params)
    assert g.sizes.tolist() == [len(mem[i]) for i in range(g.n_groups)]
    for p, lab in zip(g.params, g.labels):
        assert lab.shape == p.shape
    return mem


def test_linear_rows_and_columns():
    lin = nn.Linear(5, 3)
    rows = layer_groups(lin, "neurons")
    mem = _check_partition(rows)
    assert rows.n_groups == 3 and mem[1] == [(0, 5), (0, 6), (0, 7), (0, 8), (0, 9), (1, 1)]
    cols = layer_groups(lin, "inputs")
    mem = _check_partition(cols)
    assert cols.n_groups == 5 and mem[2] == [(0, 2), (0, 7), (0, 12)]
    assert len(layer_groups(lin, "rows", include_bias=False).params) == 1


def test_conv_filters_channels_shapes_entries():
    conv = nn.Conv2d(6, 4, 3, bias=False)
    w = conv.weight
    f = layer_groups(conv, "filters")
    _check_partition(f)
    assert f.n_groups == 4 and torch.equal(f.labels[0][2], torch.full((6, 3, 3), 2))
    c = layer_groups(conv, "channels")
    _check_partition(c)
    assert c.n_groups == 6 and torch.equal(c.labels[0][:, 5], torch.full((4, 3, 3), 5))
    s = layer_groups(conv, "kernel_shapes")
    _check_partition(s)
    assert s.n_groups == 54 and len(set(s.labels[0][:, 1, 2, 0].tolist())) == 1
    e = layer_groups(conv, "entries")
    assert e.n_groups == w.numel()


@pytest.mark.parametrize("shape, m", [((4, 6, 3, 3), 4), ((5, 8), 4), ((3, 10), 4), ((2, 3, 1, 2), 2)])
def test_nm_blocks_follow_the_layout(shape, m):
    w = torch.zeros(shape)
    module = nn.Linear(shape[1], shape[0]) if len(shape) == 2 else nn.Conv2d(shape[1], shape[0], shape[2:])
    with torch.no_grad():
        module.weight.copy_(w)
    g = layer_groups(module, f"nm:{m}")
    _check_partition(g)
    layout = matrix_layout(shape)
    mat = layout.to_matrix(g.labels[0])  # blocks are m consecutive matrix columns within one position
    per_pos = mat.reshape(mat.shape[0], -1, layout.group_len)
    for r in range(per_pos.shape[0]):
        for p in range(per_pos.shape[1]):
            row = per_pos[r, p].tolist()
            blocks = [row[i : i + m] for i in range(0, len(row), m)]
            assert all(len(set(b)) == 1 for b in blocks)
            assert len({b[0] for b in blocks}) == len(blocks)
    assert g.sizes.max() == m


def test_custom_labels_and_errors():
    lin = nn.Linear(4, 2)
    lab = torch.tensor([[0, 0, 1, 1], [2, 2, 1, 1]])
    g = layer_groups(lin, lab)
    assert g.kind == "custom" and g.n_groups == 3
    with pytest.raises(ShapeError, match="custom labels have shape"):
        layer_groups(lin, torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ShapeError, match="group 1 is empty"):
        layer_groups(lin, torch.tensor([[0, 0, 2, 2], [2, 2, 2, 2]]))
    with pytest.raises(ShapeError, match="unknown group kind 'blocks'"):
        layer_groups(lin, "blocks")
    with pytest.raises(ShapeError, match="kernel_shapes groups need a conv"):
        layer_groups(lin, "kernel_shapes")
    with pytest.raises(ShapeError, match="expected nn.Linear"):
        layer_groups(nn.ReLU(), "rows")


def test_model_groups_couple_batchnorm_to_filters():
    model = small_cnn(width=4)
    gs = {g.name: g for g in model_groups(model, "filters")}
    assert [len(gs[n].params) for n in ("conv1", "conv2", "conv3", "fc1", "fc2")] == [4, 4, 4, 2, 2]
    assert gs["conv2"].params[2] is model.bn2.weight
    cols = model_groups(model, {"conv2": "channels", "fc1": "inputs"})
    assert [g.n_groups for g in cols] == [4, 128]
    with pytest.raises(ShapeError, match="no Linear/Conv layer named 'bn1'"):
        model_groups(model, {"bn1": "rows"})
