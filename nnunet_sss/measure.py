"""Measure any segmentation network: parameters, FLOPs, peak training memory, train-step time.

One function, `measure_network`, used by `python -m nnunet_sss.bench.network` and by the
compare tool. It knows nothing of nnU-Net: give it a module, the input shape of one sample
(channels first, no batch) and the batch size.

How each number is taken (so that two networks measured the same way compare fairly):
- parameters: trainable parameters (`requires_grad`).
- FLOPs: the formulas of `torch.utils.flop_counter` (FlopCounterMode's) over one forward (and one forward+backward)
  of one batch. It counts matmuls and convolutions (2 FLOPs per multiply-add); elementwise
  ops, norms, grid_sample and custom ops without a registered formula count 0.
- peak training memory: the extra memory one forward+backward (gradients included, from
  `set_to_none` gradients) needs above the model and the input batch. On CUDA,
  `torch.cuda.max_memory_allocated` after a reset. On CPU there is no allocator peak
  counter, so the step runs in a fresh Python subprocess (no allocator cache left over from
  earlier work) that resets the kernel's resident-set high-water mark (`/proc/self/clear_refs`)
  and reports VmHWM minus the resident set just before the step; without clear_refs it falls
  back to `ru_maxrss`. The figure includes allocator fragmentation and one-time workspaces,
  as a real training process would.
- step time: median wall time of full train steps (forward, loss over every output, backward,
  SGD step, zero_grad) after warm-up steps; CUDA is synchronised around each step. Also the
  median process CPU time of a step: on a loaded shared machine it moves less than wall time
  (with one intra-op thread it is the cleanest figure to compare two networks by).
- bytes saved for backward (`saved_bytes`): what autograd holds for backward during one train
  step, counted with `torch.autograd.graph.saved_tensors_hooks`, one storage once however many
  saved tensors view it. Parameters are reported apart (they are held anyway); everything else
  (the input batch, activations, copies of parameters such as fp16 casts) counts. Two figures:
  what is held when the forward and the loss end, and the most held at once over the whole step,
  which includes what activation checkpointing saves while it recomputes a region in backward
  (those tensors go through torch.utils.checkpoint's own hooks, which this function observes).
- `whole_batch()`: the mode a GPU runs the network in: the checkpointed RWKV layers rebuilt for
  the whole batch at once, not in CPU micro-batches (nnunet_sss/network/block.py).
The loss is cross-entropy against random labels for each output (deep-supervision lists: one
term per output at that output's resolution), which costs the same as nnU-Net's loss up to
the Dice term's elementwise work.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn
import torch.utils.checkpoint as torch_checkpoint
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


@dataclass
class NetworkMeasurement:
    """What `measure_network` returns; `as_dict()` gives JSON-ready numbers."""

    input_shape: tuple            # (channels, *spatial), one sample
    batch_size: int
    device: str
    amp: bool
    params: int
    flops_forward: Optional[int] = None        # one forward of one batch
    flops_train: Optional[int] = None          # one forward + backward of one batch
    peak_memory_bytes: Optional[int] = None    # extra live tensor memory of one forward+backward
    memory_method: Optional[str] = None        # "cuda_max_allocated" | "profiler_live_tensors"
    peak_rss_bytes: Optional[int] = None       # CPU: resident-set growth of the step in a fresh process
    rss_method: Optional[str] = None           # "subprocess_vmhwm" | "subprocess_ru_maxrss" | ...
    step_time_s: Optional[float] = None        # median train-step wall time
    step_times_s: list = field(default_factory=list)
    cpu_time_s: Optional[float] = None         # median process CPU time of a train step

    def as_dict(self) -> dict:
        return asdict(self)


def measure_network(
    network: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    steps: int = 5,
    warmup: int = 2,
    amp: Optional[bool] = None,
    flops: bool = True,
    memory: bool = True,
    timing: bool = True,
    compile: bool = False,
    seed: int = 0,
) -> NetworkMeasurement:
    """Measure `network` for inputs of shape (batch_size, *input_shape).

    input_shape: (channels, *spatial) of one sample, e.g. (1, 40, 56, 40).
    device: where to run; the network is moved there (and left there, in train mode).
    steps / warmup: timed and untimed train steps for the median step time.
    amp: fp16 autocast as nnU-Net uses it; None = on for CUDA, off for CPU.
    flops / memory / timing: switch each measurement off to save time.
    compile: measure `torch.compile(network)`, as nnU-Net trains on a GPU by default (FLOPs are
        still counted on the eager network; one untimed step compiles it first).
    The network may return a tensor or a list/tuple of tensors (deep supervision).
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) < 2:
        raise ValueError(f"input_shape must be (channels, *spatial) of one sample, got {input_shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    if amp is None:
        amp = device.type == "cuda"
    network = network.to(device).train()
    result = NetworkMeasurement(
        input_shape=input_shape, batch_size=int(batch_size), device=str(device), amp=bool(amp),
        params=sum(p.numel() for p in network.parameters() if p.requires_grad),
    )
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *input_shape), generator=gen).to(device)
    if flops:
        result.flops_forward, result.flops_train = _count_flops(network, x, amp)
    if compile:
        torch._dynamo.reset()  # compiled afresh, as in its own nnU-Net process (no dynamic-shape recompiles)
        network = torch.compile(network)
        _forward_backward(network, x, amp)
        with torch.no_grad(), _autocast(x.device, amp):
            network(x)  # the no-grad graph too (the timed steps draw their targets from it)
        network.zero_grad(set_to_none=True)
    if memory:
        if device.type == "cuda":
            result.peak_memory_bytes, result.memory_method = _cuda_peak_memory(network, x, amp), "cuda_max_allocated"
        else:
            result.peak_rss_bytes, result.rss_method, result.peak_memory_bytes = _cpu_peak_memory(network, x, amp)
            result.memory_method = "profiler_live_tensors"
    if timing:
        saved = {k: v.detach().clone() for k, v in network.state_dict().items()}
        result.step_times_s, cpu_times = _time_steps(network, x, amp, steps, warmup, seed)
        result.step_time_s = statistics.median(result.step_times_s)
        result.cpu_time_s = statistics.median(cpu_times)
        network.load_state_dict(saved)  # the timed SGD steps leave the caller's weights as they were
    return result


