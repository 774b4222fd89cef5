"""torch.compile: a sparsified model compiles, trains identically to eager and keeps refreshing masks."""

import copy

import pytest
import torch
from torch import nn

import nmsparse as nms


@pytest.mark.parametrize("pattern,method", [("2:4T", "exact"), ("4:8T", "greedy"), ("2:4", None)])
def test_compiled_training_matches_eager(pattern, method):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    nms.sparsify_(model, pattern, method=method, update_every=2, exclude="4", gradient="srste")
    eager = copy.deepcopy(model)
    # aot_eager traces forward and backward through dynamo and AOTAutograd without a C compiler.
    compiled = torch.compile(model, backend="aot_eager")
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, eager)]
    start = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("mask")}
    from torch._dynamo.utils import counters

    counters.clear()
    for _ in range(6):
        x = torch.randn(16, 64)
        for m, opt in zip((compiled, eager), opts):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for (k, a), b in zip(model.state_dict().items(), eager.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=k)
    assert nms.summary(model).forward_count == 6
    assert any(not torch.equal(start[k], model.state_dict()[k]) for k in start)  # masks refreshed
    assert counters["stats"]["unique_graphs"] == 1  # refreshes do not recompile
