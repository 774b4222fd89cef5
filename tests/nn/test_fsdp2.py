"""FSDP2 (``fully_shard``) on two gloo CPU processes against single-process training.

One spawn of two processes runs every distributed scenario (process start-up dominates the
cost); the test functions then compare what each rank saved with a single-process oracle run
here: the same model, the same global batch, plain (unsharded) tensors.
"""

import math
import os
import re
import socket
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import nmsparse as nms
from nmsparse.errors import ArgumentError, ScoreError, ShapeError
from nmsparse.nn import sparsified_parameters

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or sys.platform == "win32",
    reason="needs torch.distributed with gloo",
)

WORLD, STEPS, UPDATE_EVERY, BATCH = 2, 12, 3, 16
CONFIGS = {"2:4T": ("2:4T", "exact"), "2:4": ("2:4", None), "50%": (0.5, None)}
LOCAL, GATHERED = "shard-local", "gathered"
# Conv1d 16 rows (8 per rank), Linear 32 rows (16 per rank): whole 4x4 tiles. Linear 12 rows
# (6 per rank) cuts tiles. Linear 9 rows: uneven shards (5 and 4 rows); too ragged for 2:4T.
EXPECTED_PLAN = {
    "2:4T": {"0.weight": LOCAL, "3.weight": LOCAL, "5.weight": GATHERED},
    "2:4": {"0.weight": LOCAL, "3.weight": LOCAL, "5.weight": LOCAL, "7.weight": LOCAL},
    "50%": {"0.weight": GATHERED, "3.weight": GATHERED, "5.weight": GATHERED, "7.weight": GATHERED},
}
README = Path(__file__).resolve().parents[2] / "README.md"


def make_model(seed):
    torch.manual_seed(seed)
    # float64: the sharded and single-process runs then agree to ~1e-15, so exact mask
    # equality is not at the mercy of near-ties in the scores.
    return nn.Sequential(
        nn.Conv1d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(),
        nn.Linear(32, 12), nn.ReLU(), nn.Linear(12, 9), nn.ReLU(), nn.Linear(9, 4),
    ).double()


def sparse(model, key, foreign=False):
    """sparsify_ for config ``key``; ``foreign``: start from another model's (valid) masks, so
    the first refresh must change every layer's mask and a refresh that did nothing would show."""
    pattern, method = CONFIGS[key]
    nms.sparsify_(model, pattern, method=method, update_every=UPDATE_EVERY, exclude="9")
    if foreign:
        other = masks_of(sparse(make_model(9), key))
        with torch.no_grad():
            for name, (module, pname) in sparsified_parameters(model).items():
                module.parametrizations[pname][0].mask.copy_(other[name])
    return model


def shard(model):
    from torch.distributed.fsdp import fully_shard

    for i in (0, 3, 5, 7, 9):
        fully_shard(model[i])
    fully_shard(model)
    return model


def batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(BATCH, 8, 6, generator=g, dtype=torch.float64), 3 * torch.randn(BATCH, 4, generator=g, dtype=torch.float64)


