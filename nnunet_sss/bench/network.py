"""RWKV-SSS against nnU-Net's PlainConvUNet built from the same plans: parameters, FLOPs, peak
training memory and train-step time side by side, then how time and memory grow with the
input size.

    python -m nnunet_sss.bench.network                       # all plans, both sweeps
    python -m nnunet_sss.bench.network --plans hippocampus3d --sweep none
    python -m nnunet_sss.bench.network --plans-file nnUNetPlans.json --configuration 3d_fullres
    python -m nnunet_sss.bench.network --option 'rwkv_depths=[0,0,1,1]'   # any RWKVSSSUNet option
    python -m nnunet_sss.bench.network --params                           # parameter table only
    python -m nnunet_sss.bench.network --count-ops --plans hippocampus3d  # ops per step (GPU launches)
    python -m nnunet_sss.bench.network --count-ops --by-op --plans hippocampus3d   # ... and which ops
    python -m nnunet_sss.bench.network --host-syncs --plans hippocampus3d  # ops that stop the host
    python -m nnunet_sss.bench.network --saved-bytes --plans hippocampus3d   # bytes saved for backward
    python -m nnunet_sss.bench.network --breakdown --plans hippocampus3d --batch 2   # where a step's time goes

Every ratio compares two networks measured in the same run, one after the other, with
`nnunet_sss.measure.measure_network` (see there for how each figure is taken). A
measurement whose estimated memory exceeds what the machine has free is skipped and says so.
Goals (issue 4): parameters <= 0.8x, peak training memory <= 0.77x, train-step time <= 1.0x,
and time and memory growing linearly with the number of voxels.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import pydoc
import sys
from typing import Dict, Optional

import torch
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_sss.measure import (_cuda_peak_memory, _live_tensor_peak, measure_network, saved_bytes,
                                step_breakdown, whole_batch)
from nnunet_sss.step_ops import count_ops, host_syncs
from nnunet_sss.network.unet import RWKVSSSUNet

GOALS = {"params": 0.8, "memory": 0.77, "time": 1.0}


def _plain_kwargs(n_dims: int, features, strides, batch: int, patch, kernel=3, n_conv=2, classes=3, channels=1):
    conv, norm = {2: (nn.Conv2d, nn.InstanceNorm2d), 3: (nn.Conv3d, nn.InstanceNorm3d)}[n_dims]
    n_stages = len(features)
    return dict(
        kwargs=dict(input_channels=channels, n_stages=n_stages, features_per_stage=list(features), conv_op=conv,
                    kernel_sizes=[[kernel] * n_dims] * n_stages,
                    strides=[[s] * n_dims if isinstance(s, int) else list(s) for s in strides],
                    n_conv_per_stage=[n_conv] * n_stages, num_classes=classes,
                    n_conv_per_stage_decoder=[n_conv] * (n_stages - 1), conv_bias=True, norm_op=norm,
                    norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
                    nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True),
        batch=batch, patch=tuple(patch))


# The Hippocampus entries are the architectures, patches and batch sizes nnU-Net 2.8.1 plans for
# Dataset004 (tests/network/test_unet.py builds from a fresh planning run); the CPU-budget protocol
# trains them with batch 2 (3D) and 32 (2D): --batch. "large3d" is nnU-Net's default layout for a
# 128^3 patch with 6 stages.
PLANS = {
    "hippocampus3d": _plain_kwargs(3, [32, 64, 128, 256], [1, 2, 2, 2], 9, (40, 56, 40)),
    "hippocampus2d": _plain_kwargs(2, [32, 64, 128, 256], [1, 2, 2, 2], 366, (56, 40)),
    "large3d": _plain_kwargs(3, [32, 64, 128, 256, 320, 320], [1, 2, 2, 2, 2, 2], 2, (128, 128, 128)),
}
# Layouts of nnU-Net's kind for large images, for the probes at init (bench/erf.py, bench/wkv_probe.py),
# not benchmarked by default: "large2d" is the 2d layout nnU-Net plans for a 512x512 patch (8 stages,
# features capped at 512), "aniso3d" a 3d_fullres layout for MRI volumes of about 1.4 x 1.25 x 1.25 mm
# (an 80x160x128 patch, the first downsampling in-plane only).
LAYOUTS = {
    **PLANS,
    "large2d": _plain_kwargs(2, [32, 64, 128, 256, 512, 512, 512, 512], [1, 2, 2, 2, 2, 2, 2, 2], 12, (512, 512)),
    "aniso3d": _plain_kwargs(3, [32, 64, 128, 256, 320, 320], [1, (1, 2, 2), 2, 2, 2, (1, 2, 2)], 2, (80, 160, 128)),
}
SWEEPS = {
    "2d": (_plain_kwargs(2, [32, 64, 128, 256, 512, 512], [1, 2, 2, 2, 2, 2], 1, (0, 0)),
           [(s, s) for s in (128, 256, 512, 1024)]),
    # 5 stages: a 32^3 input still leaves a 2^3 bottleneck (instance norm needs > 1 voxel)
    "3d": (_plain_kwargs(3, [32, 64, 128, 256, 320], [1, 2, 2, 2, 2], 1, (0, 0, 0)),
           [(s, s, s) for s in (32, 64, 96, 128, 160)]),
}


def plans_from_file(path: str, configuration: str) -> dict:
    """An nnU-Net plans file's configuration -> the same dict as PLANS entries."""
    with open(path) as f:
        plans = json.load(f)
    config = plans["configurations"][configuration]
    arch = config["architecture"]
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    if "n_blocks_per_stage" in kwargs:  # ResEnc plans: compare against the plain layout of the same depth
        kwargs["n_conv_per_stage"] = kwargs.pop("n_blocks_per_stage")
        for key in ("block", "bottleneck_channels", "stem_channels"):
            kwargs.pop(key, None)
    kwargs.update(input_channels=len(plans.get("dataset_json", {}).get("channel_names", {"0": ""})) or 1,
                  num_classes=3, deep_supervision=True)
    return dict(kwargs=kwargs, batch=config["batch_size"], patch=tuple(config["patch_size"]))


