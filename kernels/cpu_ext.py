"""The C++ CPU kernels (kernels/csrc/): built once, cached, called via ctypes.

One library per source: the fused Bi-WKV scan (bi_wkv.cpp, wrapped by `Kernels`), the
channels-last linear sampler (linear_sample.cpp, wrapped in kernels/sampler.py), the token shift
(token_shift.cpp, kernels/token_shift.py) and the cell sum (cell_sum.cpp, kernels/cell_sum.py).
Each source has a plain C ABI and no torch headers, so the one-time build takes seconds.
It is compiled for the host CPU (-march=native), so the cache directory is keyed by the
torch version and the CPU's model and feature flags: a cache shared between different
machines never hands one of them code it cannot run. Default location:
$XDG_CACHE_HOME/nnunet_sss (or ~/.cache/nnunet_sss); NNUNET_SSS_BUILD_DIR overrides it.
torch.utils.cpp_extension does the building (ninja, a lock for concurrent builds, a rebuild
when the source changes).
"""
import ctypes
import hashlib
import os
import platform
from pathlib import Path

import torch

SOURCES = Path(__file__).with_name("csrc")
FLAGS = ["-O3", "-march=native", "-fopenmp"]


def _cpu_signature() -> str:
    """Host CPU model and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join([line for line in lines if line.startswith(("model name", "flags"))][:2])
    except OSError:
        return platform.processor() or platform.machine()


def build_dir(stem: str) -> Path:
    root = os.environ.get("NNUNET_SSS_BUILD_DIR")
    if root is None:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(cache, "nnunet_sss")
    key = hashlib.sha1(f"{torch.__version__}\n{_cpu_signature()}".encode()).hexdigest()[:12]
    path = Path(root) / f"{stem}_cpu-{key}"  # one folder per library: each has its own build.ninja
    path.mkdir(parents=True, exist_ok=True)
    return path


_P = ctypes.c_void_p
_I64 = ctypes.c_int64


class Kernels:
    """The loaded library; forward/backward take and return torch tensors (CPU)."""

    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        self._fwd = lib.bi_wkv_forward
        self._fwd.argtypes = [_P] * 5 + [_I64] * 3 + [_P] * 5 + [ctypes.c_int]
        self._fwd.restype = None
        self._bwd = lib.bi_wkv_backward
        self._bwd.argtypes = [_P] * 6 + [_I64] * 3 + [_P] * 8 + [ctypes.c_int]
        self._bwd.restype = None

    @staticmethod
    def _ptr(x):
        return None if x is None else x.data_ptr()

    @staticmethod
    def _prepare(*tensors):
        return [x.to(torch.float32).contiguous() for x in tensors]

    def forward(self, k, v, w, u, lengths):
        """(y, y - centre, den, key max, centre): what the backward needs, all float32."""
        k, v, w, u = self._prepare(k, v, w, u)
        lengths = None if lengths is None else lengths.to(torch.int64).contiguous()
        n_seq, t_max, chans = k.shape
        y, yc, den = (torch.empty_like(k) for _ in range(3))
        k_max, centre = (k.new_empty((n_seq, chans)) for _ in range(2))
        if k.numel():
            self._fwd(*map(self._ptr, (k, v, w, u, lengths)), n_seq, t_max, chans,
                      *map(self._ptr, (y, yc, den, k_max, centre)), torch.get_num_threads())
        else:
            k_max.zero_(), centre.zero_()
        return y, yc, den, k_max, centre

    def backward(self, grad_y, k, v, w, u, lengths, yc, den, k_max, centre):
        """Float32 gradients for k, v, w, u."""
        grad_y, k, v, w, u, yc, den, k_max, centre = self._prepare(grad_y, k, v, w, u, yc, den, k_max, centre)
        lengths = None if lengths is None else lengths.to(torch.int64).contiguous()
        n_seq, t_max, chans = k.shape
        grad_k, grad_v = torch.empty_like(k), torch.empty_like(k)
        grad_w_seq = torch.zeros((n_seq, chans), dtype=torch.float64)
        grad_u_seq = torch.zeros((n_seq, chans), dtype=torch.float64)
        if k.numel():
            self._bwd(*map(self._ptr, (grad_y, k, v, w, u, lengths)), n_seq, t_max, chans,
                      *map(self._ptr, (yc, den, k_max, centre, grad_k, grad_v, grad_w_seq, grad_u_seq)),
                      torch.get_num_threads())
        return grad_k, grad_v, grad_w_seq.sum(0).float(), grad_u_seq.sum(0).float()


def build(stem: str) -> Path:
    """Builds (or reuses) kernels/csrc/<stem>.cpp and returns the library's path; raises where
    it cannot be built."""
    from torch.utils import cpp_extension

    source = SOURCES / f"{stem}.cpp"
    if not source.is_file():
        raise FileNotFoundError(f"C++ source missing: {source}")
    name, folder = f"nnunet_sss_{stem}_cpu", build_dir(stem)
    path = cpp_extension.load(name=name, sources=[str(source)], extra_cflags=FLAGS,
                              extra_ldflags=["-fopenmp"], build_directory=str(folder),
                              is_python_module=False, verbose=False)
    return Path(path or folder / f"{name}.so")


def load() -> Kernels:
    """The Bi-WKV library, built on first use; raises where it cannot be built."""
    return Kernels(build("bi_wkv"))


def optional(stem: str, wrap, what: str, fallback: str):
    """wrap(path of the built library), or None with one RuntimeWarning naming `what` and the
    `fallback` where it cannot be built (no compiler, broken toolchain)."""
    import warnings

    try:
        return wrap(build(stem))
    except Exception as err:
        warnings.warn(f"nnunet_sss.kernels: the C++ {what} could not be built ({err}); using {fallback} on the CPU.",
                      RuntimeWarning)
        return None


def check_backend(op: str, backend, backends, x) -> None:
    """What every op with a C++ backend checks of `backend`: a known name, and "cpp" only for CPU tensors."""
    if backend is not None and backend not in backends:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {backends} or None")
    if backend == "cpp" and x.device.type != "cpu":
        raise ValueError(f"{op}: backend 'cpp' runs on CPU tensors, got device {x.device}")


def resolve_backend(op: str, what: str, backend, x, library) -> str:
    """None: "cpp" for CPU tensors below float64 where `library()` (the built kernel or None)
    is there, else "torch"; an explicit "cpp" that could not be built raises."""
    if backend is None:
        usable = x.device.type == "cpu" and x.dtype != torch.float64
        return "cpp" if usable and library() is not None else "torch"
    if backend == "cpp" and library() is None:
        raise RuntimeError(f"{op}: backend 'cpp' requested but the C++ {what} could not be built "
                           "(see the warning above); use backend='torch'")
    return backend
