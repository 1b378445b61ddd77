"""`cell_sum`: the sum over each cell of a channels-last map (B, *S, C), times a scale.

A cell is `pool` tokens per axis (the pool divides the map); the result is (B, *S/pool, C).
It is the low-resolution WKV's pooling (scale 1/prod(pool): the average) and the backward of
repeating a pooled map over its cells. Backends:

    "cpp"    one pass in C++ (kernels/csrc/cell_sum.cpp): CPU, computed in fp32 (the default
             there); one op where the slice additions are a dozen
    "torch"  slice additions, innermost axis first: every device and dtype (the default on CUDA
             and for float64; on the CPU, faster than a strided reduction over the cell axes)

`cell_sum_reference` is the definition (a reduction over the cell axes) both are tested against.
The gradient of a cell sum repeats the output gradient over each cell.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import cpu_ext

BACKENDS = ("torch", "cpp")


def _cells(x: Tensor, pool: Sequence[int]) -> Tensor:
    """(B, *S, C) -> (B, S0/p0, p0, S1/p1, p1, ..., C), a view."""
    split = [d for s, p in zip(x.shape[1:-1], pool) for d in (s // p, p)]
    return x.view(x.shape[0], *split, x.shape[-1])


def _pooled_shape(x: Tensor, pool: Sequence[int]):
    return (x.shape[0], *(s // p for s, p in zip(x.shape[1:-1], pool)), x.shape[-1])


def cell_sum_reference(x: Tensor, pool: Sequence[int], scale: float = 1.0) -> Tensor:
    """The definition (tests only)."""
    return _cells(x, pool).sum(dim=tuple(2 + 2 * a for a in range(len(pool)))) * scale


def _slice_sum(x: Tensor, pool: Tuple[int, ...], scale: float) -> Tensor:
    cells = _cells(x, pool)
    for axis in reversed(range(len(pool))):
        parts = cells.unbind(2 + 2 * axis)
        total = parts[0].clone() if len(parts) > 1 else parts[0]
        for part in parts[1:]:
            total += part
        cells = total.unsqueeze(2 + 2 * axis)
    out = cells.reshape(_pooled_shape(x, pool))
    return out.mul_(scale) if scale != 1.0 else out


def _spread(grad: Tensor, pool: Tuple[int, ...], scale: float) -> Tensor:
    """Each token of `grad` repeated over its cell, times `scale` (the cell sum's adjoint)."""
    ones = [d for s in grad.shape[1:-1] for d in (s, 1)]
    shape = [d for s, p in zip(grad.shape[1:-1], pool) for d in (s, p)]
    full = (grad * scale if scale != 1.0 else grad).view(grad.shape[0], *ones, grad.shape[-1])
    full = full.expand(grad.shape[0], *shape, grad.shape[-1])
    return full.reshape(grad.shape[0], *(s * p for s, p in zip(grad.shape[1:-1], pool)), grad.shape[-1])


# ---------------------------------------------------------------- "cpp": one pass
class _Library:
    def __init__(self, path):
        import ctypes

        lib = ctypes.CDLL(str(path))
        ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._sum = lib.cell_sum
        self._sum.argtypes = [ptr, ptr, i64, i32, ptr, ptr, i64, ctypes.c_float, i32]
        self._sum.restype = None

    def sum(self, x: Tensor, pool: Tuple[int, ...], scale: float) -> Tensor:
        x = x.float().contiguous()
        out = x.new_empty(_pooled_shape(x, pool))
        if out.numel():
            size, cell = _sizes(tuple(x.shape[1:-1])), _sizes(pool)
            self._sum(x.data_ptr(), out.data_ptr(), x.shape[0], len(pool), size.data_ptr(), cell.data_ptr(),
                      x.shape[-1], scale, torch.get_num_threads())
        return out


@functools.lru_cache(maxsize=256)
def _sizes(values: Tuple[int, ...]) -> Tensor:
    """Sizes as the C ABI takes them (cached: a tensor made per call costs ops)."""
    return torch.tensor(values, dtype=torch.int64)


@functools.lru_cache(maxsize=None)
def _cpp_library():
    """The compiled cell sum, or None (with one warning) where it cannot be built."""
    return cpu_ext.optional("cell_sum", _Library, "cell sum", "slice additions (backend 'torch')")


@torch.library.custom_op("nnunet_sss::cell_sum", mutates_args=())
def _cpp_sum(x: Tensor, pool: list[int], scale: float) -> Tensor:
    """The C++ cell sum as one opaque op (float32 in and out)."""
    return _cpp_library().sum(x, tuple(pool), scale)


@_cpp_sum.register_fake
def _(x, pool, scale):
    return x.new_empty(_pooled_shape(x, pool))


class _CellSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pool, scale, backend):
        ctx.pool, ctx.scale = pool, scale
        if backend == "cpp":
            with torch.autocast("cpu", enabled=False):
                return _cpp_sum(x.float(), list(pool), scale).to(x.dtype)
        return _slice_sum(x, pool, scale)

    @staticmethod
    def backward(ctx, grad):
        return _spread(grad, ctx.pool, ctx.scale), None, None, None


def _check(x, pool, backend) -> Tuple[int, ...]:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"cell_sum: x must be a floating torch.Tensor, got "
                         f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"cell_sum: x must be (B, *S, C) with 1 to 3 spatial axes, got shape {tuple(x.shape)}")
    pool = tuple(int(p) for p in pool)
    size = tuple(x.shape[1:-1])
    if len(pool) != len(size):
        raise ValueError(f"cell_sum: pool needs one factor per spatial axis ({len(size)}), got {pool}")
    if any(p < 1 for p in pool) or any(s % p for s, p in zip(size, pool)):
        raise ValueError(f"cell_sum: the pool {pool} must be positive and divide the map {size}")
    cpu_ext.check_backend("cell_sum", backend, BACKENDS, x)
    return pool


def _resolve(backend: Optional[str], x: Tensor) -> str:
    return cpu_ext.resolve_backend("cell_sum", "cell sum", backend, x, _cpp_library)


def cell_sum(x: Tensor, pool: Sequence[int], scale: float = 1.0, *, backend: Optional[str] = None) -> Tensor:
    """scale * the sum over each cell of `pool` tokens of channels-last x (B, *S, C), the pool
    dividing every axis: (B, *S/pool, C). Differentiable. backend: None picks from the device
    and dtype. Under torch.compile: the reference's reduction, traced (inductor fuses it)."""
    pool = _check(x, pool, backend)
    scale = float(scale)
    if torch.compiler.is_compiling():
        return cell_sum_reference(x, pool, scale)
    if math.prod(pool) == 1:
        return x * scale if scale != 1.0 else x
    return _CellSum.apply(x, pool, scale, _resolve(backend, x))