def _available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _estimated_bytes(network, patch, batch) -> int:
    """A generous guess of one training step's peak: 4 bytes x 3 x the planner's activation units."""
    return int(4 * 3 * batch * network.compute_conv_feature_map_size(patch)) + 16 * sum(
        p.numel() for p in network.parameters())


def _measure(network, plan, args, flops=True):
    shape = (plan["kwargs"]["input_channels"], *plan["patch"])
    need, free = _estimated_bytes(network, plan["patch"], plan["batch"]), _available_bytes()
    if free is not None and args.device == "cpu" and need > 0.8 * free:
        return None, f"skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"
    m = measure_network(network, shape, plan["batch"], device=args.device, steps=args.steps, warmup=args.warmup,
                        flops=flops, memory=not args.no_memory, compile=args.compile)
    return m, None


def _fmt(value, unit):
    if value is None:
        return "-"
    if unit == "M":
        return f"{value / 1e6:.2f} M"
    if unit == "G":
        return f"{value / 1e9:.1f} G"
    if unit == "MiB":
        return f"{value / 2**20:.0f} MiB"
    return f"{value:.3f} s"


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def compare_plan(name: str, plan: dict, options: dict, args) -> dict:
    torch.manual_seed(0)
    baseline = PlainConvUNet(**plan["kwargs"])
    rwkv = RWKVSSSUNet(**plan["kwargs"], **options)
    rwkv.apply(rwkv.initialize)
    print(f"\n## {name}: patch {plan['patch']}, batch {plan['batch']}, "
          f"{plan['kwargs']['n_stages']} stages, features {plan['kwargs']['features_per_stage']}", flush=True)
    results = {}
    for label, network in (("PlainConvUNet", baseline), ("RWKV-SSS", rwkv)):
        m, note = _measure(network, plan, args)
        results[label] = m
        if note:
            print(f"{label}: {note}", flush=True)
    base, ours = results["PlainConvUNet"], results["RWKV-SSS"]
    rows = [("parameters", "params", "M", "params"), ("FLOPs fwd+bwd (matmul/conv)", "flops_train", "G", None),
            ("peak train memory (live tensors)", "peak_memory_bytes", "MiB", "memory"),
            ("peak train memory (process RSS)", "peak_rss_bytes", "MiB", None),
            ("train step (median wall)", "step_time_s", "s", "time"),
            ("train step (median CPU)", "cpu_time_s", "s", None)]
    print(f"| {'':32s} | {'PlainConvUNet':>14s} | {'RWKV-SSS':>14s} | {'ratio':>6s} | goal |")
    print(f"|{'-' * 34}|{'-' * 16}|{'-' * 16}|{'-' * 8}|------|")
    row_out = {}
    for title, field, unit, goal in rows:
        a = getattr(base, field) if base else None
        b = getattr(ours, field) if ours else None
        if a is None and field == "params":
            a = sum(p.numel() for p in baseline.parameters())
        if b is None and field == "params":
            b = sum(p.numel() for p in rwkv.parameters())
        r = _ratio(b, a)
        mark = "" if goal is None or r is None else ("<= %.2f %s" % (GOALS[goal], "ok" if r <= GOALS[goal] else "MISSED"))
        print(f"| {title:32s} | {_fmt(a, unit):>14s} | {_fmt(b, unit):>14s} | "
              f"{'-' if r is None else f'{r:.2f}x':>6s} | {mark} |", flush=True)
        row_out[field] = dict(baseline=a, rwkv=b, ratio=r)
    return row_out