EVAL_X = torch.randn(5, 8, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def masks_of(model):
    return {n: m.parametrizations[p][0].mask.clone() for n, (m, p) in sparsified_parameters(model).items()}


def train(model, rank=None):
    """STEPS SGD steps on the global batch (a rank takes its half); masks after every step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    history = []
    for step in range(STEPS):
        x, y = batch(step)
        if rank is not None:
            x, y = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        opt.zero_grad()
        (model(x) - y).square().mean().backward()
        opt.step()
        history.append(masks_of(model))
    return history


@torch.no_grad()
def outputs(model):
    model.eval()
    out = model(EVAL_X)
    model.train()
    return out


def load_dcp(model, path):
    import torch.distributed.checkpoint as dcp

    state = model.state_dict()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)  # single-process load
        dcp.load({"model": state}, checkpoint_id=str(path))
    model.load_state_dict(state)
    return model


def _recipe_source():
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- fsdp2-recipe:start -->\s*```python\n(.*?)```\s*<!-- fsdp2-recipe:end -->", text, re.S)
    assert block, "README lost its FSDP2 recipe block"
    return block.group(1)


def _train_sharded(key, rank):
    from nmsparse.nn import refresh_plan
    from nmsparse.testing import CollectiveBytes

    model = shard(sparse(make_model(0), key, foreign=True))
    plan = {n: p.mode for n, p in refresh_plan(model).items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # a repeated warning would show up here
        history = train(model, rank)
        with CollectiveBytes() as comm:
            nms.update_masks_(model)
    return model, {
        "plan": plan, "history": history, "final": masks_of(model), "out": outputs(model),
        "warnings": [str(w.message) for w in caught if str(w.message).startswith("nmsparse")],
        "bytes": comm.bytes, "summary": str(nms.summary(model)), "kept": nms.nn.kept_and_density(model),
    }


def _checkpoints(model, rank, out):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict

    dcp.save({"model": model.state_dict()}, checkpoint_id=str(out / "dcp_fsdp"))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save(full, out / "full_fsdp.pt")
    res = {}
    fresh = load_dcp(shard(sparse(make_model(1), "2:4T")), out / "dcp_fsdp")
    res["dcp_roundtrip"] = (masks_of(fresh), outputs(fresh))
    from_single = load_dcp(shard(sparse(make_model(1), "2:4T")), out / "dcp_single")
    res["dcp_from_single"] = (masks_of(from_single), outputs(from_single))
    other = shard(sparse(make_model(1), "2:4T"))
    state = torch.load(out / "full_single.pt", weights_only=True)
    set_model_state_dict(other, state, options=StateDictOptions(full_state_dict=True))
    res["full_from_single"] = (masks_of(other), outputs(other))
    return res


def _errors(model, rank):
    res = {}
    for name, call in (
        ("squash", lambda: nms.squash_(model)),
        ("sparsify_after_shard", lambda: nms.sparsify_(shard(make_model(0)), "2:4T")),
        ("set", lambda: shard(nms.sparsify_(make_model(0), "2:4T", update="set", total_steps=10, update_every=1))(batch(0)[0])),
    ):
        try:
            call()
        except Exception as err:  # recorded and checked by type in the parent
            res[name] = (type(err).__name__, str(err))
    with torch.no_grad():
        if rank == 0:  # NaN in rank 0's rows of a shard-local layer: both ranks must raise, not hang
            model[3].parametrizations.weight.original.to_local()[0, 0] = float("nan")
    try:
        nms.update_masks_(model)
    except Exception as err:
        res["nan"] = (type(err).__name__, str(err))
    return res


def _worker(rank, out_dir, init_file, port):
    out = Path(out_dir)
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.chdir(out)  # the recipe writes its checkpoints to the working directory
    exec(compile(_recipe_source(), str(README), "exec"), {"__name__": "__recipe__"})
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results, models = {}, {}
        for key in CONFIGS:
            models[key], results[key] = _train_sharded(key, rank)
        results["ckpt"] = _checkpoints(models["2:4T"], rank, out)
        results["errors"] = _errors(models["2:4T"], rank)
    finally:
        dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import torch.distributed.checkpoint as dcp

    out = tmp_path_factory.mktemp("fsdp2")
    single = sparse(make_model(2), "2:4T")  # a single-process checkpoint for the FSDP2 ranks to load
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # DCP notes that it runs without a process group
        train(single)
        dcp.save({"model": single.state_dict()}, checkpoint_id=str(out / "dcp_single"))
    torch.save(single.state_dict(), out / "full_single.pt")
    ctx = mp.start_processes(_worker, args=(str(out), str(out / "init"), _free_port()), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 600  # a deadlocked collective fails the test instead of hanging CI
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("FSDP2 workers did not finish within 600 s (a collective deadlocked?)")
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"out": out, "ranks": ranks, "single": single}


@pytest.mark.parametrize("key", list(CONFIGS))
def test_training_matches_single_process(run, key):
    reference = sparse(make_model(0), key, foreign=True)
    initial = masks_of(reference)
    expected = train(reference)
    nms.update_masks_(reference)  # as the ranks did after training
    for res in (r[key] for r in run["ranks"]):
        assert len(res["history"]) == STEPS
        for step, (got, want) in enumerate(zip(res["history"], expected)):
            assert got.keys() == want.keys()
            for name in want:
                assert torch.equal(got[name], want[name]), f"{key} step {step} layer {name}"
                if isinstance(CONFIGS[key][0], str):
                    nms.check_mask(got[name], CONFIGS[key][0], exact=True)
                else:
                    assert int(got[name].sum()) == math.floor(0.5 * got[name].numel() + 0.5)
        torch.testing.assert_close(res["out"], outputs(reference), rtol=1e-10, atol=1e-12)
        assert res["kept"] == pytest.approx(nms.nn.kept_and_density(reference), rel=1e-12)
        assert "training forward passes counted: 12" in res["summary"]
    # Every layer's mask changed at the first refresh (step 3): the refreshes did run.
    assert all(not torch.equal(initial[n], expected[UPDATE_EVERY - 1][n]) for n in initial)
    assert all(torch.equal(initial[n], expected[UPDATE_EVERY - 2][n]) for n in initial)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_refresh_plan_warnings_and_bytes(run, key):
    plan = EXPECTED_PLAN[key]
    shapes = {n: m.parametrizations[p].original.shape
              for n, (m, p) in sparsified_parameters(sparse(make_model(0), key)).items()}
    for rank, res in enumerate(r[key] for r in run["ranks"]):
        assert res["plan"] == plan
        gathered = sorted(n for n, mode in plan.items() if mode == GATHERED)
        assert len(res["warnings"]) == len(gathered)  # once per layer, over 4 refreshes + update_masks_
        for name, message in zip(gathered, sorted(res["warnings"])):
            assert f"layer {name!r}" in message and "all-gathers the dense weight" in message
        expected = 0
        for name, mode in plan.items():
            rows, row_len = shapes[name][0], math.prod(shapes[name][1:])
            chunk = -(-rows // WORLD)
            # shard-local: this rank's packed rows (padded to the chunk) + a status byte;
            # gathered: full_tensor() all-gathers the fp64 shard, padded to the chunk.
            expected += chunk * -(-row_len // 8) + 1 if mode == LOCAL else chunk * row_len * 8
        assert res["bytes"] == expected


def test_dcp_and_full_state_dict_move_between_fsdp2_and_single_process(run):
    r0, r1 = run["ranks"]
    trained = r0["2:4T"]
    assert all(torch.equal(r0["2:4T"]["final"][n], r1["2:4T"]["final"][n]) for n in trained["final"])
    # FSDP2 -> FSDP2 (a fresh model with other weights and masks), through DCP.
    for rank in run["ranks"]:
        masks, out = rank["ckpt"]["dcp_roundtrip"]
        assert all(torch.equal(masks[n], trained["final"][n]) for n in trained["final"])
        torch.testing.assert_close(out, trained["out"], rtol=0, atol=0)
    # FSDP2 -> single process, through DCP and through the gathered full state dict.
    via_dcp = load_dcp(sparse(make_model(3), "2:4T"), run["out"] / "dcp_fsdp")
    via_full = sparse(make_model(3), "2:4T")
    via_full.load_state_dict(torch.load(run["out"] / "full_fsdp.pt", weights_only=True))
    for model in (via_dcp, via_full):
        masks = masks_of(model)
        assert all(torch.equal(masks[n], trained["final"][n]) for n in masks)
        torch.testing.assert_close(outputs(model), trained["out"], rtol=0, atol=0)
    # single process -> FSDP2, through DCP and set_model_state_dict(full_state_dict=True).
    single = run["single"]
    want_masks, want_out = masks_of(single), outputs(single)
    assert any(not torch.equal(want_masks[n], trained["final"][n]) for n in want_masks)  # not vacuous
    for rank in run["ranks"]:
        for how in ("dcp_from_single", "full_from_single"):
            masks, out = rank["ckpt"][how]
            assert all(torch.equal(masks[n], want_masks[n]) for n in want_masks), how
            torch.testing.assert_close(out, want_out, rtol=0, atol=0)


def test_readme_recipe_checkpoints_load_into_a_single_process_model(run):
    def plain():
        torch.manual_seed(5)
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        return nms.sparsify_(model, "2:4T", update_every=4, exclude="4")

    via_full = plain()
    via_full.load_state_dict(torch.load(run["out"] / "ckpt.pt", weights_only=True))
    via_dcp = load_dcp(plain(), run["out"] / "ckpt-dcp")
    fresh = masks_of(plain())
    for name, mask in masks_of(via_full).items():
        nms.check_mask(mask, "2:4T", exact=True)
        assert torch.equal(mask, masks_of(via_dcp)[name])
        assert not torch.equal(mask, fresh[name])
    x = torch.randn(3, 64)
    torch.testing.assert_close(via_full(x), via_dcp(x), rtol=0, atol=0)
    nms.squash_(via_full)  # the export path the README gives: gather, load unsharded, squash
    assert all((m.weight == 0).float().mean() == 0.5 for m in (via_full[0], via_full[2]))


def test_errors_are_clear_and_raised_on_every_rank(run):
    for rank, res in enumerate(r["errors"] for r in run["ranks"]):
        assert res["squash"][0] == ShapeError.__name__ and "full_state_dict=True" in res["squash"][1]
        assert res["sparsify_after_shard"][0] == ShapeError.__name__
        assert "call sparsify_ on the plain model, then fully_shard" in res["sparsify_after_shard"][1]
        assert res["set"][0] == ArgumentError.__name__ and "update='set' is not supported on FSDP2" in res["set"][1]
        assert res["nan"][0] == ScoreError.__name__ and "'3.weight'" in res["nan"][1]
    assert "failed on rank 0" in run["ranks"][1]["errors"]["nan"][1]
    assert "failed on rank" not in run["ranks"][0]["errors"]["nan"][1]
