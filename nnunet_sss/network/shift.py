"""Windowed multi-directional token shift on channels-last maps (B, *S, C): where the windows are.

The shift itself is the operator `nnunet_sss.kernels.token_shift` (channel groups, directions,
zeros at window borders, one op per shift, its backward the reverse shift). This module maps the
network's partitions to the windows the shift respects: the windows of scan.partition (balanced),
given to the shift as the first token of each window per axis, at full resolution even where the
WKV runs on a pooled map (a border at pooled token i is the border at voxel i * p).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from torch import Tensor

from nnunet_sss.kernels import token_shift

from .scan import split_axis, window_starts


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


def layer_shift_starts(size: Sequence[int], windows: Optional[Tuple]) -> Optional[Tuple[Tuple[int, ...], ...]]:
    """shift_starts for a layer's `(window, pool)`; None where the layer has no token shift
    (`windows` None: the no-shift ablation)."""
    return None if windows is None else shift_starts(size, *windows)


def window_shift(x: Tensor, starts: Sequence[Sequence[int]], reverse: bool = False) -> Tensor:
    """Shift channel groups of channels-last `x` (B, *S, C) by one token inside the windows
    that begin at `starts` (per axis; see shift_starts)."""
    return token_shift(x, starts, reverse)
