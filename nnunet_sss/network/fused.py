"""Hand-written forward/backward for the memory-bound pieces of an RWKV layer, each next to its
plain-autograd reference (the tests compare the two, values and gradients).

On the CPU the RWKV layer's time goes to passes over full-resolution maps, not to its
matmuls. Autograd spends extra passes here: a tensor read by two consumers gets its two
gradients added, a broadcast's gradient is a slow strided reduction, a slice's gradient is a
zero-filled copy, and every elementwise result in a chain is saved. Each function below does
its piece in the fewest passes and keeps only what its backward needs:

- `mix_project`: [z | shift(z)] -> r = (both) W_r^T at full resolution and kv = pool(both) W_kv^T
  (the pool divides the map, or no pool). Keeps the concat and the pooled concat.
- `gate_project`: sigmoid(r) * repeat(y) -> W_o. Keeps sigmoid(r) and the pooled y; the
  product is recomputed in backward, the repeat is a broadcast view.
- `squared_relu_gate`: sigmoid(r') * (relu(k)^2 W_v^T) from one (k | r') tensor. Keeps relu(k),
  sigmoid(r') and the value output; the gradient of (k | r') is one concatenation, not two
  zero-filled slice gradients.

Under autocast the backward replays the forward's autocast state, so matmuls keep their
dtype (fp16 on CUDA) while gradients are returned in each input's dtype.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .pool import avg_pool_tokens, cell_view, pooled_view, repeat_tokens, spread_cells, sum_cells
from .shift import _shift_into, shift_concat


def _amp_state(t: Tensor):
    device = t.device.type
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def _replay(state):
    device, enabled, dtype = state
    return torch.autocast(device, dtype=dtype, enabled=enabled)


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _weight_grad(grad_out: Tensor, inp: Tensor) -> Tensor:
    return _rows(grad_out).t() @ _rows(inp)


# ---------------------------------------------------------------- shift concat -> projections
def mix_project_reference(z, w_r, w_kv, starts, pool):
    both = shift_concat(z, starts)
    r = F.linear(both, w_r)
    if any(p > 1 for p in pool):
        both = avg_pool_tokens(both, pool)
    return r, F.linear(both, w_kv)


class _MixProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, w_r, w_kv, starts, pool):
        channels = z.shape[-1]
        both = z.new_empty((*z.shape[:-1], 2 * channels))
        both[..., :channels] = z
        _shift_into(z, both[..., channels:], starts, reverse=False)
        pooled = sum_cells(both, pool).div_(math.prod(pool)) if math.prod(pool) > 1 else both
        r, kv = F.linear(both, w_r), F.linear(pooled, w_kv)
        ctx.starts, ctx.pool, ctx.amp = starts, pool, _amp_state(z)
        ctx.dtypes = (z.dtype, w_r.dtype, w_kv.dtype)
        ctx.save_for_backward(both, pooled, w_r, w_kv)
        return r, kv

    @staticmethod
    def backward(ctx, grad_r, grad_kv):
        both, pooled, w_r, w_kv = ctx.saved_tensors
        with _replay(ctx.amp):
            grad_both = grad_r @ w_r
            grad_pooled = grad_kv @ w_kv
            grad_w_r, grad_w_kv = _weight_grad(grad_r, both), _weight_grad(grad_kv, pooled)
        grad_both = grad_both.to(torch.promote_types(grad_both.dtype, grad_pooled.dtype))
        if math.prod(ctx.pool) > 1:
            cell_view(grad_both, ctx.pool).add_(pooled_view(grad_pooled), alpha=1 / math.prod(ctx.pool))
        else:
            grad_both += grad_pooled
        channels = grad_both.shape[-1] // 2
        grad_z = torch.empty_like(grad_both[..., :channels], memory_format=torch.contiguous_format)
        _shift_into(grad_both[..., channels:], grad_z, ctx.starts, reverse=True)
        grad_z += grad_both[..., :channels]
        return (grad_z.to(ctx.dtypes[0]), grad_w_r.to(ctx.dtypes[1]), grad_w_kv.to(ctx.dtypes[2]), None, None)


def mix_project(z: Tensor, w_r: Tensor, w_kv: Tensor, starts, pool: Tuple[int, ...]):
    """(r, kv) of [z | shift(z)] (shift windows beginning at `starts`): r at z's resolution,
    kv at the pooled one."""
    if any(s % p for s, p in zip(z.shape[1:-1], pool)):
        return mix_project_reference(z, w_r, w_kv, starts, pool)
    return _MixProject.apply(z, w_r, w_kv, tuple(tuple(a) for a in starts), tuple(pool))


# ---------------------------------------------------------------- gate and output projection
def gate_project_reference(r, y, w_o, pool):
    if any(p > 1 for p in pool):
        y = repeat_tokens(y, pool, r.shape[1:-1])
    return F.linear(torch.sigmoid(r) * y, w_o)


def _gated(s: Tensor, y: Tensor, pool) -> Tensor:
    if math.prod(pool) == 1:
        return s * y
    return (cell_view(s, pool) * pooled_view(y)).view(s.shape[:-1] + (-1,))


class _GateProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx, r, y, w_o, pool):
        s = torch.sigmoid(r)
        out = F.linear(_gated(s, y, pool), w_o)
        ctx.pool, ctx.amp, ctx.dtypes = pool, _amp_state(r), (r.dtype, y.dtype, w_o.dtype)
        ctx.save_for_backward(s, y, w_o)
        return out

    @staticmethod
    def backward(ctx, grad):
        s, y, w_o = ctx.saved_tensors
        pool = ctx.pool
        with _replay(ctx.amp):
            grad_w = _weight_grad(grad, _gated(s, y, pool))
            grad_g = grad @ w_o
        t = grad_g * s                                         # d loss / d (y repeated)
        grad_y = sum_cells(t, pool) if math.prod(pool) > 1 else t
        grad_r = torch.addcmul(t, t, s, value=-1)              # t (1 - s)
        grad_r = _gated(grad_r, y, pool)
        return grad_r.to(ctx.dtypes[0]), grad_y.to(ctx.dtypes[1]), grad_w.to(ctx.dtypes[2]), None


def gate_project(r: Tensor, y: Tensor, w_o: Tensor, pool: Tuple[int, ...]) -> Tensor:
    """(sigmoid(r) * y repeated over the pool's cells) W_o^T; y is r's map pooled by `pool`."""
    if any(s % p for s, p in zip(r.shape[1:-1], pool)):
        return gate_project_reference(r, y, w_o, pool)
    return _GateProject.apply(r, y, w_o, tuple(pool))


# ---------------------------------------------------------------- channel-mix tail
def squared_relu_gate_reference(kr, w_v, hidden):
    k, r = kr.split([hidden, kr.shape[-1] - hidden], -1)
    return torch.sigmoid(r) * F.linear(torch.relu(k).square(), w_v)


class _SquaredReLUGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kr, w_v, hidden):
        h = kr[..., :hidden].clamp_min(0)
        s = torch.sigmoid(kr[..., hidden:])
        vo = F.linear(h * h, w_v)
        ctx.hidden, ctx.amp, ctx.dtypes = hidden, _amp_state(kr), (kr.dtype, w_v.dtype)
        ctx.save_for_backward(h, s, vo, w_v)
        return s * vo

    @staticmethod
    def backward(ctx, grad):
        h, s, vo, w_v = ctx.saved_tensors
        grad_vo = grad * s
        t = grad * vo * s
        grad_r = torch.addcmul(t, t, s, value=-1)                      # d/dr' = grad vo s (1 - s)
        with _replay(ctx.amp):
            grad_w = _weight_grad(grad_vo, h * h)
            grad_h2 = grad_vo @ (2 * w_v)                              # d (h^2) / dk = 2 h
        grad_kr = torch.cat((grad_h2.mul_(h), grad_r.to(grad_h2.dtype)), -1)
        return grad_kr.to(ctx.dtypes[0]), grad_w.to(ctx.dtypes[1]), None


def squared_relu_gate(kr: Tensor, w_v: Tensor, hidden: int) -> Tensor:
    """sigmoid(r') * (relu(k)^2 W_v^T) where kr = (k | r') holds `hidden` key channels first."""
    return _SquaredReLUGate.apply(kr, w_v, hidden)
