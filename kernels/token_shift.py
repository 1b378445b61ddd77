"""`token_shift`: the windowed multi-directional token shift of channels-last maps (B, *S, C).

The channels are cut into 2*D groups (four in 2D, six in 3D) of C // (2*D) channels; group 2a
takes each token's predecessor along axis a, group 2a+1 its successor; channels left over stay
in place. A token whose neighbour lies in another window (or outside the map) gets 0, so
nothing crosses a window border. `starts` gives, per axis, the first token of each window.
`reverse=True` shifts the other way: the adjoint, which is the backward of the shift.

It was a chain of slice copies and border fills: about 8 ops per channel group, so 30-50 per
shift, several times per RWKV layer, and as many kernel launches on a GPU. Here a shift is
one op. Backends:

    "cpp"    one pass in C++ (kernels/csrc/token_shift.cpp): CPU, computed in fp32 (the
             default there)
    "torch"  one gather of each group's neighbour along the token axis and one multiply by
             the window-border mask (index and mask cached per map, windows and device):
             every device and dtype (the default on CUDA and for float64); what torch.compile
             traces (inductor fuses it into one kernel)

`token_shift_reference` is the slice-by-slice definition both are tested against.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import cpu_ext

BACKENDS = ("torch", "cpp")
Starts = Tuple[Tuple[int, ...], ...]


def _groups(n_dims: int, channels: int) -> Tuple[int, int]:
    """(channels per group, channels shifted): 2*D groups of C // (2*D)."""
    group = channels // (2 * n_dims)
    return group, 2 * n_dims * group


def _directions(n_dims: int, reverse: bool):
    """(group index, axis, from_previous) of each shifted group."""
    for axis in range(n_dims):
        for direction in (0, 1):
            yield 2 * axis + direction, axis, (direction == 0) != reverse


def _lasts(firsts: Sequence[int], length: int) -> Tuple[int, ...]:
    return tuple(a - 1 for a in firsts[1:]) + (length - 1,)


def token_shift_reference(x: Tensor, starts: Starts, reverse: bool = False) -> Tensor:
    """The definition, slice by slice (tests only)."""
    n_dims = x.dim() - 2
    group, shifted = _groups(n_dims, x.shape[-1])
    out = x.clone()
    for g, axis, from_previous in _directions(n_dims, reverse):
        dim, length = axis + 1, x.shape[axis + 1]
        src, dst = x[..., g * group:(g + 1) * group], out[..., g * group:(g + 1) * group]
        if from_previous:
            dst.narrow(dim, 1, length - 1).copy_(src.narrow(dim, 0, length - 1))
            border = starts[axis]
        else:
            dst.narrow(dim, 0, length - 1).copy_(src.narrow(dim, 1, length - 1))
            border = _lasts(starts[axis], length)
        for i in border:
            dst.narrow(dim, i, 1).zero_()
    return out


# ---------------------------------------------------------------- "torch": one gather, one mask
@functools.lru_cache(maxsize=256)
def _gather_maps(size: Tuple[int, ...], starts: Starts, reverse: bool, device: torch.device):
    """Per token and group: the row-major position of its source token (itself where the
    neighbour is cut off) and 1.0 / 0.0 whether it has one; both (1, S, 2D, 1)."""
    n_dims = len(size)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in size], indexing="ij"), -1).view(-1, n_dims)
    strides = [math.prod(size[a + 1:]) for a in range(n_dims)]
    position = torch.arange(math.prod(size))
    index, keep = [], []
    for _, axis, from_previous in _directions(n_dims, reverse):
        i = coords[:, axis]
        cut = torch.zeros(size[axis], dtype=torch.bool)
        cut[list(starts[axis] if from_previous else _lasts(starts[axis], size[axis]))] = True
        ok = ~cut[i]
        step = -strides[axis] if from_previous else strides[axis]
        index.append(torch.where(ok, position + step, position))
        keep.append(ok)
    shape = (1, len(position), 2 * n_dims, 1)
    return (torch.stack(index, 1).view(shape).to(device),
            torch.stack(keep, 1).view(shape).to(device=device, dtype=torch.float32))


def _gather_shift(x: Tensor, starts: Starts, reverse: bool) -> Tensor:
    batch, size, channels = x.shape[0], tuple(x.shape[1:-1]), x.shape[-1]
    n_dims, tokens = len(size), math.prod(size)
    group, shifted = _groups(n_dims, channels)
    if group == 0:
        return x.clone()
    index, keep = _gather_maps(size, starts, reverse, x.device)
    flat = x.reshape(batch, tokens, channels)
    grouped = flat[..., :shifted].unflatten(-1, (2 * n_dims, group))
    out = torch.gather(grouped, 1, index.expand(batch, tokens, 2 * n_dims, group)).mul_(keep.to(x.dtype))
    out = out.view(batch, tokens, shifted)
    if shifted < channels:
        out = torch.cat([out, flat[..., shifted:]], -1)
    return out.view(x.shape)


