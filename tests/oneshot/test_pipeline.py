"""The block-wise calibration pipeline: block-forward counts, equality with truncated passes and with
a plain per-layer reference, fallbacks that say why, and errors from the user's blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import nmsparse as nms
from nmsparse.errors import ArgumentError, ConvertError
from nmsparse.oneshot import PruneReport, sparsegpt

transformers = pytest.importorskip("transformers")


def _llama(blocks: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=blocks,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2(blocks: int = 3):
    torch.manual_seed(1)
    cfg = transformers.GPT2Config(vocab_size=96, n_embd=32, n_layer=blocks, n_head=4, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert(blocks: int = 3):
    torch.manual_seed(2)
    cfg = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=blocks, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def _batches(n=2, seed=0, pad=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 96, (2, 12), generator=g)
        mask = torch.ones_like(ids)
        if pad:
            mask[1, 8:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _count_real_calls(blocks):
    count = {"n": 0}

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs.get("hidden_states")
        if not x.is_meta:
            count["n"] += 1

    for b in blocks:
        b.register_forward_pre_hook(hook, with_kwargs=True)
    return count


@pytest.mark.parametrize("depth", [2, 4, 8])
@pytest.mark.parametrize("algorithm,sequential,per_block", [("sparsegpt", True, 5), ("wanda", True, 5), ("sparsegpt", False, 2)])
def test_block_forwards_per_batch(depth, algorithm, sequential, per_block):
    model = _llama(depth)
    count = _count_real_calls(model.model.layers)
    batches = _batches(3)
    rep = PruneReport()
    nms.prune_(model, "2:4", calibration=batches, algorithm=algorithm, sequential=sequential, report=rep)
    assert rep.pipeline.mode == "block-wise"
    assert rep.pipeline.block_lists == [f"model.layers ({depth} blocks)"]
    assert count["n"] == rep.pipeline.block_forwards
    assert count["n"] <= per_block * depth * len(batches)


def test_truncated_passes_cost_quadratically_more():
    model = _llama(8)
    count = _count_real_calls(model.model.layers)
    rep = PruneReport()
    nms.prune_(model, "2:4", calibration=_batches(1), algorithm="sparsegpt", blocks=(), report=rep)
    assert rep.pipeline.mode == "truncated"
    assert count["n"] > 3 * 5 * 8  # g·B(B+1)/2 = 4·36 = 144 at B = 8 against 40 block-wise


@pytest.mark.parametrize("make", [_llama, _gpt2, _bert], ids=["llama", "gpt2", "bert"])
@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
@pytest.mark.parametrize("algorithm", ["sparsegpt", "wanda", "sparsegpt+lsq"])
@pytest.mark.parametrize("sequential", [True, False])
def test_block_wise_equals_truncated_passes(make, pattern, algorithm, sequential):
    dense = make(3) if make is not _llama else make(3)
    batches = _batches(2, pad=True)
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    ra, rb = PruneReport(), PruneReport()
    nms.prune_(a, pattern, calibration=batches, algorithm=algorithm, sequential=sequential, report=ra)
    nms.prune_(b, pattern, calibration=batches, algorithm=algorithm, sequential=sequential, blocks=(), report=rb)
    assert ra.pipeline.mode == "block-wise" and rb.pipeline.mode == "truncated"
    assert [r.name for r in ra.layers] == [r.name for r in rb.layers]
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


def _reference_sequential_sparsegpt(model, batches, pattern):
    """SparseGPT's protocol, written plainly: for each layer in forward order, run the whole current
    (partly pruned) model on the calibration data, rebuild that layer's Gram from its inputs at real
    tokens, prune it, write it back."""
    pat = nms.NMPattern.parse(pattern)
    names = []
    hooks = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and n != "lm_head":
            hooks.append(m.register_forward_hook(lambda mod, a, o, n=n: names.append(n) if n not in names else None))
    with torch.no_grad():
        model(**batches[0])
    for h in hooks:
        h.remove()
    for n in names:
        layer = model.get_submodule(n)
        grams = []

        def grab(mod, args, out):
            x = args[0]
            grams.append(x)

        h = layer.register_forward_hook(grab)
        gram = torch.zeros(layer.in_features, layer.in_features, dtype=torch.float64)
        with torch.no_grad():
            for b in batches:
                grams.clear()
                model(**b)
                real = b["attention_mask"].bool()
                for x in grams:
                    rows = x[real].double()
                    gram += rows.T @ rows
        h.remove()
        w, _ = sparsegpt(layer.weight.detach().double(), gram, pat, damp=0.01, blocksize=128)
        with torch.no_grad():
            layer.weight.copy_(w.float())
    return model


def test_block_wise_sparsegpt_equals_the_plain_sequential_reference():
    dense = _llama(3)
    batches = _batches(2, pad=True)
    ours = nms.prune_(copy.deepcopy(dense), "2:4", calibration=batches, algorithm="sparsegpt", exclude="lm_head")
    ref = _reference_sequential_sparsegpt(copy.deepcopy(dense), batches, "2:4")
    for (name, x), (_, y) in zip(ours.state_dict().items(), ref.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=name)


class _Twice(nn.Module):
    """A ModuleList whose blocks the forward runs twice: block-wise replay would be wrong."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(2)])

    def forward(self, x):
        for _ in range(2):
            for b in self.blocks:
                x = b(x)
        return x


