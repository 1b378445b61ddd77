"""Windows and scan orders: which map token sits in which Bi-WKV sequence slot, and back.

A feature map of `map_size` tokens (per axis) is cut into windows of at most `window` tokens
per axis (clipped to the map): ceil(size / window) windows per axis, as equal as possible.
Where the windows do not divide the map they differ by one token per axis and hold different
numbers of tokens; each window is one sequence, flattened on its own over its real tokens and
padded at the end (the operator takes the real lengths). Balanced windows keep the padding
small (a 10-token axis with window 8 gives 5 + 5, not 8 + 2 with 6 padded slots). Inside a window the tokens are visited along
an axis order (outermost axis first), in snake order: every turn of a row or slice is a
step of one token, never a jump back across the window. A block scans along several axis
orders at once; all of them go through the operator in one call.

Layout: map tokens are (B, S, C) with S the row-major flattening of the map; the scanned
tokens are (B, K*W*T, C) = orders x windows x slots, which reshapes to the operator's
(B*K*W, T, C). A `ScanPlan` holds the index tensors of both directions, built once per
(map size, window, orders, snake) and cached per device. Scanning is one gather; unscanning
is one gather of all orders and one batched matmul that merges them with their weights; the
backward passes are gathers too (the inverse index), never scatter-adds.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from itertools import product
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor


def axis_orders(n_dims: int, scan: str) -> Tuple[Tuple[int, ...], ...]:
    """The axis orders (outermost axis first) a block scans along.

    "stage": all cyclic orders (2 in 2D, 3 in 3D); "raster": the single row-major order.
    """
    if scan == "stage":
        return tuple(tuple((start + j) % n_dims for j in range(n_dims)) for start in range(n_dims))
    if scan == "raster":
        return (tuple(range(n_dims)),)
    raise ValueError(f"unknown scan {scan!r}: expected 'stage' or 'raster'")


def visit_order(size: Sequence[int], order: Sequence[int], snake: bool) -> Tensor:
    """Row-major positions inside a box of `size` tokens, in the order they are visited.

    `order` lists the axes from outermost to innermost. With `snake`, each pass over an inner
    axis (or block of inner axes) runs opposite to the previous one (boustrophedon), so
    consecutive positions are always spatial neighbours.
    """
    size = tuple(int(s) for s in size)
    if sorted(order) != list(range(len(size))):
        raise ValueError(f"axis order {tuple(order)} is not a permutation of the {len(size)} axes")
    coords = torch.zeros((1, len(size)), dtype=torch.long)
    for axis in reversed(tuple(order)):  # grow from the innermost axis outwards
        blocks = []
        for j in range(size[axis]):
            block = coords.flip(0) if (snake and j % 2) else coords.clone()
            block[:, axis] = j
            blocks.append(block)
        coords = torch.cat(blocks)
    return coords @ _row_major_strides(size)


def _row_major_strides(size: Sequence[int]) -> Tensor:
    strides = [1] * len(size)
    for a in range(len(size) - 2, -1, -1):
        strides[a] = strides[a + 1] * size[a + 1]
    return torch.tensor(strides, dtype=torch.long)


@dataclass(frozen=True)
class ScanPlan:
    """Index tensors of one (map size, window, orders, snake) partition."""

    map_size: Tuple[int, ...]
    window: Tuple[int, ...]          # longest window per axis
    n_orders: int                    # K
    n_windows: int                   # W
    seq_len: int                     # T = tokens of a full window
    index: Tensor                    # (K*W*T,) map position of each slot (0 at padding)
    inverse: Tensor                  # (K, S) slot (in K*W*T) of each map position, per order
    lengths: Optional[Tensor]        # (W,) real tokens per window; None if all windows are full
    valid: Optional[Tensor]          # (K*W*T, 1) 1.0 at real slots, 0.0 at padding; None if none

    def to(self, device: torch.device) -> "ScanPlan":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ScanPlan(self.map_size, self.window, self.n_orders, self.n_windows, self.seq_len,
                        move(self.index), move(self.inverse), move(self.lengths), move(self.valid))


def clip_window(window: Sequence[Optional[int]], map_size: Sequence[int]) -> Tuple[int, ...]:
    """Window per axis clipped to the map; None on an axis = the whole axis."""
    return tuple(s if w is None else min(int(w), int(s)) for w, s in zip(window, map_size))


def split_axis(size: int, window: Optional[int]) -> Tuple[int, ...]:
    """Window lengths along one axis: ceil(size / window) windows, as equal as possible (the
    first ones one token longer), so no window exceeds `window` and none is a sliver."""
    size = int(size)
    count = 1 if window is None else math.ceil(size / max(1, min(int(window), size)))
    base, extra = divmod(size, count)
    return (base + 1,) * extra + (base,) * (count - extra)


def partition(map_size: Sequence[int], window: Sequence[Optional[int]]) -> Tuple[Tuple[int, ...], ...]:
    """Window lengths per axis for a map of `map_size` tokens and windows of at most `window`."""
    return tuple(split_axis(s, w) for s, w in zip(map_size, window))


def window_starts(lengths: Sequence[int]) -> Tuple[int, ...]:
    """First token of each window along an axis with windows of `lengths`."""
    return tuple(itertools.accumulate((0,) + tuple(lengths[:-1])))


@functools.lru_cache(maxsize=512)
def _build_plan(map_size: Tuple[int, ...], window: Tuple[int, ...],
                orders: Tuple[Tuple[int, ...], ...], snake: bool) -> ScanPlan:
    parts = partition(map_size, window)
    n_dims, n_orders = len(map_size), len(orders)
    counts = [len(p) for p in parts]
    longest = tuple(max(p) for p in parts)
    n_windows, seq_len, n_tokens = math.prod(counts), math.prod(longest), math.prod(map_size)
    map_strides = _row_major_strides(map_size)
    grid_strides = _row_major_strides(counts)

    index = torch.zeros((n_orders, n_windows, seq_len), dtype=torch.long)
    valid = torch.zeros((n_orders, n_windows, seq_len), dtype=torch.bool)
    lengths = torch.zeros(n_windows, dtype=torch.long)
    # Along each axis the windows have at most two lengths, so the windows fall in at most
    # 2^D groups of equal shape; each group shares one visit order per axis order.
    per_axis_groups = []
    for lengths_a in parts:
        starts = window_starts(lengths_a)
        groups = {}
        for i, (n, a) in enumerate(zip(lengths_a, starts)):
            groups.setdefault(n, ([], []))
            groups[n][0].append(i)
            groups[n][1].append(a)
        per_axis_groups.append([(n, ids, origins) for n, (ids, origins) in groups.items()])
    for group in product(*per_axis_groups):
        real = tuple(g[0] for g in group)
        grid = torch.cartesian_prod(*[torch.tensor(g[1], dtype=torch.long) for g in group]).view(-1, n_dims)
        corner = torch.cartesian_prod(*[torch.tensor(g[2], dtype=torch.long) for g in group]).view(-1, n_dims)
        window_ids = grid @ grid_strides
        origins = corner @ map_strides  # map position of each window's first token
        length = math.prod(real)
        lengths[window_ids] = length
        for k, order in enumerate(orders):
            local = visit_order(real, order, snake)  # row-major inside the window
            box_coords = torch.stack(torch.unravel_index(local, real), 1)
            positions = origins[:, None] + (box_coords @ map_strides)[None, :]
            index[k, window_ids, :length] = positions
            valid[k, window_ids, :length] = True

    # the inverse, without boolean-mask indexing (whose data-dependent shape breaks a torch.compile
    # graph when a forward meets a new map size): padding slots write into a spare column
    slots = torch.arange(n_orders * n_windows * seq_len, dtype=torch.long).view(n_orders, -1)
    flat_index, flat_valid = index.view(n_orders, -1), valid.view(n_orders, -1)
    target = torch.where(flat_valid, flat_index, torch.full_like(flat_index, n_tokens))
    inverse = torch.zeros((n_orders, n_tokens + 1), dtype=torch.long).scatter_(1, target, slots)[:, :n_tokens]
    inverse = inverse.contiguous()
    full = all(len(set(lengths_a)) == 1 for lengths_a in parts)  # every window of the longest shape
    return ScanPlan(
        map_size=tuple(map_size), window=longest, n_orders=n_orders, n_windows=n_windows,
        seq_len=seq_len, index=index.view(-1), inverse=inverse,
        lengths=None if full else lengths,
        valid=None if full else valid.view(-1, 1).float(),
    )


_DEVICE_PLANS: dict = {}


@torch.compiler.assume_constant_result
def scan_plan(map_size: Sequence[int], window: Sequence[Optional[int]],
              orders: Sequence[Sequence[int]], snake: bool, device=None) -> ScanPlan:
    """The cached plan for this partition, with its tensors on `device`. torch.compile runs it
    while tracing and keeps the plan as a constant of the graph (a plan is a function of the map
    size alone), so a forward at a new map size traces in one graph too."""
    key = (tuple(int(s) for s in map_size), clip_window(window, map_size),
           tuple(tuple(o) for o in orders), bool(snake))
    device = torch.device("cpu") if device is None else torch.device(device)
    plan = _DEVICE_PLANS.get(key + (device,))
    if plan is None:
        if any(w < 1 for w in key[1]):
            raise ValueError(f"window {tuple(window)} must be >= 1 token on every axis")
        with torch.inference_mode(False):  # normal tensors: a plan first met in inference serves training too
            plan = _build_plan(*key).to(device)
        _DEVICE_PLANS[key + (device,)] = plan
    return plan


class _Scan(torch.autograd.Function):
    """(B, S, C) map tokens -> (B, K*W*T, C) sequence slots; backward: one gather of every
    order's slots (the inverse index), summed over the orders."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(1, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        n_orders, tokens = inverse.shape
        grad_x = grad.index_select(1, inverse.view(-1))
        if n_orders > 1:
            grad_x = grad_x.view(grad.shape[0], n_orders, tokens, grad.shape[-1]).sum(1)
        return grad_x, None, None


