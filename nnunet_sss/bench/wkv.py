"""Bi-WKV speed and memory: `python -m nnunet_sss.bench.wkv` (a benchmark, not a test).

CPU, for T in {1k, 4k, 16k, 64k}, C = 64, N = 8, and for network shapes (large N, moderate T,
small C): forward and forward+backward time of the O(T) path used in training (backend
'cpp', or 'torch' where the extension cannot be built), against a plain elementwise pass over
the same k and v (exp(k) * v: the memory-bound floor), all measured interleaved in this run.
Effective bandwidth counts the bytes the operator cannot avoid: forward reads k, v and writes
y (12 B per element, the same as the floor); forward+backward adds reading k, v, grad y and
writing grad k, grad v (32 B per element). Also: peak extra resident memory of the backward
(in units of N*T*C fp32), the growth of time with T, and the speed-up over the O(T^2) float64
reference where that fits. On a CUDA GPU, also Triton forward+backward at T = 64k, C = 256
against the PyTorch path on the same GPU, as a share of the card's peak bandwidth.

Goals (docs/kernels.md): 16x T costs at most 20x time; forward <= 6x and forward+backward
<= 12x the floor; backward extra memory <= 4 N T C fp32; Triton >= half the card's peak.
"""
import argparse
import ctypes
import time
from pathlib import Path

import torch

from nnunet_sss.kernels import bi_wkv, bi_wkv_reference, op

FWD_BYTES = 12   # per element: read k, v; write y
STEP_BYTES = 32  # forward + backward: also read k, v, grad y; write grad k, grad v


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_times(fns, repeats, device):
    """Fastest of `repeats` runs of each fn (seconds), round-robin so that machine load hits
    them alike; the minimum is the least disturbed by other processes on a shared machine."""
    for fn in fns.values():  # warm-up (builds, autotuning, page faults)
        fn()
    _sync(device)
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: min(s) for name, s in samples.items()}