def sweep(kind: str, options: dict, args) -> list:
    plan_template, sizes = SWEEPS[kind]
    if args.sweep_sizes:
        sizes = [tuple([s] * len(sizes[0])) for s in args.sweep_sizes]
    print(f"\n## growth with input size ({kind}, batch 1, {plan_template['kwargs']['n_stages']} stages)")
    print("| size | voxels | net | step time | time / voxel (x smallest) | peak memory | memory / voxel (x smallest) |")
    print("|---|---|---|---|---|---|---|")
    first: Dict[str, tuple] = {}
    out = []
    for size in sizes:
        plan = dict(plan_template, patch=size)
        voxels = math.prod(size)
        for label in ("PlainConvUNet", "RWKV-SSS"):
            torch.manual_seed(0)
            network = PlainConvUNet(**plan["kwargs"]) if label == "PlainConvUNet" else \
                RWKVSSSUNet(**plan["kwargs"], **options)
            m, note = _measure(network, plan, args, flops=False)
            if m is None:
                print(f"| {'x'.join(map(str, size))} | {voxels} | {label} | {note} | | | |", flush=True)
                continue
            t, mem = m.step_time_s / voxels, (m.peak_memory_bytes or 0) / voxels
            first.setdefault(label, (t, mem))
            print(f"| {'x'.join(map(str, size))} | {voxels} | {label} | {m.step_time_s:.2f} s | "
                  f"{t / first[label][0]:.2f} | {_fmt(m.peak_memory_bytes, 'MiB')} | "
                  f"{(mem / first[label][1]) if first[label][1] else float('nan'):.2f} |", flush=True)
            out.append(dict(size=size, net=label, **m.as_dict()))
    return out


def _both(plan: dict, options: dict):
    """(label, network) of PlainConvUNet and RWKV-SSS built from the plan, each from seed 0."""
    torch.manual_seed(0)
    yield "PlainConvUNet", PlainConvUNet(**plan["kwargs"])
    torch.manual_seed(0)
    yield "RWKV-SSS", RWKVSSSUNet(**plan["kwargs"], **options)


def breakdown_table(name: str, plan: dict, options: dict, device: str) -> dict:
    """One profiled forward+backward of each network, its self time per kind of op side by side."""
    shape = (plan["kwargs"]["input_channels"], *plan["patch"])
    parts = {}
    for label, network in _both(plan, options):
        parts[label] = step_breakdown(network.to(device), shape, plan["batch"], device)
    clock = "GPU" if device.startswith("cuda") else "CPU"
    print(f"\n## {name}: where one forward+backward's {clock} time goes (profiler self time, ms), "
          f"batch {plan['batch']}")
    print(f"| {'part':26s} | {'PlainConvUNet':>13s} | {'RWKV-SSS':>9s} | {'difference':>10s} |")
    print(f"|{'-' * 28}|{'-' * 15}|{'-' * 11}|{'-' * 12}|")
    for part, base in parts["PlainConvUNet"].items():
        ours = parts["RWKV-SSS"][part]
        print(f"| {part:26s} | {base:13.1f} | {ours:9.1f} | {ours - base:+10.1f} |", flush=True)
    return parts