class _Unscan(torch.autograd.Function):
    """(B, K*W*T, C) slots -> (B, S, C): every order put back in place with one gather, then
    summed with its weight in one batched matmul over the orders.

    The backward gathers the output gradient into the slots (padding gets exactly 0) and
    gives each order's weight the dot product of the gradient with that order's output.
    """

    @staticmethod
    def forward(ctx, y, weights, index, inverse, valid):
        batch, channels = y.shape[0], y.shape[-1]
        n_orders, tokens = inverse.shape
        placed = y.index_select(1, inverse.view(-1)).view(batch, n_orders, tokens * channels)
        with torch.autocast(y.device.type, enabled=False):  # the merge stays in y's dtype (fp32)
            out = torch.bmm(weights.to(y.dtype).view(1, 1, n_orders).expand(batch, 1, n_orders), placed)
        ctx.save_for_backward(y, weights, index, inverse, valid)
        return out.view(batch, tokens, channels)

    @staticmethod
    def backward(ctx, grad):
        y, weights, index, inverse, valid = ctx.saved_tensors
        batch, channels = y.shape[0], y.shape[-1]
        n_orders, tokens = inverse.shape
        grad_y = grad_weights = None
        if ctx.needs_input_grad[0]:
            scale = weights.view(n_orders, 1, 1).expand(n_orders, index.numel() // n_orders, 1)
            scale = scale.reshape(-1, 1) if valid is None else scale.reshape(-1, 1) * valid
            grad_y = grad.index_select(1, index).mul_(scale.to(grad.dtype))
        if ctx.needs_input_grad[1]:
            placed = y.index_select(1, inverse.view(-1)).view(batch, n_orders, tokens * channels)
            with torch.autocast(y.device.type, enabled=False):
                grad_weights = torch.bmm(placed, grad.to(y.dtype).reshape(batch, tokens * channels, 1)).sum(0)
            grad_weights = grad_weights.view(n_orders).to(weights.dtype)
        return grad_y, grad_weights, None, None, None


def scan(x: Tensor, plan: ScanPlan) -> Tensor:
    """(B, S, C) map tokens -> (B*K*W, T, C) sequences for the operator."""
    batch, _, channels = x.shape
    seq = _Scan.apply(x, plan.index, plan.inverse)
    return seq.view(batch * plan.n_orders * plan.n_windows, plan.seq_len, channels)


def unscan(y: Tensor, plan: ScanPlan, weights: Optional[Tensor] = None) -> Tensor:
    """(B*K*W, T, C) operator output -> (B, S, C): orders restored and merged with `weights`
    (K,), which should sum to one; None = equal weights."""
    channels = y.shape[-1]
    y = y.reshape(-1, plan.n_orders * plan.n_windows * plan.seq_len, channels)
    if weights is None:
        weights = y.new_full((plan.n_orders,), 1.0 / plan.n_orders)
    return _Unscan.apply(y, weights.to(y.dtype), plan.index, plan.inverse, plan.valid)


def sequence_lengths(plan: ScanPlan, batch: int) -> Optional[Tensor]:
    """Real tokens per operator sequence (B*K*W,), or None when every window is full."""
    if plan.lengths is None:
        return None
    return plan.lengths.repeat(batch * plan.n_orders)