# ---------------------------------------------------------------- "cpp": one pass
class _Library:
    def __init__(self, path):
        import ctypes

        lib = ctypes.CDLL(str(path))
        ptr, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self._shift = lib.token_shift
        self._shift.argtypes = [ptr, ptr, i64, i32, ptr, i64, ptr, i32, i32]
        self._shift.restype = None

    def shift(self, x: Tensor, starts: Starts, reverse: bool) -> Tensor:
        x = x.float().contiguous()
        size = x.shape[1:-1]
        out = torch.empty_like(x)
        if out.numel():
            flags, dims = _first_flags(tuple(size), starts), _dims(tuple(size))
            self._shift(x.data_ptr(), out.data_ptr(), x.shape[0], len(size), dims.data_ptr(), x.shape[-1],
                        flags.data_ptr(), int(reverse), torch.get_num_threads())
        return out


@functools.lru_cache(maxsize=256)
def _dims(size: Tuple[int, ...]) -> Tensor:
    """The map size as the C ABI takes it (cached: a tensor made per call costs two ops)."""
    return torch.tensor(size, dtype=torch.int64)


@functools.lru_cache(maxsize=256)
def _first_flags(size: Tuple[int, ...], starts: Starts) -> Tensor:
    flags = torch.zeros(sum(size), dtype=torch.uint8)
    offset = 0
    for n, axis_starts in zip(size, starts):
        flags[[offset + a for a in axis_starts]] = 1
        offset += n
    return flags


@functools.lru_cache(maxsize=None)
def _cpp_library():
    """The compiled token shift, or None (with one warning) where it cannot be built."""
    return cpu_ext.optional("token_shift", _Library, "token shift", "the gather (backend 'torch')")


def _pack(starts: Starts) -> Tuple[list, list]:
    return [a for axis in starts for a in axis], [len(axis) for axis in starts]


def _unpack(flat: Sequence[int], counts: Sequence[int]) -> Starts:
    out, i = [], 0
    for n in counts:
        out.append(tuple(flat[i:i + n]))
        i += n
    return tuple(out)


@torch.library.custom_op("nnunet_sss::token_shift", mutates_args=())
def _cpp_shift(x: Tensor, starts: list[int], counts: list[int], reverse: bool) -> Tensor:
    """The C++ shift as one opaque op (float32 in and out)."""
    return _cpp_library().shift(x, _unpack(starts, counts), reverse)


@_cpp_shift.register_fake
def _(x, starts, counts, reverse):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _raw_shift(x: Tensor, starts: Starts, reverse: bool, backend: str) -> Tensor:
    if backend == "cpp":
        with torch.autocast("cpu", enabled=False):
            return _cpp_shift(x.float(), *_pack(starts), reverse).to(x.dtype)
    return _gather_shift(x, starts, reverse)


class _TokenShift(torch.autograd.Function):
    """Forward and backward are each one shift (the backward the adjoint, `reverse` flipped)."""

    @staticmethod
    def forward(ctx, x, starts, reverse, backend):
        ctx.starts, ctx.reverse, ctx.backend = starts, reverse, backend
        return _raw_shift(x, starts, reverse, backend)

    @staticmethod
    def backward(ctx, grad):
        return _raw_shift(grad, ctx.starts, not ctx.reverse, ctx.backend), None, None, None


def _check(x, starts, backend) -> Starts:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"token_shift: x must be a floating torch.Tensor, got "
                         f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"token_shift: x must be (B, *S, C) with 1 to 3 spatial axes, got shape {tuple(x.shape)}")
    n_dims = x.dim() - 2
    if len(starts) != n_dims:
        raise ValueError(f"token_shift: starts needs one tuple of window starts per spatial axis ({n_dims}), "
                         f"got {len(starts)}")
    starts = tuple(tuple(int(a) for a in axis) for axis in starts)
    for axis, (axis_starts, n) in enumerate(zip(starts, x.shape[1:-1])):
        if not axis_starts or axis_starts[0] != 0 or list(axis_starts) != sorted(set(axis_starts)) \
                or axis_starts[-1] >= n:
            raise ValueError(f"token_shift: the window starts of axis {axis} must rise from 0 and stay below its "
                             f"size {n}, got {axis_starts}")
    cpu_ext.check_backend("token_shift", backend, BACKENDS, x)
    return starts


def _resolve(backend: Optional[str], x: Tensor) -> str:
    return cpu_ext.resolve_backend("token_shift", "shift", backend, x, _cpp_library)


def token_shift(x: Tensor, starts: Sequence[Sequence[int]], reverse: bool = False, *,
                backend: Optional[str] = None) -> Tensor:
    """Shift the channel groups of channels-last x (B, *S, C) by one token inside the windows
    beginning at `starts` (per axis); differentiable (the backward is the reverse shift).
    backend: None picks from the device and dtype. Under torch.compile: the gather, traced."""
    starts = _check(x, starts, backend)
    if torch.compiler.is_compiling():
        return _gather_shift(x, starts, bool(reverse))
    return _TokenShift.apply(x, starts, bool(reverse), _resolve(backend, x))