def op_table(name: str, plan: dict, options: dict, top: int = 0) -> dict:
    """Ops of one forward+backward at batch 1, custom ops' own ops included (nnunet_sss.step_ops);
    with `top`, the most dispatched ops of each network side by side."""
    shape = (plan["kwargs"]["input_channels"], *plan["patch"])
    counts = {label: count_ops(network, shape) for label, network in _both(plan, options)}
    base, ours = counts["PlainConvUNet"], counts["RWKV-SSS"]
    inside = {label: sum(count.inside.values()) for label, count in counts.items()}
    print(f"{name}: aten ops per forward+backward (batch 1): PlainConvUNet {base.total}, "
          f"RWKV-SSS {ours.total} ({ours.total / base.total:.1f}x), options {options or 'defaults'}; "
          f"views among them: {base.views} and {ours.views}; "
          f"run inside custom ops: {inside['PlainConvUNet']} and {inside['RWKV-SSS']}", flush=True)
    if top:
        print("\n| op | PlainConvUNet | RWKV-SSS |\n|---|---|---|")
        for op, n in ours.by_op.most_common(top):
            print(f"| {op} | {base.by_op[op]} | {n} |")
        rest = ours.total - sum(n for _, n in ours.by_op.most_common(top))
        print(f"| (other {len(ours.by_op) - min(top, len(ours.by_op))} ops) | | {rest} |")
        for label, count in counts.items():
            if count.inside:
                print(f"{label}, ops run inside each custom op: "
                      + ", ".join(f"{op} {n} (+{count.by_op[op]} the op itself)" for op, n in count.inside.most_common()))
        print(flush=True)
    return counts


def sync_table(name: str, plan: dict, options: dict) -> dict:
    """Ops of one forward+backward at batch 1 that stop the host, per network, with their caller."""
    shape = (plan["kwargs"]["input_channels"], *plan["patch"])
    found = {}
    for label, network in _both(plan, options):
        found[label] = host_syncs(network, shape)
        print(f"{name}, {label}: {len(found[label])} ops that stop the host per forward+backward", flush=True)
        for sync in found[label]:
            print(f"  {sync.op} at {sync.where}" + (f" (inside {sync.within})" if sync.within else "")
                  + f": {sync.reason}")
    return found


def saved_bytes_table(name: str, plan: dict, options: dict, device: str) -> dict:
    """Bytes saved for backward and the live-tensor peak of one train step of each network at the
    plan's batch, fp32 on the CPU, checkpointed layers rebuilt whole (`whole_batch`); where CUDA
    is available also torch.cuda.max_memory_allocated of the same step, fp32 and fp16 autocast."""
    shape = (plan["kwargs"]["input_channels"], *plan["patch"])
    x = torch.randn((plan["batch"], *shape), generator=torch.Generator().manual_seed(0))
    rows = {"saved for backward, end of forward": {}, "saved for backward, peak (with recomputation)": {},
            "parameters saved (apart)": {}, "live tensors, peak": {}}
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        rows.update({"CUDA max allocated, fp32": {}, "CUDA max allocated, fp16 autocast": {}})
    for label, network in _both(plan, options):
        need, free = _estimated_bytes(network, plan["patch"], plan["batch"]), _available_bytes()
        if free is not None and need > 0.8 * free:
            print(f"{name}, {label}: skipped: needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free", flush=True)
            return None
        network.train()
        with whole_batch():
            saved = saved_bytes(network, x)
            rows["live tensors, peak"][label] = _live_tensor_peak(network, x, False)
        rows["saved for backward, end of forward"][label] = saved.forward
        rows["saved for backward, peak (with recomputation)"][label] = saved.peak
        rows["parameters saved (apart)"][label] = saved.parameters
        if cuda:
            network, gpu_x = network.to(device), x.to(device)
            rows["CUDA max allocated, fp32"][label] = _cuda_peak_memory(network, gpu_x, False)
            rows["CUDA max allocated, fp16 autocast"][label] = _cuda_peak_memory(network, gpu_x, True)
            network.cpu()
    print(f"\n## {name}: bytes of one train step, patch {plan['patch']}, batch {plan['batch']}, "
          f"checkpointed layers rebuilt for the whole batch")
    print(f"| {'':46s} | {'PlainConvUNet':>13s} | {'RWKV-SSS':>9s} | ratio |\n|{'-' * 48}|{'-' * 15}|{'-' * 11}|-------|")
    for title, row in rows.items():
        a, b = row["PlainConvUNet"], row["RWKV-SSS"]
        r = _ratio(b, a)
        print(f"| {title:46s} | {_fmt(a, 'MiB'):>13s} | {_fmt(b, 'MiB'):>9s} | "
              f"{'-' if r is None else f'{r:.2f}x':>5s} |", flush=True)
    return rows


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


