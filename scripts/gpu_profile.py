"""Where an eager GPU train step of RWKV-SSS goes: step time and peak memory of the checkpointing
variants, then one profiled step (step 5 of `scripts/gpu_check.sh`; needs CUDA).

Hippocampus 3d plans at their batch (9), fp16 autocast and `cudnn.benchmark` as nnU-Net trains.
Rows: PlainConvUNet; RWKV-SSS with the rebuild of checkpointed layers whole (the default on
CUDA), in micro-batches (the CPU's way), and without checkpointing; the same for the protocol's
setting (`rwkv_first_stage=1, hidden_ratio=1`). The profile counts the CUDA kernels of one
step and the time the GPU is busy with them: far less than the wall time means the step is
bound by launches, not by the GPU.
"""
import statistics
import time

import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch.profiler import ProfilerActivity, profile

from nnunet_sss.measure import _forward_backward, _time_steps
from nnunet_sss.bench.network import PLANS
from nnunet_sss.network import RWKVSSSUNet, block


def median_step(net, x, steps=10, warmup=3):
    """Median train step (forward, backward, optimizer step), timed as the network benchmark times it."""
    return statistics.median(_time_steps(net, x, True, steps, warmup, seed=0)[0])


def main():
    if not torch.cuda.is_available():
        raise SystemExit("scripts/gpu_profile.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = True
    plan = PLANS["hippocampus3d"]
    x = torch.randn(plan["batch"], 1, *plan["patch"], device="cuda")
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, hippocampus3d batch {plan['batch']}, fp16 autocast")
    rows = [("PlainConvUNet", lambda: PlainConvUNet(**plan["kwargs"]), block.WHOLE_BATCH_DEVICES)]
    for options in ({}, {"rwkv_first_stage": 1, "hidden_ratio": 1}):
        build = lambda extra={}, options=options: RWKVSSSUNet(**plan["kwargs"], **options, **extra)
        rows += [(f"RWKV-SSS {options} rebuild whole", build, ("cuda",)),
                 (f"RWKV-SSS {options} rebuild in micro-batches", build, ()),
                 (f"RWKV-SSS {options} no checkpointing", lambda b=build: b({"rwkv_checkpoint": False}), ())]
    default_whole = block.WHOLE_BATCH_DEVICES
    for name, build, whole_on in rows:
        block.WHOLE_BATCH_DEVICES = whole_on
        torch.manual_seed(0)
        net = build().cuda()
        torch.cuda.reset_peak_memory_stats()
        step = median_step(net, x)
        print(f"{name}: median step {step * 1e3:.1f} ms, peak allocated {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB", flush=True)
        del net
        torch.cuda.empty_cache()
    block.WHOLE_BATCH_DEVICES = default_whole

    net = RWKVSSSUNet(**plan["kwargs"]).cuda()
    median_step(net, x, steps=1)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        _forward_backward(net, x, True)
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e3
    print(f"RWKV-SSS defaults, one profiled step: {len(kernels)} CUDA kernels, GPU busy {busy:.1f} ms of {wall * 1e3:.1f} ms wall")
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))


if __name__ == "__main__":
    main()
