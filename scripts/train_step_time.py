"""Seconds per RWKV-SSS train step (SGD, a squared-output loss, seed 0) on one of the bench's plans,
after one untimed step. Kept free of anything newer than the bench's PLANS table, so the same file
times an older checkout: run it with each checkout's environment, alternating, and compare.

    python scripts/train_step_time.py hippocampus2d 32 3 rwkv_first_stage=1 hidden_ratio=1
"""
import json
import sys
import time

import torch

from nnunet_sss.bench.network import PLANS
from nnunet_sss.network import RWKVSSSUNet


def main(plan: str, batch: str, steps: str, *options: str) -> None:
    spec = PLANS[plan]
    overrides = {key: json.loads(value) for key, value in (o.split("=", 1) for o in options)}
    torch.manual_seed(0)
    network = RWKVSSSUNet(**spec["kwargs"], **overrides)
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
    x = torch.randn(int(batch), spec["kwargs"]["input_channels"], *spec["patch"])

    def step():
        out = network(x)
        sum(o.float().square().mean() for o in (out if isinstance(out, (list, tuple)) else [out])).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(int(steps)):
        step()
    print(f"{(time.perf_counter() - start) / int(steps):.3f} s per train step")


if __name__ == "__main__":
    main(*sys.argv[1:])