def _inputs(n, t, c, device, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    k = (torch.rand(n, t, c, generator=gen) * 6 - 3).to(device)
    v = torch.randn(n, t, c, generator=gen).to(device)
    w = torch.randn(c, generator=gen).to(device)
    u = torch.randn(c, generator=gen).to(device)
    grad_y = torch.randn(n, t, c, generator=gen).to(device)
    return k, v, w, u, grad_y


def _step_fn(k, v, w, u, grad_y, backend):
    leaves = [x.detach().requires_grad_() for x in (k, v, w, u)]

    def step():
        for x in leaves:
            x.grad = None
        bi_wkv(*leaves, backend=backend).backward(grad_y)

    return step


def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def backward_extra_memory(k, v, w, u, grad_y, backend):
    """Peak resident memory the backward adds (bytes), via VmHWM reset; None if unsupported."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        leaves = [x.detach().requires_grad_() for x in (k, v, w, u)]
        y = bi_wkv(*leaves, backend=backend)
        libc.malloc_trim(0)
        before = _rss_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        y.backward(grad_y)
        return (_rss_kib("VmHWM") - before) * 1024
    except (OSError, KeyError):
        return None


def cpu_rows(shapes, repeats, reference_limit, with_torch_chain):
    device = torch.device("cpu")
    backend = op._resolve("auto", device)
    print(f"CPU: {torch.get_num_threads()} threads, backend '{backend}' (the training path)")
    header = ("N", "T", "C", "floor ms", "fwd ms", "fwd/floor", "f+b ms", "f+b/floor", "fwd GB/s",
              "f+b GB/s", "floor GB/s", "bwd mem/NTC", "ref fwd ms", "ref/fwd", "torch fwd ms")
    print(" ".join(f"{h:>11}" for h in header))
    times = {}
    for n, t, c in shapes:
        k, v, w, u, grad_y = _inputs(n, t, c, device)
        elems = n * t * c
        fns = {
            "floor": lambda: torch.exp(k) * v,
            "fwd": lambda: bi_wkv(k, v, w, u, backend=backend),
            "step": _step_fn(k, v, w, u, grad_y, backend),
        }
        if with_torch_chain and elems <= (1 << 22):
            fns["torch"] = lambda: bi_wkv(k, v, w, u, backend="torch")
        res = _best_times(fns, repeats * max(1, (1 << 22) // elems), device)  # small shapes: more tries
        ref_ms = ""
        if n * c * t * t <= reference_limit:
            with torch.no_grad():
                start = time.perf_counter()
                bi_wkv_reference(k, v, w, u)
                ref_ms = (time.perf_counter() - start) * 1e3
        extra = backward_extra_memory(k, v, w, u, grad_y, backend)
        times[(n, t, c)] = res
        row = (n, t, c, res["floor"] * 1e3, res["fwd"] * 1e3, res["fwd"] / res["floor"], res["step"] * 1e3,
               res["step"] / res["floor"], FWD_BYTES * elems / res["fwd"] / 1e9,
               STEP_BYTES * elems / res["step"] / 1e9, FWD_BYTES * elems / res["floor"] / 1e9,
               "n/a" if extra is None else extra / (4 * elems),
               ref_ms, ref_ms / (res["fwd"] * 1e3) if ref_ms else "",
               res["torch"] * 1e3 if "torch" in res else "")
        print(" ".join(f"{x:>11.3g}" if isinstance(x, float) else f"{x!s:>11}" for x in row), flush=True)
    return times


def linearity(times, n, c):
    """16x T -> how many times the time (goal: at most 20x); the floor's growth alongside, since
    caches and page faults make even one elementwise pass grow faster than T on a CPU."""
    ts = sorted(t for (nn, t, cc) in times if nn == n and cc == c)
    for t in ts:
        if 16 * t in ts:
            growth = {key: times[(n, 16 * t, c)][key] / times[(n, t, c)][key] for key in ("fwd", "step", "floor")}
            print(f"T {t} -> {16 * t} (16x): forward time x{growth['fwd']:.1f}, forward+backward "
                  f"x{growth['step']:.1f} (the elementwise floor: x{growth['floor']:.1f})")


# Datasheet memory bandwidth (bytes/s) by card name, where torch does not report the memory clock.
DATASHEET_BANDWIDTH = {"H200": 4.8e12, "H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "A100-SXM4-80GB": 2.04e12}


def peak_bandwidth(props):
    """(bytes/s, source) of the card's memory: from its clock and bus width (double data rate)
    where torch reports them, else from DATASHEET_BANDWIDTH; (None, "unknown") otherwise."""
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8, "memory clock x bus width"
    for name, peak in DATASHEET_BANDWIDTH.items():
        if name in props.name:
            return peak, "datasheet"
    return None, "unknown"


def copy_bandwidth(device, n_bytes=2 << 30, repeats=5):
    """Bytes/s of a device-to-device copy (read + write counted): what the card delivers here."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    sec = _best_times({"copy": lambda: dst.copy_(src)}, repeats, device)["copy"]
    return 2 * n_bytes / sec


def _launch_step(k, v, w, u, grad_y, cfg):
    """Forward + backward of the Triton kernels with one launch configuration (no autograd)."""
    from nnunet_sss.kernels import triton_wkv

    def step():
        out = triton_wkv.forward(k, v, w, u, None, cfg)
        return (out[0], *triton_wkv.backward(grad_y, k, v, w, u, None, *out[1:], cfg))

    return step


def parse_launch(text: str):
    """"chunk,block_c,num_warps,unroll" (step-loop kernels) or the same with ",tile" (tile kernels)."""
    from nnunet_sss.kernels import triton_wkv

    fields = text.split(",")
    tile = len(fields) == 5 and fields[4] == "tile"
    if len(fields) not in (4, 5) or (len(fields) == 5 and not tile) or not all(x.isdigit() for x in fields[:4]):
        raise ValueError(f"launch configuration {text!r}: expected CHUNK,BLOCK_C,NUM_WARPS,UNROLL[,tile], "
                         "four positive integers")
    chunk, block_c, num_warps, unroll = (int(x) for x in fields[:4])
    return triton_wkv.Launch(chunk, block_c, num_warps, unroll, tile)


def gpu_rows(n, t, c, repeats, configs=(), device="cuda"):
    """Triton against the PyTorch path on the GPU; then each launch configuration in `configs`
    ("chunk,block_c,num_warps,unroll[,tile]") timed and checked against the default one. (device="cpu"
    under TRITON_INTERPRET=1 runs the same code on small sizes, to test this function.)"""
    from nnunet_sss.kernels import triton_wkv

    device = torch.device(device)
    props = torch.cuda.get_device_properties(device) if device.type == "cuda" else None
    peak, source = peak_bandwidth(props) if props else (None, "unknown")
    copy = copy_bandwidth(device, n_bytes=(2 << 30) if props else (1 << 20))
    print(f"\nGPU: {props.name if props else device}, torch {torch.__version__}, triton {triton_version()}; peak memory bandwidth "
          + (f"{peak / 1e9:.0f} GB/s ({source})" if peak else "unknown")
          + f"; device-to-device copy here: {copy / 1e9:.0f} GB/s")
    k, v, w, u, grad_y = _inputs(n, t, c, device)
    elems = n * t * c
    default = triton_wkv.launch(t, c)
    print(f"default launch for T={t}, C={c}: {default}")
    fns = {"triton fwd": lambda: bi_wkv(k, v, w, u, backend="triton"),
           "triton f+b": _step_fn(k, v, w, u, grad_y, "triton"),
           "torch f+b": _step_fn(k, v, w, u, grad_y, "torch"),
           "floor": lambda: torch.exp(k) * v}
    res = _best_times(fns, repeats, device)
    for name, sec in res.items():
        moved = (STEP_BYTES if "f+b" in name else FWD_BYTES) * elems
        share = f", {moved / sec / peak:.0%} of peak" if peak else ""
        print(f"N={n} T={t} C={c} {name:>10}: {sec * 1e3:9.2f} ms, {moved / sec / 1e9:8.1f} GB/s{share}")
    print(f"Triton forward+backward is {res['torch f+b'] / res['triton f+b']:.1f}x faster than the PyTorch path")
    if configs:
        print("Triton (fp32) against the PyTorch path (float64), max error / max |value|: "
              + ", ".join(f"{name} {err:.1e}" for name, err in _errors_against_torch(k, v, w, u, grad_y).items()))
        print("\nlaunch configurations (forward+backward; error: max relative error against the default's results)")
        reference = _launch_step(k, v, w, u, grad_y, default)()
        for text in configs:
            cfg = parse_launch(text)
            step = _launch_step(k, v, w, u, grad_y, cfg)
            err = max(_rel_err(a, b) for a, b in zip(step(), reference))
            sec = _best_times({"step": step}, repeats, device)["step"]
            share = f", {STEP_BYTES * elems / sec / peak:.0%} of peak" if peak else ""
            print(f"{cfg}: {sec * 1e3:8.2f} ms, {STEP_BYTES * elems / sec / 1e9:7.1f} GB/s{share}, error {err:.1e}",
                  flush=True)


def _errors_against_torch(k, v, w, u, grad_y):
    results = []
    for backend in ("triton", "torch"):
        leaves = [x.detach().clone().requires_grad_() for x in (k, v, w, u)]
        y = bi_wkv(*leaves, backend=backend)
        results.append([y.detach(), *torch.autograd.grad(y, leaves, grad_y)])
        del y, leaves
    return {name: _rel_err(a, b) for name, a, b in zip(("y", "grad k", "grad v", "grad w", "grad u"), *results)}


def _rel_err(x, ref):
    """max |x - ref| / max |ref| over the tensor (the tests' measure, tests/kernels/wkv_testing.py)."""
    x, ref = x.double(), ref.double()
    return ((x - ref).abs().max() / ref.abs().max().clamp(min=1e-30)).item()


def triton_version():
    try:
        import triton
        return triton.__version__
    except ImportError:
        return "missing"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--c", type=int, default=64)
    parser.add_argument("--network-shapes", nargs="*", default=["4096x512x32", "2048x64x320"],
                        help="extra N x T x C shapes, as in the network's Stage Scan")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-limit", type=float, default=6e8,
                        help="run the O(T^2) reference where N*C*T^2 is at most this")
    parser.add_argument("--gpu-shape", nargs="+", default=["8x65536x256"],
                        help="N x T x C shapes for the GPU rows (the launch sweep uses the first)")
    parser.add_argument("--gpu-only", action="store_true", help="skip the CPU rows")
    parser.add_argument("--gpu-configs", nargs="*", default=[], metavar="CHUNK,BLOCK_C,NUM_WARPS,UNROLL[,tile]",
                        help="Triton launch configurations to time and check against the default "
                             "(',tile': the tile kernels, kernels/triton_tiles.py)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 is steadier on a busy machine")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.gpu_only:
        shapes = [(args.n, t, args.c) for t in args.lengths]
        shapes += [tuple(int(x) for x in s.split("x")) for s in args.network_shapes]
        times = cpu_rows(shapes, args.repeats, args.reference_limit, with_torch_chain=True)
        linearity(times, args.n, args.c)
    if torch.cuda.is_available():
        for i, shape in enumerate(args.gpu_shape):
            gpu_rows(*(int(x) for x in shape.split("x")), args.repeats, args.gpu_configs if i == 0 else ())
    else:
        print("\nNo CUDA GPU here: the Triton figures are not measured in this run.")


if __name__ == "__main__":
    main()
