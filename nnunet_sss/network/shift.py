"""Windowed multi-directional token shift on channels-last maps (B, *S, C).

The channels are cut into 2*D groups (four in 2D, six in 3D) of C // (2*D) channels; group
2a takes each token's predecessor along axis a, group 2a+1 its successor; channels left over
stay in place. A token whose neighbour lies in another window (or outside the map) gets 0,
so nothing crosses a partition border. Windows are those of scan.partition (balanced), given to
the shift as the first token of each window per axis. Implemented with slice copies and zero
fills at the window borders (no window partition); the backward is the same shift in the opposite
directions (its adjoint), so autograd keeps no copy of the map. Under torch.compile the same shift
is written out of place (`_shift_out_of_place`), which inductor fuses. The mixes' eager path
(fused.shift_mix_project) shifts into its own buffer with `_shift_into`; their plain-autograd
reference, which torch.compile traces, calls `window_shift`.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .scan import split_axis, window_starts


@functools.lru_cache(maxsize=None)
def _index(positions: Tuple[int, ...], device: torch.device) -> Tensor:
    """The window borders as an index tensor, made once per device: a fresh one per call is a
    host-to-device copy, which on CUDA makes the CPU wait for the GPU (~100 times a step)."""
    return torch.tensor(positions, device=device)


def _zero(t: Tensor, dim: int, positions: Tuple[int, ...]) -> None:
    if len(positions) == 1:
        t.narrow(dim, positions[0], 1).zero_()
    else:
        t.index_fill_(dim, _index(positions, t.device), 0)


def _moves(x: Tensor, starts: Tuple[Tuple[int, ...], ...], reverse: bool):
    """Each shifted channel group of channels-last `x`: (channels, dim, length, from_previous,
    border). from_previous: out[i] = x[i - 1], 0 at the first token of each window (border);
    else out[i] = x[i + 1], 0 at the last token of each window. `reverse` swaps the directions
    (the adjoint, for the backward)."""
    n_dims = x.dim() - 2
    group = x.shape[-1] // (2 * n_dims)
    for axis in range(n_dims):
        dim, length = axis + 1, x.shape[axis + 1]
        firsts = starts[axis]
        lasts = tuple(a - 1 for a in firsts[1:]) + (length - 1,)
        for direction in (0, 1):
            from_previous = (direction == 0) != reverse
            channels = slice((2 * axis + direction) * group, (2 * axis + direction + 1) * group)
            yield channels, dim, length, from_previous, firsts if from_previous else lasts


def _unshifted(x: Tensor) -> slice:
    """The channels left over after the 2 * D groups: they stay in place."""
    return slice(2 * (x.dim() - 2) * (x.shape[-1] // (2 * (x.dim() - 2))), None)


def _shift_into(x: Tensor, out: Tensor, starts: Tuple[Tuple[int, ...], ...], reverse: bool) -> None:
    """Write the shift of `x` into `out` (same shape, may be a strided view); `starts` holds
    the first token of each window per axis."""
    for channels, dim, length, from_previous, border in _moves(x, starts, reverse):
        src, dst = x[..., channels], out[..., channels]
        if from_previous:
            dst.narrow(dim, 1, length - 1).copy_(src.narrow(dim, 0, length - 1))
        else:
            dst.narrow(dim, 0, length - 1).copy_(src.narrow(dim, 1, length - 1))
        _zero(dst, dim, border)
    rest = _unshifted(x)
    out[..., rest] = x[..., rest]


class _Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, starts):
        ctx.starts = starts
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        _shift_into(x, out, starts, reverse=False)
        return out

    @staticmethod
    def backward(ctx, grad):
        out = torch.empty_like(grad, memory_format=torch.contiguous_format)
        _shift_into(grad, out, ctx.starts, reverse=True)
        return out, None


def _shift_out_of_place(x: Tensor, starts: Tuple[Tuple[int, ...], ...]) -> Tensor:
    """The same shift built from slices, zero padding and border masks, without writing into a
    buffer: what torch.compile traces (inductor fuses it into one kernel, and autograd's backward
    of it is the adjoint shift). Some torch versions (2.11 on CUDA) fail to functionalise the
    in-place slice writes of `_shift_into` inside the joint training graph."""
    parts = []
    for channels, dim, length, from_previous, border in _moves(x, starts, reverse=False):
        src = x[..., channels]
        zero = torch.zeros_like(src.narrow(dim, 0, 1))
        kept = src.narrow(dim, 0 if from_previous else 1, length - 1)
        moved = torch.cat([zero, kept] if from_previous else [kept, zero], dim)
        keep = [0.0 if i in border else 1.0 for i in range(length)]
        shape = [1] * x.dim()
        shape[dim] = length
        parts.append(moved * torch.tensor(keep, dtype=x.dtype, device=x.device).view(shape))
    parts.append(x[..., _unshifted(x)])
    return torch.cat(parts, -1)


def shift_starts(size: Sequence[int], window: Optional[Sequence[Optional[int]]] = None,
                 pool: Optional[Sequence[int]] = None) -> Tuple[Tuple[int, ...], ...]:
    """First token of each window per axis of a map of `size`, for the windows (at most `window`
    tokens, balanced as in scan.partition) of that map pooled by `pool`. None (or None on an
    axis) = one window over the axis."""
    n_dims = len(size)
    window = (None,) * n_dims if window is None else tuple(window)
    pool = (1,) * n_dims if pool is None else tuple(pool)
    if len(window) != n_dims or len(pool) != n_dims:
        raise ValueError(f"window {window} / pool {pool} must have one entry per axis of the {n_dims}D map")
    starts = []
    for s, w, p in zip(size, window, pool):
        pooled = -(-int(s) // int(p))
        starts.append(tuple(a * int(p) for a in window_starts(split_axis(pooled, w))))
    return tuple(starts)


def _check(x: Tensor, starts) -> Tuple[Tuple[int, ...], ...]:
    if x.dim() < 3 or len(starts) != x.dim() - 2:
        raise ValueError(f"token shift expects (B, *spatial, C) with window starts for each spatial axis, "
                         f"got shape {tuple(x.shape)} and {len(starts)} axes of starts")
    return tuple(tuple(int(a) for a in axis) for axis in starts)


def window_shift(x: Tensor, starts: Sequence[Sequence[int]]) -> Tensor:
    """Shift channel groups of channels-last `x` (B, *S, C) by one token inside the windows
    that begin at `starts` (per axis; see shift_starts)."""
    if torch.compiler.is_compiling():
        return _shift_out_of_place(x, _check(x, starts))
    return _Shift.apply(x, _check(x, starts))
