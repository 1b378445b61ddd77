"""DDP (nnU-Net's -num_gpus) on the CPU: gloo, two processes, two steps (DDP reports unused
parameters only at the step after), gradients equal across ranks and equal to the mean of the
ranks' gradients computed without DDP, deep supervision on and off."""
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


def _averaged_without_ddp(deep_supervision):
    """What DDP must compute, in one process: the same two SGD steps, each on the mean of the
    gradients of the two ranks' batches (drawn from the ranks' seeds); the last step's gradient."""
    from nnunet_sss import RWKVSSSUNet

    torch.manual_seed(0)
    net = RWKVSSSUNet(**tiny_kwargs(3, deep_supervision=deep_supervision))
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2)
    generators = [torch.Generator().manual_seed(1 + rank) for rank in range(2)]
    for _ in range(2):
        per_rank = []
        for generator in generators:
            out = net(torch.randn(1, 1, 8, 12, 8, generator=generator))
            loss = sum(o.square().mean() for o in (out if isinstance(out, list) else [out]))
            per_rank.append(torch.autograd.grad(loss, list(net.parameters())))
        for p, *grads in zip(net.parameters(), *per_rank):
            p.grad = sum(grads) / len(grads)
        flat = torch.cat([p.grad.flatten() for p in net.parameters()])
        optimizer.step()
    return flat


@pytest.mark.parametrize("deep_supervision", [True, False])
def test_ddp_two_processes(tmp_path, deep_supervision):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), deep_supervision), nprocs=2, join=True)
    result = torch.load(tmp_path / "0.pt")
    a, b = result["grads"]
    assert torch.equal(a, b)           # every rank holds the same gradient
    # and it is the mean of the two ranks' different gradients (summed in another order: rounding)
    torch.testing.assert_close(a, _averaged_without_ddp(deep_supervision), rtol=1e-4, atol=1e-7)
