"""DistributedDataParallel: two CPU processes over gloo keep identical masks at every refresh and
at every RigL update (whose dense gradients differ per rank until averaged)."""

import os
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available() or sys.platform == "win32",
    reason="needs torch.distributed with gloo",
)


def _worker(rank: int, world: int, init_file: str, out_dir: str, broadcast_buffers: bool, update: str) -> None:
    import nmsparse as nms
    from nmsparse.nn import sparsified_parameters, sparsify_

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP broadcasts rank 0's at wrap time
        model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
        sparsify_(model, "2:4T", method="exact", update=update, update_every=2, total_steps=12, exclude="4")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.13 renames the flag; both work
            ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=broadcast_buffers)
        # DDP syncs parameters but not our masks' first value unless buffers are broadcast: refresh
        # once from the (now identical) dense weights so both ranks start from the same mask.
        nms.update_masks_(model, force=True)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.3)
        g = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        history = []
        for step in range(12):
            x = torch.randn(16, 32, generator=g)
            opt.zero_grad()
            ddp(x).square().mean().backward()
            opt.step()
            masks = [m.parametrizations[p][0].mask.clone() for m, p in sparsified_parameters(model).values()]
            history.append(torch.cat([mk.flatten() for mk in masks]))
        torch.save(torch.stack(history), os.path.join(out_dir, f"masks{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("update", ["refresh", "rigl"])
def test_ddp_two_processes_keep_identical_masks(tmp_path, update):
    # broadcast_buffers=False: DDP does not copy rank 0's mask buffers each step, so identical
    # masks come from the solver's determinism on identical (all-reduced) dense weights alone.
    broadcast_buffers = False
    init_file = str(tmp_path / "init")
    mp.start_processes(
        _worker, args=(2, init_file, str(tmp_path), broadcast_buffers, update), nprocs=2, join=True, start_method="spawn"
    )
    h0 = torch.load(tmp_path / "masks0.pt", weights_only=True)
    h1 = torch.load(tmp_path / "masks1.pt", weights_only=True)
    assert torch.equal(h0, h1)
    # The masks did change during training (the test would be vacuous otherwise).
    assert not torch.equal(h0[0], h0[-1])