PARAM_VARIANTS = (("defaults", {}), ("rwkv_first_stage=2", dict(rwkv_first_stage=2)),
                  ("hidden_ratio=1", dict(hidden_ratio=1)),
                  ("rwkv_first_stage=2, hidden_ratio=1", dict(rwkv_first_stage=2, hidden_ratio=1)),
                  ('upsample="transpose"', dict(upsample="transpose")), ("use_rwkv=False", dict(use_rwkv=False)))


def parameter_table() -> None:
    """Parameters of every plan's PlainConvUNet and of RWKV-SSS variants (no measuring)."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    print("| plan | PlainConvUNet | " + " | ".join(f"`{name}`" for name, _ in PARAM_VARIANTS) + " |")
    print("|---" * (len(PARAM_VARIANTS) + 2) + "|")
    for name, plan in PLANS.items():
        base = count(PlainConvUNet(**plan["kwargs"]))
        cells = [count(RWKVSSSUNet(**plan["kwargs"], **options)) for _, options in PARAM_VARIANTS]
        print(f"| {name} | {base / 1e6:.2f} M | " + " | ".join(f"{c / 1e6:.2f} M ({c / base:.2f}x)" for c in cells)
              + " |")


def _parse_option(text: str):
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnunet_sss.bench.network", description=__doc__.splitlines()[0])
    parser.add_argument("--plans", nargs="*", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--plans-file", help="an nnU-Net plans JSON (with --configuration) instead of --plans")
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--sweep", nargs="*", default=["2d", "3d"], choices=["2d", "3d", "none"])
    parser.add_argument("--sweep-sizes", nargs="*", type=int, help="edge lengths (multiples of 32)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=JSON",
                        help="an RWKVSSSUNet option, e.g. 'rwkv_depths=[0,0,1,1]' (repeatable)")
    parser.add_argument("--batch", type=int, help="override the plans' batch size")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile both networks first (nnU-Net's default on a GPU)")
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--params", action="store_true", help="only print the parameter table of all plans")
    parser.add_argument("--count-ops", action="store_true",
                        help="only count the aten ops of one forward+backward (batch 1) of each plan's networks")
    parser.add_argument("--by-op", type=int, nargs="?", const=20, default=0, metavar="N",
                        help="with --count-ops: also the N most dispatched ops of each network (default 20)")
    parser.add_argument("--host-syncs", action="store_true",
                        help="only list the ops of one forward+backward (batch 1) that stop the host")
    parser.add_argument("--saved-bytes", action="store_true",
                        help="only measure bytes saved for backward and the live-tensor peak of one train step, "
                             "checkpointed layers rebuilt for the whole batch as on a GPU")
    parser.add_argument("--breakdown", action="store_true",
                        help="only profile one forward+backward of each plan's networks: time per kind of op")
    args = parser.parse_args(argv)
    if args.params:
        parameter_table()
        return 0
    if args.by_op and not args.count_ops:
        parser.error("--by-op lists the ops --count-ops counts: use it with --count-ops")
    if args.compile and not args.device.startswith("cuda"):
        parser.error("--compile measures what nnU-Net does on a GPU (it never compiles on the CPU): use it with CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(_parse_option(o) for o in args.option)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{_cpu_name()}, {os.cpu_count()} cores"
    print(f"# RWKV-SSS vs PlainConvUNet — torch {torch.__version__}, device {args.device} ({device}), "
          f"{torch.get_num_threads()} threads, options {options or 'defaults'}"
          + (", both torch.compile'd" if args.compile else ", eager"))
    plans = {"plans-file": plans_from_file(args.plans_file, args.configuration)} if args.plans_file else \
        {name: PLANS[name] for name in args.plans}
    plans = {name: dict(plan, batch=args.batch or plan["batch"]) for name, plan in plans.items()}
    only = {"count_ops": lambda name, plan: op_table(name, plan, options, args.by_op),  # batch 1
            "host_syncs": lambda name, plan: sync_table(name, plan, options),  # batch 1
            "saved_bytes": lambda name, plan: saved_bytes_table(name, plan, options, args.device),
            "breakdown": lambda name, plan: breakdown_table(name, plan, options, args.device)}
    for flag, table in only.items():
        if getattr(args, flag):
            for name, plan in plans.items():
                table(name, plan)
            return 0
    report = {"options": options, "plans": {}, "sweeps": {}}
    for name, plan in plans.items():
        report["plans"][name] = compare_plan(name, plan, options, args)
    for kind in args.sweep:
        if kind != "none":
            report["sweeps"][kind] = sweep(kind, options, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
