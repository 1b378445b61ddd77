"""The dynamic upsampling's point sampler: `linear_sample` per backend at the decoder's shapes.

    python -m nnunet_sss.bench.sample                          # Hippocampus plans, CPU
    python -m nnunet_sss.bench.sample --plans hippocampus3d --batch 2 --device cpu

For each decoder stage of a plan (the skip's width, the deeper map's size, the stride), the
forward and forward+backward time of `linear_sample` with every backend that runs on the
device ('cpp': the channels-last C++ kernel; 'torch': F.grid_sample), as measured in the same
run, round-robin, fastest of --repeats; the offsets are random, a few tenths of a voxel, as
after some training.
"""
from __future__ import annotations

import argparse
import sys

import torch

from nnunet_sss.bench.network import PLANS
from nnunet_sss.bench.wkv import _best_times
from nnunet_sss.kernels import linear_sample


def decoder_shapes(plan: dict, batch: int):
    """(batch, skip width, deeper map's size, stride) per decoder stage, deepest first."""
    kwargs = plan["kwargs"]
    sizes = [tuple(plan["patch"])]
    for stride in kwargs["strides"][1:]:
        sizes.append(tuple(s // f for s, f in zip(sizes[-1], stride)))
    return [(batch, kwargs["features_per_stage"][s - 1], sizes[s], tuple(kwargs["strides"][s]))
            for s in range(len(sizes) - 1, 0, -1)]


def _case(batch, chans, size, stride, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out_size = tuple(n * f for n, f in zip(size, stride))
    axes = [(torch.arange(m) + 0.5) / f - 0.5 for m, f in zip(out_size, stride)]
    base = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    coords = base + 0.3 * torch.randn(batch, *out_size, len(size), generator=gen)
    x = torch.randn(batch, chans, *size, generator=gen)
    grad = torch.randn(batch, chans, *out_size, generator=gen)
    return x.to(device), coords.to(device), grad.to(device)


def time_backends(batch, chans, size, stride, device, repeats):
    x, coords, grad = _case(batch, chans, size, stride, device)
    backends = ["cpp", "torch"] if device.type == "cpu" else ["torch"]
    leaves = {name: (x.clone().requires_grad_(), coords.clone().requires_grad_()) for name in backends}

    def forward(name):
        return lambda: linear_sample(x, coords, backend=name)

    def step(name):
        def run():
            a, b = leaves[name]
            a.grad = b.grad = None
            linear_sample(a, b, backend=name).backward(grad)
        return run

    fwd = _best_times({name: forward(name) for name in backends}, repeats, device)
    both = _best_times({name: step(name) for name in backends}, repeats, device)
    return {name: (fwd[name], both[name]) for name in backends}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plans", nargs="+", default=["hippocampus3d", "hippocampus2d"], choices=sorted(PLANS))
    parser.add_argument("--batch", type=int, default=None, help="default: 2 for 3D, 32 for 2D (the CPU protocol's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"linear_sample on {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'plan':>14} {'batch':>5} {'C':>4} {'deeper map':>14} {'stride':>10} {'backend':>7} "
          f"{'fwd ms':>8} {'f+b ms':>8} {'f+b vs torch':>12}")
    for name in args.plans:
        plan = PLANS[name]
        batch = args.batch or (2 if len(plan["patch"]) == 3 else 32)
        for shape in decoder_shapes(plan, batch):
            times = time_backends(*shape, device, args.repeats)
            for backend, (fwd, both) in times.items():
                ratio = both / times["torch"][1]
                print(f"{name:>14} {shape[0]:>5} {shape[1]:>4} {'x'.join(map(str, shape[2])):>14} "
                      f"{'x'.join(map(str, shape[3])):>10} {backend:>7} {fwd * 1e3:8.2f} {both * 1e3:8.2f} "
                      f"{ratio:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
