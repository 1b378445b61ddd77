"""Hand-written forward/backward for the memory-bound pieces of an RWKV layer, each next to its
plain-autograd reference (the tests compare the two, values and gradients).

On the CPU the RWKV layer's time goes to passes over full-resolution maps, not to its
matmuls. Autograd spends extra passes here: a tensor read by two consumers gets its two
gradients added, a broadcast's gradient is a slow strided reduction, a slice's gradient is a
zero-filled copy, and every elementwise result in a chain is saved. Each function below does
its piece in the fewest passes and keeps only what its backward needs:

- `shift_mix_project`: token shift, Vision-RWKV's per-channel mix of each token with its shifted
  neighbour, and the projections that read the mixes (R at full resolution; K, V on the pooled
  map). Keeps shift(z) and z - shift(z) (and their pooled maps) whatever the number of
  projections; each mix is recomputed in backward (one pass) instead of being kept.
- `gate_project`: sigmoid(r) * repeat(y) -> W_o. Keeps sigmoid(r) and the pooled y; the
  product is recomputed in backward, the repeat is a broadcast view.
- `squared_relu_gate`: sigmoid(r') * (relu(k)^2 W_v^T). Keeps relu(k), sigmoid(r') and the value
  output; relu(k)^2 is recomputed in backward.

Under autocast the backward replays the forward's autocast state, so matmuls keep their
dtype (fp16 on CUDA) while gradients are returned in each input's dtype.

Under torch.compile each function is its plain-autograd reference instead (`_traced`): inductor
fuses and recomputes by itself, and the hand-written backwards' in-place writes into fresh
buffers do not functionalise in every torch version (2.11 on CUDA fails the training graph).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from nnunet_sss.kernels import cell_sum

from .pool import avg_pool_tokens, cell_view, pooled_view, repeat_tokens
from .shift import window_shift


def _amp_state(t: Tensor):
    device = t.device.type
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


def _replay(state):
    device, enabled, dtype = state
    return torch.autocast(device, dtype=dtype, enabled=enabled)


def _traced() -> bool:
    return torch.compiler.is_compiling()


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])


def _weight_grad(grad_out: Tensor, inp: Tensor) -> Tensor:
    return _rows(grad_out).t() @ _rows(inp)


# ---------------------------------------------------------------- token shift, mix, projections
def _lerp(shifted: Tensor, delta: Tensor, mix: Tensor) -> Tensor:
    """mix * x + (1 - mix) * shift(x), from shift(x) and delta = x - shift(x)."""
    return torch.addcmul(shifted, delta, mix)


def shift_mix_project_reference(z, starts, pool, n_full, *params):
    shifted = window_shift(z, starts)
    full, low = (z, shifted), (z, shifted)
    if math.prod(pool) > 1:
        low = (avg_pool_tokens(z, pool), avg_pool_tokens(shifted, pool))
    outs = []
    for i in range(len(params) // 2):
        x, s = full if i < n_full else low
        outs.append(F.linear(_lerp(s, x - s, params[2 * i + 1]), params[2 * i]))
    return tuple(outs)


class _ShiftMixProject(torch.autograd.Function):
    """Works on token rows (N, C): each projection is one addcmul and one mm forward; its
    backward one addcmul, two mm and three elementwise ops, the gradients of all projections
    of a resolution summed into two accumulators (through x and through shift(x))."""

    @staticmethod
    def forward(ctx, z, starts, pool, n_full, *params):
        shifted = window_shift(z, starts)
        delta = z - shifted
        pooled = math.prod(pool) > 1
        low = (cell_sum(shifted, pool, 1 / math.prod(pool)), cell_sum(delta, pool, 1 / math.prod(pool))) \
            if pooled else (shifted, delta)
        rows = {"full": (_rows(shifted), _rows(delta)), "low": tuple(_rows(t) for t in low)}
        outs = []
        for i in range(len(params) // 2):
            key = "full" if i < n_full else "low"
            s, d = rows[key]
            out = torch.mm(_lerp(s, d, params[2 * i + 1]), params[2 * i].t())
            outs.append(out.view(*(shifted if key == "full" else low[0]).shape[:-1], -1))
        ctx.starts, ctx.pool, ctx.n_full, ctx.amp = starts, pool, n_full, _amp_state(z)
        ctx.dtypes = (z.dtype, *(p.dtype for p in params))
        ctx.save_for_backward(shifted, delta, *low, *params)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        shifted, delta, low_shifted, low_delta, *params = ctx.saved_tensors
        rows = {"full": (_rows(shifted), _rows(delta)), "low": (_rows(low_shifted), _rows(low_delta))}
        # per resolution: [sum of the projections' input gradients, sum of mix * each of them]
        acc = {}
        param_grads = []
        for i, grad in enumerate(grads):
            if grad is None:
                param_grads += [None, None]
                continue
            weight, mix = params[2 * i], params[2 * i + 1]
            key = "full" if i < ctx.n_full else "low"
            s, d = rows[key]
            grad = _rows(grad)
            with _replay(ctx.amp):
                grad_w = torch.mm(grad.t(), _lerp(s, d, mix))
                grad_in = torch.mm(grad, weight)
            grad_mix = (grad_in * d).sum(0)
            if key in acc:
                acc[key][1].addcmul_(grad_in, mix)
                acc[key][0].add_(grad_in)
            else:
                through_x = grad_in * mix
                acc[key] = [grad_in.to(through_x.dtype), through_x]
            param_grads += [grad_w.to(ctx.dtypes[1 + 2 * i]), grad_mix.to(ctx.dtypes[2 + 2 * i])]
        # mix * x + (1 - mix) * shift(x): x gets mix * g, shift(x) gets g - mix * g
        if "full" in acc:
            total, grad_x = acc["full"]
        else:
            total, grad_x = torch.zeros_like(_rows(delta)), torch.zeros_like(_rows(delta))
        if "low" in acc:
            if math.prod(ctx.pool) > 1:
                for full, low in zip((total, grad_x), acc["low"]):
                    cell_view(full.view(delta.shape), ctx.pool).add_(pooled_view(low.view(low_delta.shape)),
                                                                      alpha=1 / math.prod(ctx.pool))
            else:
                total.add_(acc["low"][0])
                grad_x.add_(acc["low"][1])
        grad_shift = total.sub_(grad_x).view(delta.shape)
        grad_x = grad_x.view(delta.shape).add_(window_shift(grad_shift, ctx.starts, reverse=True))
        return (grad_x.to(ctx.dtypes[0]), None, None, None, *param_grads)


def shift_mix_project(z: Tensor, starts, pool: Tuple[int, ...], full=(), low=()):
    """Token shift (windows beginning at `starts`), Vision-RWKV's mix mu * x + (1 - mu) * shift(x)
    and a projection, for each (weight, mu) pair: `full` at z's resolution, `low` at z pooled by
    `pool`. Returns the projections in that order. `starts` None: no token shift, so no mix (mu
    is None) and each projection reads z (or z pooled) itself."""
    if starts is None:
        low_z = avg_pool_tokens(z, tuple(pool)) if low and math.prod(pool) > 1 else z
        return tuple(F.linear(z, w) for w, _ in full) + tuple(F.linear(low_z, w) for w, _ in low)
    params = [t for pair in (*full, *low) for t in pair]
    starts = tuple(tuple(a) for a in starts)
    if _traced() or any(s % p for s, p in zip(z.shape[1:-1], pool)):
        return shift_mix_project_reference(z, starts, tuple(pool), len(full), *params)
    return _ShiftMixProject.apply(z, starts, tuple(pool), len(full), *params)


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
        grad_y = cell_sum(t, pool)
        grad_r = torch.addcmul(t, t, s, value=-1)              # t (1 - s)
        grad_r = _gated(grad_r, y, pool)
        return grad_r.to(ctx.dtypes[0]), grad_y.to(ctx.dtypes[1]), grad_w.to(ctx.dtypes[2]), None


def gate_project(r: Tensor, y: Tensor, w_o: Tensor, pool: Tuple[int, ...]) -> Tensor:
    """(sigmoid(r) * y repeated over the pool's cells) W_o^T; y is r's map pooled by `pool`."""
    if _traced() or any(s % p for s, p in zip(r.shape[1:-1], pool)):
        return gate_project_reference(r, y, w_o, pool)
    return _GateProject.apply(r, y, w_o, tuple(pool))


# ---------------------------------------------------------------- channel-mix tail
def squared_relu_gate_reference(k, r, w_v):
    return torch.sigmoid(r) * F.linear(torch.relu(k).square(), w_v)


class _SquaredReLUGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, k, r, w_v):
        h = k.clamp_min(0)
        s = torch.sigmoid(r)
        vo = F.linear(h * h, w_v)
        ctx.amp, ctx.dtypes = _amp_state(k), (k.dtype, r.dtype, w_v.dtype)
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
        grad_k = grad_h2.mul_(h)
        return grad_k.to(ctx.dtypes[0]), grad_r.to(ctx.dtypes[1]), grad_w.to(ctx.dtypes[2])


def squared_relu_gate(k: Tensor, r: Tensor, w_v: Tensor) -> Tensor:
    """sigmoid(r') * (relu(k)^2 W_v^T)."""
    if _traced():
        return squared_relu_gate_reference(k, r, w_v)
    return _SquaredReLUGate.apply(k, r, w_v)
