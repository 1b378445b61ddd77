"""`linear_sample`: bi-/trilinear sampling of a map at one point per output voxel, border-clamped.

The dynamic upsampling of the decoder samples its input at learned positions. PyTorch's
`F.grid_sample` does that, but its CPU kernel for 3D maps reads the channels one scalar at a
time with a whole map's stride between them; on this project's CPU benchmark it was the
largest single cost of the dynamic upsampling. This op samples channels-last rows instead
(kernels/csrc/linear_sample.cpp: each corner one contiguous vector); the C++ path is a
torch.library custom op, so torch.compile sees one opaque op with no graph break. Backends:

    "cpp"    the C++ kernel: CPU, computed in fp32 (the default there)
    "torch"  F.grid_sample (bilinear, border, align_corners=False) with its own autograd; every
             device and float64 (the default on CUDA, where grid_sample is a fast kernel, and
             for float64 inputs)

`linear_sample_reference` is the float64 grid_sample call both are tested against.
"""
import functools
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from .constants import cached_constant

BACKENDS = ("torch", "cpp")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _Library:
    """ctypes calls into the built library; channels-last tensors in, float32 out."""

    def __init__(self, path):
        import ctypes

        lib = ctypes.CDLL(str(path))
        ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._fwd = lib.linear_sample_forward
        self._fwd.argtypes = [ptr, ptr, i64, i32, ptr, i64, i64, ptr, i32]
        self._fwd.restype = None
        self._bwd = lib.linear_sample_backward
        self._bwd.argtypes = [ptr, ptr, ptr, i64, i32, ptr, i64, i64, ptr, ptr, i32]
        self._bwd.restype = None

    @staticmethod
    def _shape(x, coords):
        batch, *size, chans = x.shape
        return batch, len(size), torch.tensor(size, dtype=torch.int64), math.prod(coords.shape[1:-1]), chans

    def forward(self, x: Tensor, coords: Tensor) -> Tensor:
        x, coords = x.float().contiguous(), coords.float().contiguous()
        batch, dims, size, points, chans = self._shape(x, coords)
        out = x.new_empty((*coords.shape[:-1], chans))
        if out.numel():
            self._fwd(x.data_ptr(), coords.data_ptr(), batch, dims, size.data_ptr(), points, chans,
                      out.data_ptr(), torch.get_num_threads())
        return out

    def backward(self, grad: Tensor, x: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
        grad, x, coords = (t.float().contiguous() for t in (grad, x, coords))
        batch, dims, size, points, chans = self._shape(x, coords)
        grad_x, grad_coords = torch.zeros_like(x), torch.zeros_like(coords)
        if grad.numel():
            self._bwd(grad.data_ptr(), x.data_ptr(), coords.data_ptr(), batch, dims, size.data_ptr(), points,
                      chans, grad_x.data_ptr(), grad_coords.data_ptr(), torch.get_num_threads())
        return grad_x, grad_coords


@functools.lru_cache(maxsize=None)
def _cpp_library():
    """The compiled sampler, or None (with one warning) where it cannot be built."""
    from . import cpu_ext

    return cpu_ext.optional("linear_sample", _Library, "sampler", "F.grid_sample (backend 'torch')")


@torch.compiler.assume_constant_result
def _cpp_available() -> bool:
    """Dynamo calls this once while tracing and keeps the answer (it cannot trace the build)."""
    return _cpp_library() is not None


def _resolve(backend: str, x: Tensor) -> str:
    if backend == "auto":
        usable = x.device.type == "cpu" and x.dtype != torch.float64
        return "cpp" if usable and _cpp_available() else "torch"
    if backend == "cpp":
        if x.device.type != "cpu":
            raise ValueError(f"linear_sample: backend 'cpp' runs on CPU tensors, got device {x.device}")
        if not _cpp_available():
            raise RuntimeError("linear_sample: backend 'cpp' requested but the C++ sampler could not be built "
                               "(see the warning above); use backend='torch'")
    return backend


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@cached_constant()
def _normalising_scale(size: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """2 / n per axis, last axis first: voxel units -> grid_sample's units."""
    return torch.tensor([2.0 / n for n in size[::-1]], dtype=dtype, device=device)


def _grid_sample(x_rows: Tensor, coords: Tensor) -> Tensor:
    """The 'torch' backend, in the rows layout: x (B, *S, C), coords (B, *O, D) -> (B, *O, C)."""
    size = x_rows.shape[1:-1]
    dims = len(size)
    # voxel units -> grid_sample's normalised units (align_corners=False), last axis first
    scale = _normalising_scale(tuple(size), coords.dtype, coords.device)
    grid = (coords.flip(-1) + 0.5) * scale - 1
    if dims == 1:  # grid_sample has no 1D mode: a 2D map of height 1
        x_rows, grid = x_rows.unsqueeze(1), torch.cat([grid, torch.zeros_like(grid)], -1).unsqueeze(1)
    out = F.grid_sample(x_rows.movedim(-1, 1), grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.movedim(1, -1)
    return out.squeeze(1) if dims == 1 else out


# The C++ path as custom ops. They take x as the caller holds it (B, C, *S) and make the
# channels-last copy inside, so autograd keeps x itself (which the offset conv of the dynamic
# upsampling keeps anyway), not a second, channels-last copy of it.
@torch.library.custom_op("nnunet_sss::linear_sample_forward", mutates_args=())
def _cpp_forward(x: Tensor, coords: Tensor) -> Tensor:
    """x (B, C, *S), coords (B, *O, D) -> (B, *O, C), float32."""
    return _cpp_library().forward(x.movedim(1, -1), coords)


@_cpp_forward.register_fake
def _(x, coords):
    return x.new_empty((*coords.shape[:-1], x.shape[1]), dtype=torch.float32)


@torch.library.custom_op("nnunet_sss::linear_sample_backward", mutates_args=())
def _cpp_backward(grad: Tensor, x: Tensor, coords: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients for x (B, C, *S) and coords, float32."""
    grad_rows, grad_coords = _cpp_library().backward(grad, x.movedim(1, -1), coords)
    return grad_rows.movedim(-1, 1).contiguous(), grad_coords


@_cpp_backward.register_fake
def _(grad, x, coords):
    return x.new_empty(x.shape, dtype=torch.float32), coords.new_empty(coords.shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, coords = inputs
    ctx.dtypes = (x.dtype, coords.dtype)
    ctx.save_for_backward(x, coords)


def _backward(ctx, grad):
    x, coords = ctx.saved_tensors
    grads = _cpp_backward(grad.contiguous(), x, coords)
    return tuple(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))


_cpp_forward.register_autograd(_backward, setup_context=_setup_context)


def _validate(x, coords, backend):
    for name, t in (("x", x), ("coords", coords)):
        if not isinstance(t, Tensor):
            raise ValueError(f"linear_sample: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"linear_sample: {name} must be a floating tensor (fp16/bf16/fp32/fp64), got {t.dtype}")
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"linear_sample: x must be (B, C, *S) with 1 to 3 spatial axes, got shape {tuple(x.shape)}")
    dims = x.dim() - 2
    if coords.dim() != dims + 2 or coords.shape[0] != x.shape[0] or coords.shape[-1] != dims:
        raise ValueError(f"linear_sample: coords must be (B, *O, {dims}) = ({x.shape[0]}, ..., {dims}) for x of "
                         f"shape {tuple(x.shape)}, got {tuple(coords.shape)}")
    if x.device != coords.device:
        raise ValueError(f"linear_sample: x on {x.device} but coords on {coords.device}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"linear_sample: unknown backend {backend!r}; choose one of {BACKENDS} or None")


def linear_sample(x: Tensor, coords: Tensor, *, backend: Optional[str] = None) -> Tensor:
    """x (B, C, *S) sampled at coords (B, *O, D): (B, C, *O), linear in every axis.

    coords are in input voxel units, voxel i's centre at i, axes in x's order; points outside
    the map take the border's value (and no gradient), as grid_sample's padding_mode="border".
    Computed in fp32 (float64 for float64 x); the result has x's dtype and is laid out
    channels-last (a permuted view). backend: None picks from the device and dtype.
    """
    _validate(x, coords, backend)
    if _resolve(backend or "auto", x) == "cpp":
        with torch.autocast("cpu", enabled=False):
            out = _cpp_forward(x, coords.contiguous())
    else:
        dtype = _compute_dtype(x)
        out = _grid_sample(x.movedim(1, -1).to(dtype), coords.to(dtype))
    return out.to(x.dtype).movedim(-1, 1)


def linear_sample_reference(x: Tensor, coords: Tensor) -> Tensor:
    """The definition: F.grid_sample in float64 (tests only)."""
    return _grid_sample(x.double().movedim(1, -1), coords.double()).movedim(-1, 1)
