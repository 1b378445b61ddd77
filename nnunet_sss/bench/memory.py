"""The planner's memory model (plans/memory.py) against measured training peaks.

    python -m nnunet_sss.bench.memory                                  # the four plans, their own batch sizes
    python -m nnunet_sss.bench.memory --plans large3d planned8gb --batch 1 2
    python -m nnunet_sss.bench.memory --plans-file PLANS.json --configuration 3d_fullres
    python -m nnunet_sss.bench.memory --option hidden_ratio=1           # any RWKVSSSUNet option
    python -m nnunet_sss.bench.memory --model-only --plans --planned 4 8 16 40   # what the planner plans

Per plan and batch size: the model's step peak (one forward+backward: activations and parameter
gradients) and the measured one. On the CPU the measurement is the peak of the live tensor bytes
of a forward+backward (`_live_tensor_peak`), in float32, with the checkpointed layers rebuilt for
the whole batch as a GPU rebuilds them (`whole_batch_rebuild`), so it is the GPU's float32 peak
without allocator caching. On CUDA it is `torch.cuda.max_memory_allocated` (float32; with --amp
under fp16 autocast as nnU-Net trains, which the float32 model bounds from above). The goal is
within 15% of the measurement on every plan. A measurement the machine lacks the free memory
for is skipped and says so.

Plans: hippocampus2d, hippocampus3d and large3d as in bench/network.py, and planned8gb, the
3d_fullres configuration that `nnunet-sss plans --gpu-memory-target 8` writes for a synthetic
dataset fingerprint (SYNTHETIC_DATASET: 1 mm voxels, median image 160x200x160, 101 cases).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from unittest import mock

import torch

from nnunet_sss.measure import _cuda_peak_memory, _live_tensor_peak
from nnunet_sss.bench.network import PLANS, _available_bytes, _cpu_name, _parse_option, plans_from_file
from nnunet_sss.network.block import whole_batch_rebuild
from nnunet_sss.network.unet import RWKVSSSUNet
from nnunet_sss.phantom import write_fingerprinted_dataset
from nnunet_sss.plans.memory import step_cost

GOAL = 0.15
SYNTHETIC_DATASET = dict(dataset_id=901, name="SyntheticMRI", median_shape=(160, 200, 160), spacing=(1.0, 1.0, 1.0),
                         num_train=101)
MiB = 2 ** 20


def planned_plan(target_gb: float, configuration: str = "3d_fullres") -> dict:
    """The configuration that the memory planner writes for SYNTHETIC_DATASET at `target_gb`, as a
    PLANS entry (planned in a temporary nnU-Net workspace)."""
    from nnunet_sss.plans.writer import write_gpu_memory_plans

    with tempfile.TemporaryDirectory(prefix="nnunet_sss_memory_") as root:
        folders = {k: os.path.join(root, k) for k in ("nnUNet_raw", "nnUNet_preprocessed")}
        write_fingerprinted_dataset(folders["nnUNet_raw"], folders["nnUNet_preprocessed"], **SYNTHETIC_DATASET)
        with mock.patch.dict(os.environ, folders):
            path = write_gpu_memory_plans(str(SYNTHETIC_DATASET["dataset_id"]), target_gb)
        return plans_from_file(path, configuration)


def measured_peak(network, input_shape, batch: int, device: str, amp: bool) -> int:
    """The measured peak of one forward+backward above the weights and the input (see above)."""
    x = torch.randn((batch, *input_shape), device=device)
    network = network.to(device).train()
    if device.startswith("cuda"):
        return _cuda_peak_memory(network, x, amp)
    with whole_batch_rebuild():
        return _live_tensor_peak(network, x, amp)


def compare(name: str, plan: dict, options: dict, batch: int, device: str, amp: bool, measure: bool = True) -> dict:
    """One row: the model's and the measured step peak of `plan` at `batch` (measured None if skipped)."""
    torch.manual_seed(0)
    network = RWKVSSSUNet(**plan["kwargs"], **options)
    estimate = step_cost(network, plan["patch"]).at(batch)
    row = dict(plan=name, patch="x".join(map(str, plan["patch"])), batch=batch,
               params=sum(p.numel() for p in network.parameters()), estimate=estimate, measured=None)
    free = _available_bytes()
    if not measure or (device == "cpu" and free is not None and 1.3 * estimate > free):
        note = "not measured" if not measure else \
            f"skipped: needs ~{1.3 * estimate / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
        print(f"| {name} | {row['patch']} | {batch} | {estimate / MiB:.0f} | {note} | |", flush=True)
        return row
    row["measured"] = measured_peak(network, (plan["kwargs"]["input_channels"], *plan["patch"]), batch, device, amp)
    ratio = row["measured"] / estimate
    # under fp16 autocast the float32 model is an upper bound, not an estimate
    verdict = "fp16" if amp else "ok" if abs(ratio - 1) <= GOAL else "MISSED"
    print(f"| {name} | {row['patch']} | {batch} | {estimate / MiB:.0f} | {row['measured'] / MiB:.0f} | "
          f"{ratio:.3f} ({verdict}) |", flush=True)
    return row


def main(argv=None) -> int:
    plan_names = [*PLANS, "planned8gb"]
    parser = argparse.ArgumentParser(prog="python -m nnunet_sss.bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="*", default=plan_names, choices=plan_names)
    parser.add_argument("--planned", nargs="*", type=float, default=[], metavar="GB",
                        help="also the 3d_fullres plans the planner writes for SYNTHETIC_DATASET at these GPU sizes")
    parser.add_argument("--plans-file", help="an nnU-Net plans JSON (with --configuration), measured after --plans")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--batch", nargs="*", type=int, default=None,
                        help="batch sizes to measure each plan at (default: the plan's own)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                        help="an RWKVSSSUNet option for the plans that are not RWKV-SSS plans already (repeatable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="on CUDA: measure under fp16 autocast")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model-only", action="store_true", help="print the model's estimates, measure nothing")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if args.amp and not args.device.startswith("cuda"):
        parser.error("--amp measures nnU-Net's GPU training (fp16 autocast): use it with CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(_parse_option(o) for o in args.option)
    plans = {name: planned_plan(8) if name == "planned8gb" else PLANS[name] for name in args.plans}
    plans.update({f"planned{gb:g}gb": planned_plan(gb) for gb in args.planned})
    if args.plans_file:
        plans[os.path.basename(args.plans_file)] = plans_from_file(args.plans_file, args.configuration)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    how = "torch.cuda.max_memory_allocated" if args.device.startswith("cuda") else \
        "live-tensor peak, checkpointed layers rebuilt for the whole batch"
    print(f"# memory model vs measured step peak: torch {torch.__version__}, {device}; "
          f"{'fp16 autocast' if args.amp else 'float32'}, {how}; options {options or 'defaults'}")
    print("| plan | patch | batch | model (MiB) | measured (MiB) | measured / model |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name, plan in plans.items():
        is_rwkvsss_plans = "use_rwkv" in plan["kwargs"]
        for batch in args.batch or [plan["batch"]]:
            rows.append(compare(name, plan, {} if is_rwkvsss_plans else options, batch, args.device, args.amp,
                                not args.model_only))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
