"""Windowed multi-directional token shift on channels-last maps (B, *S, C).

The channels are cut into 2*D groups (four in 2D, six in 3D) of C // (2*D) channels; group
2a takes each token's predecessor along axis a, group 2a+1 its successor; channels left over
stay in place. A token whose neighbour lies in another window (or outside the map) gets 0,
so nothing crosses a partition border. Implemented with slice copies and strided zero fills
at the window borders (no window partition); the backward is the same shift in the opposite
directions (its adjoint), so autograd keeps no copy of the map.

`shift_concat` returns [x | shift(x)] in one (B, *S, 2C) tensor: the mixes' projections then
read both halves in one matmul with the mix coefficients folded into their weights, instead of
materialising one lerp per projection.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor


def _shift_into(x: Tensor, out: Tensor, window: Tuple[int, ...], reverse: bool) -> None:
    """Write the shift of `x` into `out` (same shape, may be a strided view)."""
    n_dims = x.dim() - 2
    group = x.shape[-1] // (2 * n_dims)
    for axis in range(n_dims):
        dim, length, w = axis + 1, x.shape[axis + 1], window[axis]
        for direction in (0, 1):
            channels = slice((2 * axis + direction) * group, (2 * axis + direction + 1) * group)
            src, dst = x[..., channels], out[..., channels]
            if (direction == 0) != reverse:  # dst[i] = src[i - 1]; 0 where i starts a window
                dst.narrow(dim, 1, length - 1).copy_(src.narrow(dim, 0, length - 1))
                dst[(slice(None),) * dim + (slice(0, None, w),)] = 0
            else:  # dst[i] = src[i + 1]; 0 where i ends a window or the map
                dst.narrow(dim, 0, length - 1).copy_(src.narrow(dim, 1, length - 1))
                dst[(slice(None),) * dim + (slice(w - 1, None, w),)] = 0
                dst.narrow(dim, length - 1, 1).zero_()
    rest = slice(2 * n_dims * group, None)
    out[..., rest] = x[..., rest]


class _Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, window, concat):
        ctx.window, ctx.concat = window, concat
        channels = x.shape[-1]
        if not concat:
            out = torch.empty_like(x, memory_format=torch.contiguous_format)
            _shift_into(x, out, window, reverse=False)
            return out
        out = x.new_empty((*x.shape[:-1], 2 * channels))
        out[..., :channels] = x
        _shift_into(x, out[..., channels:], window, reverse=False)
        return out

    @staticmethod
    def backward(ctx, grad):
        if not ctx.concat:
            out = torch.empty_like(grad, memory_format=torch.contiguous_format)
            _shift_into(grad, out, ctx.window, reverse=True)
            return out, None, None
        channels = grad.shape[-1] // 2
        out = torch.empty_like(grad[..., :channels], memory_format=torch.contiguous_format)
        _shift_into(grad[..., channels:], out, ctx.window, reverse=True)
        return out.add_(grad[..., :channels]), None, None


def _window(x: Tensor, window) -> Tuple[int, ...]:
    n_dims = x.dim() - 2
    if n_dims < 1:
        raise ValueError(f"token shift expects (B, *spatial, C), got shape {tuple(x.shape)}")
    if window is None:
        window = (None,) * n_dims
    if len(window) != n_dims:
        raise ValueError(f"window {tuple(window)} has {len(window)} axes, the map has {n_dims}")
    return tuple(int(s) if w is None else max(1, min(int(w), int(s))) for w, s in zip(window, x.shape[1:-1]))


def window_shift(x: Tensor, window: Optional[Sequence[Optional[int]]] = None) -> Tensor:
    """Shift channel groups of channels-last `x` (B, *S, C) by one token inside windows.

    window: tokens per axis (None, or None on an axis: no border but the map's own).
    """
    return _Shift.apply(x, _window(x, window), False)


def shift_concat(x: Tensor, window: Optional[Sequence[Optional[int]]] = None) -> Tensor:
    """[x | window_shift(x)] as one (B, *S, 2C) tensor."""
    return _Shift.apply(x, _window(x, window), True)
