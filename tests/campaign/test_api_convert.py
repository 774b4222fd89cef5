"""Campaign: prune_state_dict and report_state_dict on what users pass, the default name rules on
real model names, and prune/report agreement on what fits and what obeys.

Oracles: "fits" from the layout's definition written out here (the grouped axis of a Linear or
conv weight is dim 1, a transposable pattern also needs the output rows to be a multiple of m);
"obeys" by check_mask with explicit groups; the name table is what each architecture's tensors
are (tables left dense, projections pruned).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import nmsparse as nms
from _harness import Case, parametrize, run_case
from nmsparse.convert import prune_state_dict, report_state_dict

G = torch.Generator().manual_seed(11)


def rnd(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=G).to(dtype)


def _assert(cond, message=""):
    assert cond, message


CASES = []

# --- 1. default name rules on real names (GPT-2, Llama, BERT, T5, Mistral/Mixtral, Qwen2-MoE,
# DeepSeek, OPT, GPT-NeoX, ALBERT, ViT, CLIP, timm, diffusers): True = pruned, False = left dense.
NAMES = {
    # embedding tables: dense
    "transformer.wte.weight": False,
    "transformer.wpe.weight": False,
    "model.embed_tokens.weight": False,
    "model.decoder.embed_tokens.weight": False,
    "model.decoder.embed_positions.weight": False,
    "bert.embeddings.word_embeddings.weight": False,
    "bert.embeddings.position_embeddings.weight": False,
    "bert.embeddings.token_type_embeddings.weight": False,
    "shared.weight": False,
    "encoder.embed_tokens.weight": False,
    "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": False,
    "gpt_neox.embed_in.weight": False,
    "tok_embeddings.weight": False,
    "transformer.word_embeddings.weight": False,
    "text_model.embeddings.token_embedding.weight": False,
    "text_model.embeddings.position_embedding.weight": False,
    "backbone.embeddings.weight": False,
    "unet.class_embedding.weight": False,
    "vit.embeddings.patch_embeddings.projection.weight": False,
    "patch_embed.proj.weight": False,
    "model.embed.weight": False,
    # projections: pruned, even next to or named like an embedding
    "model.layers.0.mlp.shared_expert.up_proj.weight": True,
    "model.layers.0.mlp.shared_expert.gate_proj.weight": True,
    "model.layers.0.mlp.shared_expert.down_proj.weight": True,
    "model.layers.3.mlp.shared_experts.down_proj.weight": True,
    "model.layers.3.mlp.shared_experts.up_proj.weight": True,
    "model.layers.0.mlp.experts.7.down_proj.weight": True,
    "model.layers.0.block_sparse_moe.experts.0.w1.weight": True,
    "model.layers.0.self_attn.q_proj.weight": True,
    "model.layers.0.self_attn.o_proj.weight": True,
    "transformer.h.0.attn.c_attn.weight": True,
    "transformer.h.0.mlp.c_fc.weight": True,
    "bert.encoder.layer.0.attention.self.query.weight": True,
    "encoder.block.0.layer.1.DenseReluDense.wi.weight": True,
    "model.decoder.layers.0.fc1.weight": True,
    "model.decoder.project_in.weight": True,
    "albert.encoder.embedding_hidden_mapping_in.weight": True,
    "gpt_neox.embed_out.weight": True,
    "unet.time_embedding.linear_1.weight": True,
    "lm_head.weight": True,
    "embedder_mlp.fc.weight": True,
    "sharedlayer.dense.weight": True,
    "model.layers.0.mlp.shared_expert_gate.weight": True,
}
for name, pruned in NAMES.items():
    CASES.append(
        Case(
            f"name rule: {name}",
            lambda name=name: prune_state_dict({name: rnd(8, 8)}, "2:4").layers[0],
            check=lambda row, pruned=pruned: _assert(row.pruned is pruned, f"pruned={row.pruned}: {row.reason}"),
        )
    )


# --- 2. prune and report agree on what fits and what obeys.
def _fits(shape, p) -> bool:
    """DESIGN.md: (out, in) and conv (out, in, k...) group along `in`; tiles also cut `out`."""
    group_len = shape[-1] if len(shape) == 2 else shape[1]
    return group_len % p.m == 0 and (not p.transposable or shape[0] % p.m == 0)


def _agreement(shape, pattern, ragged):
    p = nms.NMPattern.parse(pattern)
    dense = {"layer.weight": rnd(*shape)}
    before = report_state_dict(dense, pattern, ragged=ragged).weights[0]
    try:
        pruned = prune_state_dict(dense, pattern, ragged=ragged)
    except nms.ShapeError as err:
        return ("refused", str(err), before, None, p)
    after = report_state_dict(pruned.tensors, pattern, ragged=ragged).weights[0]
    if _fits(shape, p):  # the independent expectation: the pattern's mask of |W|, pruned to +0.0
        w = dense["layer.weight"]
        expected = torch.where(nms.find_mask(w, p), w, torch.zeros(()))
        assert torch.equal(pruned.tensors["layer.weight"], expected), "pruned weight is not W masked by find_mask(W)"
    return ("pruned", pruned, before, after, p)


def _check_agreement(shape, ragged):
    def check(result):
        kind, value, before, after, p = result
        fits = _fits(shape, p)
        if kind == "refused":
            assert not fits and ragged == "error", f"prune refused a weight that fits: {value}"
            assert "layer.weight" in value and before.obeys is False and "does not fit" in before.problem
            return
        assert fits or ragged != "error", "prune accepted a weight that does not fit under ragged='error'"
        row = value.layers[0]
        if not fits and ragged == "skip":
            assert not row.pruned and not after.checked and not before.checked
            return
        assert row.pruned and after.checked and after.obeys, f"report says the pruned weight breaks {p}: {after.problem}"
        # A dense weight obeys only if no (partial) group, tile row or tile column has more than n
        # real entries: groups hold min(m, in) entries, tile columns min(m, out) (under padding).
        group_len = shape[-1] if len(shape) == 2 else shape[1]
        dense_obeys = min(p.m, group_len) <= p.n and (not p.transposable or min(p.m, shape[0]) <= p.n)
        assert before.checked and before.obeys is dense_obeys, f"dense weight: obeys={before.obeys}, expected {dense_obeys}"
        nz = value.tensors["layer.weight"] != 0
        nms.check_mask(nz, p)  # the independent definition of "obeys"
    return check


SHAPES = [(8, 8), (16, 8), (8, 6), (6, 8), (12, 16), (5, 16), (8, 3, 3, 3), (8, 4, 3, 3), (16, 16, 3, 3),
          (16, 3, 7, 7), (8, 8, 3), (8, 8, 2, 2, 2), (4, 12, 1, 1)]
for shape in SHAPES:
    for pattern in ("2:4", "2:4T", "4:8", "4:8T", "8:16", "8:16T", "1:2T"):
        for ragged in ("error", "skip", "pad"):
            CASES.append(Case(f"fit/obey {shape} {pattern} ragged={ragged}",
                              lambda s=shape, p=pattern, r=ragged: _agreement(s, p, r), check=_check_agreement(shape, ragged)))


# --- 3. state dicts as users hold them.
def _prune_right(sd, pattern="2:4T", names=("fc.weight",)):
    def check(res):
        for name in names:
            t = res.tensors[name]
            assert isinstance(t, torch.Tensor) and not t.requires_grad and t.shape == sd[name].shape
            nms.check_mask(t != 0, pattern)
            ref = prune_state_dict({name: sd[name].detach().clone().contiguous()}, pattern).tensors[name]
            assert torch.equal(t, ref), "a view / Parameter gave a different result than a plain copy"
            assert not torch.signbit(t[t == 0]).any(), "pruned entries must be +0.0"
        assert list(res.tensors) == list(sd), "keys or order changed"
    return check


STATE_DICTS = {
    "Parameter values": {"fc.weight": nn.Parameter(rnd(8, 8)), "fc.bias": nn.Parameter(rnd(8))},
    "requires_grad values": {"fc.weight": rnd(8, 8).requires_grad_()},
    "nn.Linear state_dict": {f"fc.{k}": v for k, v in nn.Linear(8, 8).state_dict().items()},
    "model.named_parameters dict": {f"fc.{k}": v for k, v in nn.Linear(8, 8).named_parameters()},
    "transposed view": {"fc.weight": rnd(8, 8).t()},
    "strided view": {"fc.weight": rnd(8, 16)[:, ::2]},
    "fp16": {"fc.weight": rnd(8, 8, dtype=torch.float16)},
    "bf16": {"fc.weight": rnd(8, 8, dtype=torch.bfloat16)},
    "fp64": {"fc.weight": rnd(8, 8, dtype=torch.float64)},
    "negative zeros kept as +0": {"fc.weight": torch.where(rnd(8, 8) > 0, rnd(8, 8), torch.tensor(-0.0))},
    "with int, bool, 0-d, empty and complex entries": {
        "fc.weight": rnd(8, 8), "step": torch.tensor(3), "mask": torch.ones(8, 8, dtype=torch.bool),
        "scale": torch.tensor(0.5), "empty.weight": torch.empty(0, 8), "c.weight": torch.ones(8, 8, dtype=torch.complex64),
    },
}
for sid, sd in STATE_DICTS.items():
    CASES.append(Case(f"prune_state_dict: {sid}", lambda sd=sd: prune_state_dict(sd, "2:4T"), check=_prune_right(sd)))
conv = {"conv.weight": nn.Parameter(rnd(8, 8, 3, 3).contiguous(memory_format=torch.channels_last))}
CASES.append(Case("prune_state_dict: channels_last conv Parameter", lambda: prune_state_dict(conv, "2:4T"),
                  check=_prune_right(conv, names=("conv.weight",))))

BAD = [
    ("an int value", {"fc.weight": rnd(8, 8), "step": 3}, {}, nms.ConvertError, "'step'.*int"),
    ("a string value", {"fc.weight": rnd(8, 8), "name": "llama"}, {}, nms.ConvertError, "'name'.*str"),
    ("a None value", {"fc.weight": None}, {}, nms.ConvertError, "'fc.weight'.*NoneType"),
    ("a numpy value", {"fc.weight": np.ones((8, 8))}, {}, nms.ConvertError, "ndarray"),
    ("a nested dict", {"model": {"fc.weight": rnd(8, 8)}}, {}, nms.ConvertError, "'model'.*dict"),
    ("a list value", {"fc.weight": [1.0, 2.0]}, {}, nms.ConvertError, "list"),
    ("an int key", {1: rnd(8, 8)}, {}, nms.ConvertError, "keys must be strings"),
    ("a meta tensor", {"fc.weight": torch.empty(8, 8, device="meta")}, {}, nms.ConvertError, "meta tensor"),
    ("a meta bias", {"fc.weight": rnd(8, 8), "fc.bias": torch.empty(8, device="meta")}, {}, nms.ConvertError, "'fc.bias'.*meta"),
    ("NaN weight", {"fc.weight": torch.full((8, 8), float("nan"))}, {}, nms.ScoreError, "layer fc.weight.*NaN"),
    ("Inf in fp16 weight", {"fc.weight": torch.full((8, 8), float("inf")).half()}, {}, nms.ScoreError, "layer fc.weight"),
    ("ragged Linear", {"fc.weight": rnd(8, 6)}, {}, nms.ShapeError, "layer fc.weight.*--ragged skip"),
    ("ragged conv", {"conv.weight": rnd(8, 3, 3, 3)}, {}, nms.ShapeError, "layer conv.weight"),
    ("ragged value unknown", {"fc.weight": rnd(8, 8)}, {"ragged": "maybe"}, nms.ConvertError, "error, skip, pad"),
    ("ragged value None", {"fc.weight": rnd(8, 8)}, {"ragged": None}, nms.ConvertError, "ragged must be"),
    ("method unknown", {"fc.weight": rnd(8, 8)}, {"method": "magic"}, nms.MethodError, "exact, greedy, refine"),
    ("huge pattern padded", {"fc.weight": rnd(8, 8)}, {"ragged": "pad", "pattern": "1:100000T"}, nms.ShapeError, "layer fc.weight.*m <= 8"),
]
for cid, sd, kw, err, match in BAD:
    kw = dict(kw)
    pattern = kw.pop("pattern", "2:4T")
    CASES.append(Case(f"prune_state_dict: {cid}", lambda sd=sd, kw=kw, p=pattern: prune_state_dict(sd, p, **kw), err, match))
    if err is nms.ConvertError and "ragged" not in kw:
        CASES.append(Case(f"report_state_dict: {cid}", lambda sd=sd: report_state_dict(sd, "2:4T"), err, match))
for value in (None, [("fc.weight", rnd(8, 8))], rnd(8, 8), "model.safetensors", 42):
    CASES.append(Case(f"prune_state_dict: not a mapping ({type(value).__name__})", lambda v=value: prune_state_dict(v, "2:4"),
                      nms.ConvertError, "expected a state dict"))
    CASES.append(Case(f"report_state_dict: not a mapping ({type(value).__name__})", lambda v=value: report_state_dict(v, "2:4"),
                      nms.ConvertError, "expected a state dict"))
for text in ("2-4", "0:4", None, 24):
    CASES.append(Case(f"prune_state_dict: pattern {text!r}", lambda t=text: prune_state_dict({"fc.weight": rnd(8, 8)}, t), nms.PatternError, None))
CASES += [
    Case("report_state_dict: ms holds 0", lambda: report_state_dict({"fc.weight": rnd(8, 8)}, ms=(0,)), nms.ShapeError, "m >= 1"),
    Case("report_state_dict: ms holds a float", lambda: report_state_dict({"fc.weight": rnd(8, 8)}, ms=(4.0,)), nms.ShapeError, "4.0"),
    Case("report_state_dict: ragged unknown", lambda: report_state_dict({"fc.weight": rnd(8, 8)}, "2:4", ragged="x"), nms.ConvertError, "ragged"),
    Case("report_state_dict: huge padded pattern", lambda: report_state_dict({"fc.weight": rnd(8, 8)}, "1:100000T", ragged="pad"),
         nms.ShapeError, "padding"),
    Case("report_state_dict: Parameter values", lambda: report_state_dict({"fc.weight": nn.Parameter(rnd(8, 8))}, "2:4"),
         check=lambda rep: _assert(rep.weights[0].obeys is False and rep.weights[0].checked)),
    Case("report_state_dict: m that does not fit is not a densest pattern", lambda: report_state_dict({"conv.weight": rnd(8, 3, 3, 3)}),
         check=lambda rep: _assert(rep.weights[0].densest == {4: "does not fit", 8: "does not fit", 16: "does not fit"})),
]


@parametrize(CASES)
def test_convert_inputs(case):
    run_case(case)