class _Parallel(nn.Module):
    """Same-class modules used side by side (heads), not a stack."""

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    def forward(self, x):
        return sum(h(x) for h in self.heads)


class _Between(nn.Module):
    """The model changes the hidden state between blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(3)])

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x)) * 0.5
        return x


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 16))

    def forward(self, x):
        return x + self.mlp(x)


class _Stack(nn.Module):
    """A pre-block layer, a stack and a head: all three kinds of place."""

    def __init__(self, outside_residual=False):
        super().__init__()
        self.outside = outside_residual
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.ModuleList([_Residual() for _ in range(3)])
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.inp(x)
        for b in self.blocks:
            x = x + b.mlp(x) if self.outside else b(x)
        return self.head(x)


class _OutsideResidual(_Stack):
    def __init__(self):
        super().__init__(outside_residual=True)


@pytest.mark.parametrize("cls,mode,why", [
    (_Twice, "truncated", "more than once"),
    (_Parallel, "truncated", "does not receive block 0's output unchanged"),
    (_Between, "truncated", "does not receive block 0's output unchanged"),
    (_OutsideResidual, "truncated", "fails with its blocks stood in for (AttributeError"),
    (_Stack, "block-wise", None),
])
def test_model_shapes_fall_back_or_not_and_match_truncated(cls, mode, why):
    torch.manual_seed(0)
    dense = cls()
    batches = [torch.randn(16, 8) for _ in range(2)]
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    ra, rb = PruneReport(), PruneReport()
    nms.prune_(a, "2:4", calibration=batches, algorithm="sparsegpt", report=ra)
    nms.prune_(b, "2:4", calibration=batches, algorithm="sparsegpt", blocks=(), report=rb)
    assert ra.pipeline.mode == mode
    if why:
        assert len(ra.pipeline.fallbacks) == 1 and why in ra.pipeline.fallbacks[0][1]
    else:
        assert ra.pipeline.fallbacks == []
    assert [r.name for r in ra.layers] == [r.name for r in rb.layers]
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=name)


class _Boom(nn.Module):
    def __init__(self, exc):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.exc = exc

    def forward(self, x):
        y = self.lin(x)
        if not y.is_meta and getattr(self, "armed", False):
            raise self.exc
        return y


@pytest.mark.parametrize("exc", [RuntimeError("bad"), AttributeError("nope"), ZeroDivisionError("div"), StopIteration(), KeyError("k")])
def test_any_exception_from_a_block_names_block_and_batch_and_keeps_the_model(exc):
    torch.manual_seed(0)
    model = nn.Sequential()
    model.blocks = nn.ModuleList([_Boom(exc) for _ in range(3)])

    def forward(x):
        for b in model.blocks:
            x = b(x)
        return x

    model.forward = forward
    before = copy.deepcopy(model.state_dict())
    calls = {"n": 0}

    def arm(mod, args):
        calls["n"] += 1
        if calls["n"] >= 2:  # after block 0 was pruned: the model must come back unchanged
            model.blocks[1].armed = True

    model.blocks[1].register_forward_pre_hook(arm)
    with pytest.raises(ConvertError, match=r"block blocks\.1 failed on calibration batch \d") as info:
        nms.prune_(model, "2:4", calibration=[torch.randn(4, 8), torch.randn(4, 8)], algorithm="sparsegpt")
    assert info.value.__cause__ is exc
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_blocks_option_names_a_module_list():
    with pytest.raises(ArgumentError, match="model.layers"):
        nms.prune_(_llama(2), "2:4", calibration=_batches(1), algorithm="wanda", blocks="model.nope")
    with pytest.raises(ArgumentError, match="blocks="):
        nms.prune_(_llama(2), "2:4", calibration=_batches(1), algorithm="wanda", blocks=3)
    rep = PruneReport()
    nms.prune_(_llama(2), "2:4", calibration=_batches(1), algorithm="wanda", blocks="model.layers", report=rep)
    assert rep.pipeline.block_lists == ["model.layers (2 blocks)"]


@pytest.mark.parametrize("spec", ["2:4", "4:8", "1:4", "2:4T", "4:8T", 0.4, "fixed", "tail"])
def test_compiled_obs_loop_equals_the_torch_loop(spec):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 40, generator=g, dtype=torch.float64)
    x[:, 5] = 0.0  # a dead input
    h = x.T @ x
    w = torch.randn(16, 40, generator=g, dtype=torch.float64)
    real = torch.ones(16, 40, dtype=torch.bool)
    real[:, 38:] = False  # padding columns
    kw = dict(blocksize=16, real=real)
    if spec == "fixed":
        pattern, kw["mask"] = nms.NMPattern.parse("2:4"), nms.find_mask(w, "2:4")
    elif spec == "tail":
        pattern, kw["tail"] = nms.NMPattern.parse("2:4"), 4
        kw["real"] = None
    else:
        pattern = spec if isinstance(spec, float) else nms.NMPattern.parse(spec)
    a, ka = sparsegpt(w, h, pattern, compiled=True, **kw)
    b, kb = sparsegpt(w, h, pattern, compiled=False, **kw)
    assert torch.equal(ka, kb)
    assert torch.equal(a, b)


def test_device_option_runs_each_block_there_and_checks_the_name():
    dense = _llama(3)
    batches = _batches(2)
    a = nms.prune_(copy.deepcopy(dense), "2:4", calibration=batches, algorithm="sparsegpt")
    b = nms.prune_(copy.deepcopy(dense), "2:4", calibration=batches, algorithm="sparsegpt", device="cpu")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    with pytest.raises(ArgumentError, match="torch device"):
        nms.prune_(copy.deepcopy(dense), "2:4", calibration=batches, algorithm="wanda", device="gpu0")
    with pytest.raises(ArgumentError, match="meta"):
        nms.prune_(copy.deepcopy(dense), "2:4", calibration=batches, algorithm="wanda", device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ArgumentError, match="CUDA is not available"):
            nms.prune_(copy.deepcopy(dense), "2:4", calibration=batches, algorithm="wanda", device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pattern", ["2:4", "2:4T"])
def test_device_cuda_matches_the_cpu_reference(pattern):
    dense = _llama(3)
    batches = _batches(2)
    cpu = nms.prune_(copy.deepcopy(dense), pattern, calibration=batches, algorithm="sparsegpt")
    gpu = nms.prune_(copy.deepcopy(dense), pattern, calibration=batches, algorithm="sparsegpt", device="cuda")
    assert all(p.device.type == "cpu" for p in gpu.parameters())  # every block went back
    for (name, x), (_, y) in zip(cpu.state_dict().items(), gpu.state_dict().items()):
        if x.is_floating_point() and x.dim() == 2:  # GPU arithmetic may flip a near-tie of the mask
            assert float(((x == 0) == (y == 0)).float().mean()) > 0.98, name
            nms.check_mask(y != 0, pattern)
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(gpu(ids).logits, cpu(ids).logits, rtol=0.05, atol=0.05)


def test_each_module_keeps_its_own_train_mode():
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 8))
    model.train()
    model[1].eval()  # a frozen BatchNorm in a training model
    model[2].eval()
    nms.prune_(model, "2:4", calibration=[torch.randn(16, 8)], algorithm="sparsegpt")
    assert [m.training for m in model] == [True, False, False, True] and model.training
