"""DDP (nnU-Net's -num_gpus) on the CPU: gloo, two processes, two steps (DDP reports unused
parameters only at the step after), gradients equal across ranks, deep supervision on and off."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from network_cases import tiny_kwargs


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir, deep_supervision):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.nn.parallel import DistributedDataParallel as DDP
        from nnunet_sss import RWKVSSSUNet

        torch.manual_seed(0)
        net = RWKVSSSUNet(**tiny_kwargs(3, deep_supervision=deep_supervision))
        ddp = DDP(net)
        optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-2)
        torch.manual_seed(1 + rank)  # each rank its own batch
        for _ in range(2):
            x = torch.randn(1, 1, 8, 12, 8)
            out = ddp(x)
            outs = out if isinstance(out, list) else [out]
            loss = sum(o.square().mean() for o in outs)
            optimizer.zero_grad()
            loss.backward()
            flat = torch.cat([p.grad.flatten() for p in net.parameters()])
            optimizer.step()
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        torch.save({"grads": gathered, "n_params": len(list(net.parameters()))}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_ddp_two_processes(tmp_path, deep_supervision):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), deep_supervision), nprocs=2, join=True)
    result = torch.load(tmp_path / "0.pt")
    a, b = result["grads"]
    assert torch.equal(a, b)           # DDP averaged the two ranks' different gradients
    assert a.abs().sum() > 0
