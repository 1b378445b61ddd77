"""Pooled token maps for the low-resolution WKV, on channels-last tokens (B, *S, C).

A pooled token averages a cell of `pool` tokens per axis (ceil mode: the cells at the far
border average their real tokens). Where the pool divides the map, pooling is one cell sum
(`kernels.cell_sum`: one C++ pass on the CPU) and its backward a broadcast, both much cheaper on
the CPU than avg_pool on a channels-last tensor (which reorders the layout first); elsewhere it
falls back to avg_pool.
`cell_view` / `pooled_view` pair a full map with its pooled map as broadcastable views.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch.nn.functional as F
from torch import Tensor

from nnunet_sss.kernels import cell_sum


def divides(size: Sequence[int], pool: Sequence[int]) -> bool:
    return all(s % p == 0 for s, p in zip(size, pool))


def cell_view(x: Tensor, pool: Sequence[int]) -> Tensor:
    """(B, *S, C) -> (B, S0/p0, p0, S1/p1, p1, ..., C) (the pool must divide the map)."""
    split = [d for s, p in zip(x.shape[1:-1], pool) for d in (s // p, p)]
    return x.view(x.shape[0], *split, x.shape[-1])


def pooled_view(y: Tensor) -> Tensor:
    """(B, *S', C) -> (B, S'0, 1, S'1, 1, ..., C), broadcastable against `cell_view`."""
    ones = [d for s in y.shape[1:-1] for d in (s, 1)]
    return y.view(y.shape[0], *ones, y.shape[-1])


def avg_pool_tokens(x: Tensor, pool: Tuple[int, ...]) -> Tensor:
    """Average-pool channels-last tokens (B, *S, C) by `pool` per axis (ceil mode)."""
    if divides(x.shape[1:-1], pool):
        return cell_sum(x, pool, 1 / math.prod(pool))
    pool_fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[x.dim() - 3]
    return pool_fn(x.movedim(-1, 1), pool, pool, ceil_mode=True).movedim(1, -1)


def repeat_tokens(y: Tensor, pool: Tuple[int, ...], size: Sequence[int]) -> Tensor:
    """Undo the pooling's cell layout: token i of each axis takes pooled token i // p."""
    up = F.interpolate(y.movedim(-1, 1), scale_factor=pool, mode="nearest").movedim(1, -1)
    for axis, s in enumerate(size):
        if up.shape[axis + 1] != s:
            up = up.narrow(axis + 1, 0, s)
    return up