# What one op's time is spent on, by its profiler name; the first pattern that matches wins.
STEP_PARTS = (
    ("convolutions", r"conv"),
    ("matmuls", r"^aten::(mm|bmm|addmm|baddbmm|matmul|linear)$"),
    ("Bi-WKV", r"bi_wkv"),
    ("point sampler", r"linear_sample|grid_sampler"),
    ("norms", r"norm"),
    ("gathers and scatters", r"index|gather|scatter|take"),
    ("copies and concatenations", r"^aten::(copy_|cat|clone|contiguous|_to_copy|stack)$"),
    ("other ops", r""),
)


def step_breakdown(network: nn.Module, input_shape: Sequence[int], batch_size: int, device="cpu",
                   amp: Optional[bool] = None, inference: bool = False) -> dict:
    """Where one forward+backward's time goes: the profiler's self time of every op (CPU time on
    the CPU, GPU time on CUDA), summed per `STEP_PARTS` entry, in ms. One untimed step first.
    Self times do not overlap, so the parts add up to the profiled time ("total"). `amp` as in
    `measure_network`: fp16 autocast on CUDA unless given. `inference`: one forward in eval
    mode under torch.inference_mode instead (a tile of nnU-Net's predictor)."""
    device = torch.device(device)
    amp = device.type == "cuda" if amp is None else amp
    x = torch.randn((batch_size, *input_shape), device=device)
    _step(network, x, amp, inference)
    network.zero_grad(set_to_none=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _step(network, x, amp, inference)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    network.zero_grad(set_to_none=True)
    parts = dict.fromkeys([name for name, _ in STEP_PARTS], 0.0)
    for row in prof.key_averages():
        if row.device_type != torch.autograd.DeviceType.CPU:
            continue  # kernels: their time is counted on the op that launched them
        us = row.self_device_time_total if device.type == "cuda" else row.self_cpu_time_total
        parts[_part(row.key)] += us / 1e3
    parts["total"] = sum(parts.values())
    return parts


class _OpTimer(TorchDispatchMode):
    """Process CPU time of every dispatched op (all of its threads), summed by op name."""

    def __init__(self):
        super().__init__()
        self.times, self.ops = {}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.process_time()
        out = func(*args, **(kwargs or {}))
        name = func._schema.name
        self.times[name] = self.times.get(name, 0.0) + time.process_time() - start
        self.ops += 1
        return out


OPS_TIME, FORWARD_TIME, OPS, GFLOP = "sum of the ops (timed)", "forward (untimed)", "ops dispatched", "GFLOP (matmuls, convs)"


def forward_breakdown(network: nn.Module, input_shape: Sequence[int], batch_size: int = 1, repeats: int = 5) -> dict:
    """Where one inference forward's CPU time goes (eval mode, torch.inference_mode, as nnU-Net's
    predictor runs a tile), in ms: each op's process CPU time, summed per `STEP_PARTS` entry
    (medians of `repeats` timed forwards after one untimed), their sum (`OPS_TIME`), the median
    CPU time of the same forward without the timer (`FORWARD_TIME`), the number of aten ops
    (`OPS`) and the forward's FLOPs (`GFLOP`, torch.utils.flop_counter's formulas: what the work
    would cost if every op ran at the same rate). CPU time rather than the profiler's wall clock: on a loaded machine it moves much
    less. Timing each op costs a few microseconds of its own (the Python dispatch mode wraps
    its outputs), so with many small ops `OPS_TIME` can exceed `FORWARD_TIME`."""
    x = torch.randn((batch_size, *input_shape))
    network.eval()
    forward, timers = [], []
    with torch.inference_mode():
        network(x)
        for _ in range(repeats):
            start = time.process_time()
            network(x)
            forward.append(time.process_time() - start)
            timer = _OpTimer()
            with timer:
                network(x)
            timers.append(timer)
    parts = {}
    for name, _ in STEP_PARTS:
        parts[name] = 1e3 * statistics.median(
            sum(t for op, t in timer.times.items() if _part(op) == name) for timer in timers)
    parts[OPS_TIME] = sum(parts.values())
    parts[FORWARD_TIME] = 1e3 * statistics.median(forward)
    parts[OPS] = timers[0].ops
    with torch.no_grad(), _FlopCounter() as flops:  # under inference_mode convs reach no formula
        network(x)
    parts[GFLOP] = flops.total / 1e9
    return parts


def _part(op_name: str) -> str:
    return next(name for name, pattern in STEP_PARTS if re.search(pattern, op_name))


def _outputs(out):
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _targets(outs, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    return [torch.randint(0, o.shape[1], (o.shape[0], *o.shape[2:]), generator=gen).to(o.device) for o in outs]


def _loss(out, targets=None, seed=0):
    outs = _outputs(out)
    if targets is None:
        targets = _targets(outs, seed)
    return sum(nn.functional.cross_entropy(o.float(), t) for o, t in zip(outs, targets))


def _autocast(device, amp):
    return torch.autocast(device.type, dtype=torch.float16, enabled=bool(amp))


def _forward_backward(network, x, amp):
    with _autocast(x.device, amp):
        out = network(x)
    _loss(out).backward()


class _FlopCounter(TorchDispatchMode):
    """FlopCounterMode's per-op formulas without its module tracker: the tracker hooks every
    module's backward from inside the autograd engine, which cannot follow the nested backward
    of a checkpointed RWKV layer's rebuild."""

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            self.total += formula(*args, **(kwargs or {}), out_val=out)
        return out


def _step(network, x, amp, inference):
    """A train step's forward+backward, or (`inference`) one eval forward under inference_mode."""
    if not inference:
        return _forward_backward(network, x, amp)
    network.eval()
    with torch.inference_mode(), _autocast(x.device, amp):
        network(x)


def _count_flops(network, x, amp):
    network.zero_grad(set_to_none=True)
    with _FlopCounter() as counter:
        with torch.no_grad(), _autocast(x.device, amp):
            network(x)
    forward = counter.total
    with _FlopCounter() as counter:
        _forward_backward(network, x, amp)
    network.zero_grad(set_to_none=True)
    return int(forward), int(counter.total)


def _cuda_peak_memory(network, x, amp):
    _forward_backward(network, x, amp)  # warm-up: cuDNN workspaces, autotuning
    network.zero_grad(set_to_none=True)
    torch.cuda.synchronize(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    before = torch.cuda.memory_allocated(x.device)
    _forward_backward(network, x, amp)
    torch.cuda.synchronize(x.device)
    peak = torch.cuda.max_memory_allocated(x.device) - before
    network.zero_grad(set_to_none=True)
    return int(peak)


def _live_tensor_peak(network, x, amp):
    """Peak of the live tensor bytes allocated during one forward+backward (profiler events)."""
    from torch.profiler import ProfilerActivity, profile

    network.zero_grad(set_to_none=True)
    _forward_backward(network, x, amp)  # one-time lazy state (scan plans, workspaces) out of the way
    network.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _forward_backward(network, x, amp)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    network.zero_grad(set_to_none=True)
    return int(peak)


def _cpu_peak_memory(network, x, amp):
    """In a fresh subprocess: the resident-set growth of one forward+backward, then the live
    tensor peak of another (the profiler's chatter stays in the child's stderr).
    Returns (rss bytes, rss method, live bytes)."""
    with tempfile.TemporaryDirectory(prefix="nnunet_sss_measure_") as tmp:
        path = os.path.join(tmp, "job.pt")
        try:
            network.zero_grad(set_to_none=True)
            torch.save({"network": network, "x": x.cpu(), "amp": amp}, path)
        except Exception as exc:  # a network that cannot be pickled: measure here, and say so
            warnings.warn(f"measure_network: the network cannot be pickled ({exc!r}); peak memory is "
                          "measured in this process, where cached allocator memory can hide part of it")
            return (*_rss_peak_of_step(network, x, amp), _live_tensor_peak(network, x, amp))
        env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
        proc = subprocess.run(
            [sys.executable, "-c", f"import sys; from {__name__} import _child; _child(sys.argv[1])", path],
            capture_output=True, text=True, env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"measure_network: the memory subprocess failed:\n{proc.stderr[-4000:]}")
        reply = json.loads(proc.stdout.strip().splitlines()[-1])
        return reply["rss"], "subprocess_" + reply["method"], reply["live"]


def _child(path):
    job = torch.load(path, weights_only=False)
    network, x, amp = job["network"].train(), job["x"], job["amp"]
    rss, method = _rss_peak_of_step(network, x, amp)
    print(json.dumps(dict(rss=rss, method=method, live=_live_tensor_peak(network, x, amp))))


def _read_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _rss_peak_of_step(network, x, amp):
    """Resident-set growth of one forward+backward in this process: (bytes, method)."""
    import gc

    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        before, method = _read_status_kib("VmRSS"), "vmhwm"
    except OSError:
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    _forward_backward(network, x, amp)
    after = _read_status_kib("VmHWM") if method == "vmhwm" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    network.zero_grad(set_to_none=True)
    return int(max(after - before, 0) * 1024), method


def _time_steps(network, x, amp, steps, warmup, seed):
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3, momentum=0.99, nesterov=True)
    with torch.no_grad(), _autocast(x.device, amp):
        targets = _targets(_outputs(network(x)), seed)
    times, cpu_times = [], []
    for i in range(warmup + steps):
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with _autocast(x.device, amp):
            out = network(x)
        _loss(out, targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return times, cpu_times


@contextlib.contextmanager
def whole_batch():
    """Rebuild checkpointed RWKV layers for the whole batch at once, as on a GPU, on any device
    (nnunet_sss/network/block.py splits the rebuild into micro-batches on the CPU)."""
    from nnunet_sss.network.block import whole_batch_rebuild

    with whole_batch_rebuild():
        yield


@dataclass
class SavedBytes:
    """Bytes autograd holds for backward over one train step, each storage counted once."""

    forward: int      # held when the forward and the loss end (parameters apart)
    peak: int         # most held at once over forward and backward, checkpoint recomputation included
    parameters: int   # parameter storages saved (held anyway)


class _SavedLedger:
    """Storages held by saved tensors right now: a storage enters with its first saved tensor and
    leaves when the last one is released (a saved tensor holds its storage alive, so a live
    storage's address is never reused)."""

    def __init__(self, parameters):
        self.parameters = {_storage_key(p) for p in parameters}
        self.parameter_bytes = {}
        self.held = {}  # storage key -> [saved tensors holding it, bytes]
        self.live = self.peak = 0

    def hold(self, t: torch.Tensor) -> torch.Tensor:
        """t counted until the returned tensor (what autograd keeps instead of t) is freed."""
        key, nbytes = _storage_key(t), t.untyped_storage().nbytes()
        if key in self.parameters:
            self.parameter_bytes[key] = nbytes
            return t
        entry = self.held.setdefault(key, [0, nbytes])
        if entry[0] == 0:
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        kept = t.detach()
        weakref.finalize(kept, self._release, key)
        return kept

    def _release(self, key):
        entry = self.held[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.held[key]


def _storage_key(t: torch.Tensor):
    storage = t.untyped_storage()
    return storage.device, storage.data_ptr()


@contextlib.contextmanager
def _recomputation_saved_into(ledger: _SavedLedger):
    """Route what torch.utils.checkpoint saves while recomputing a region in backward through
    `ledger` too: the recomputation pushes its own saved-tensor hooks (above any of the caller's)."""
    hook = getattr(torch_checkpoint, "_recomputation_hook", None)
    if hook is None:
        raise RuntimeError(f"saved_bytes: torch {torch.__version__} has no torch.utils.checkpoint."
                           "_recomputation_hook, so tensors saved by checkpoint recomputation cannot be counted")

    class Observed(hook):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            recompute = self.pack_hook

            def pack_hook(x):
                return recompute(ledger.hold(x))

            pack_hook._checkpoint_internal = True  # checkpoint tells its own hooks from the caller's by this
            self.pack_hook = pack_hook

    torch_checkpoint._recomputation_hook = Observed
    try:
        yield
    finally:
        torch_checkpoint._recomputation_hook = hook


def saved_bytes(network: nn.Module, x: torch.Tensor, amp: bool = False) -> SavedBytes:
    """Bytes saved for backward by one train step of `network` on batch x (see the module's
    docstring for what counts). One untimed step first, so that cached set-up is not counted."""
    network.zero_grad(set_to_none=True)
    _forward_backward(network, x, amp)
    network.zero_grad(set_to_none=True)
    ledger = _SavedLedger(network.parameters())
    with torch.autograd.graph.saved_tensors_hooks(ledger.hold, lambda kept: kept), \
            _recomputation_saved_into(ledger):
        with _autocast(x.device, amp):
            out = network(x)
        loss = _loss(out)
        forward = ledger.live
        del out
        loss.backward()
    del loss
    network.zero_grad(set_to_none=True)
    return SavedBytes(forward=forward, peak=ledger.peak, parameters=sum(ledger.parameter_bytes.values()))
