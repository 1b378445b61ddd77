"""Bi-WKV as a chain of PyTorch ops: O(T) time and memory, any device, exact.

The decayed sums become cumulative sums of exponentially re-weighted terms in float64:

    pre(x)_t = sum_{i<t} lam^(t-1-i) x_i = e^{-w'(t-1)} * sum_{i<t} e^{w' i} x_i

with lam = e^{-w'} and w' = w / T (the suffix sums are the prefix sums of the reversed
sequence). The re-weighting runs in blocks, positions counted from each block's start, and
the state at each block's start is carried exactly from the one before (one small step per
block). A block holds at most BLOCK tokens and at most 600 / max|w'| (the largest decay is read
once per call to size them, a host read on a GPU), so every factor stays within e^{+-600}
whatever the decay: a per-token decay of 10 or 1,000 over thousands of tokens is exact too, at
more blocks. Each cumulative sum only ever adds terms that belong to the result, so nothing
cancels. Keys are stabilised by the per-(n, c) max over the real tokens (y does not depend on
that shift). This is the fallback where the C++ extension cannot be built and the path for
devices without a dedicated kernel.
"""
import torch


BLOCK = 64  # tokens per re-weighting block (at most)
_EXP_SPAN = 600.0  # a block's re-weighting factors stay within e^{+-_EXP_SPAN}
_EXP_MAX = 700.0  # exponents are clipped here: only padding (where x is 0) can reach it


def _exp(a):
    return torch.exp(a.clamp(max=_EXP_MAX))


def _exclusive_cumsum(x, dim=1):
    """sum_{i<t} x_i along `dim`, without subtracting (no cancellation)."""
    out = torch.zeros_like(x)
    out.narrow(dim, 1, x.shape[dim] - 1).copy_(x.narrow(dim, 0, x.shape[dim] - 1).cumsum(dim))
    return out


def decayed_prefix(x, w, mask):
    """(pre, weighted) of x (N, T, C) float64 with a per-token decay w (N, 1, C):
    pre_t = sum_{i<t} e^{-w (t-1-i)} x_i and weighted_t = sum_{i<t} (t-1-i) e^{-w (t-1-i)} x_i.
    x must be 0 past each sequence's real tokens (padding last, `mask` (N, T, 1) False there);
    the sums are 0 there too (where carries through padding may have overflowed)."""
    n_seq, t_max, chans = x.shape
    rate = float(w.abs().max()) if w.numel() else 0.0  # one read of the largest decay (sizes the blocks)
    length = max(1, min(BLOCK, t_max, int(_EXP_SPAN / rate) if rate > 0 else BLOCK))
    n_blocks = -(-t_max // length)
    blocks = torch.nn.functional.pad(x, (0, 0, 0, n_blocks * length - t_max)).view(n_seq, n_blocks, length, chans)
    r = torch.arange(length, dtype=x.dtype, device=x.device).view(1, 1, length, 1)
    w_b = w.view(n_seq, 1, 1, chans)
    weighted_in = _exp(w_b * r) * blocks
    total, total_r = _exclusive_cumsum(weighted_in, 2), _exclusive_cumsum(r * weighted_in, 2)
    out = _exp(-w_b * (r - 1))
    pre, pre_weighted = out * total, out * ((r - 1) * total - total_r)
    if n_blocks > 1:  # add what the tokens before each block reach into it, carried block by block
        at_end = _exp(-w * (length - 1))  # (N, 1, C)
        block_sum = at_end * weighted_in.sum(2)
        block_weighted = at_end * ((length - 1) * weighted_in.sum(2) - (r * weighted_in).sum(2))
        decay_block = _exp(-w * length).squeeze(1)
        state, state_weighted = torch.zeros_like(block_sum[:, 0]), torch.zeros_like(block_sum[:, 0])
        starts, starts_weighted = [], []
        for b in range(n_blocks):
            starts.append(state)
            starts_weighted.append(state_weighted)
            state, state_weighted = (decay_block * state + block_sum[:, b],
                                     decay_block * (length * state + state_weighted) + block_weighted[:, b])
        carried, carried_weighted = torch.stack(starts, 1)[:, :, None], torch.stack(starts_weighted, 1)[:, :, None]
        reach = _exp(-w_b * r)
        pre = pre + reach * carried
        pre_weighted = pre_weighted + reach * (r * carried + carried_weighted)
    flat = (n_seq, n_blocks * length, chans)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return tuple(torch.where(mask, s.reshape(flat)[:, :t_max], zero) for s in (pre, pre_weighted))


class _Geometry:
    """Masks, scaled w'/u' for one (N, T, C) batch."""

    def __init__(self, k, w, u, lengths):
        n_seq, t_max, _ = k.shape
        dd = torch.float64
        pos = torch.arange(t_max, device=k.device, dtype=dd).view(1, t_max, 1)
        if lengths is None:
            lengths = torch.full((n_seq,), t_max, device=k.device, dtype=torch.int64)
        lengths = lengths.to(device=k.device, dtype=torch.int64)
        self.mask = pos < lengths.view(n_seq, 1, 1).to(dd)  # (N, T, 1) real tokens
        self.length = lengths.clamp(min=1).to(dd).view(n_seq, 1, 1)
        self.w = w.to(dd).view(1, 1, -1) / self.length  # w' (N, 1, C)
        self.u = u.to(dd).view(1, 1, -1) / self.length
        self.bonus = torch.exp(self.u)
        # each sequence's real tokens in reverse order, its padding left in place (an involution)
        t = pos.view(1, t_max).to(torch.int64)
        n = lengths.view(n_seq, 1)
        self.reverse_index = torch.where(t < n, n - 1 - t, t).view(n_seq, t_max, 1).expand(-1, -1, k.shape[2])

    def values(self, v):
        """v in float64, 0 on padding (whatever the padding holds)."""
        v = v.to(torch.float64)
        return torch.where(self.mask, v, torch.zeros_like(v))

    def keys(self, k):
        """E = exp(k - max over real tokens), exactly 0 on padding; and that max (N, C)."""
        k = k.to(torch.float64)
        masked = torch.where(self.mask, k, torch.full_like(k, -torch.inf))
        k_max = masked.amax(1, keepdim=True)
        k_max = torch.where(torch.isfinite(k_max), k_max, torch.zeros_like(k_max))
        return torch.exp(masked - k_max), k_max.squeeze(1)

    def _both_ways(self, x, which):
        """Prefix plus suffix sum of x, which is 0 on padding: the suffix sums are the prefix sums
        of each sequence's real tokens in reverse order."""
        backwards = decayed_prefix(x.gather(1, self.reverse_index), self.w, self.mask)[which]
        return decayed_prefix(x, self.w, self.mask)[which] + backwards.gather(1, self.reverse_index)

    def around(self, x):
        """pre(x) + suf(x): the off-diagonal decayed sum over both directions."""
        return self._both_ways(x, 0)

    def around_weighted(self, x):
        """Same, with each term also weighted by its exponent (|t - i| - 1): the d/d(-w') sums."""
        return self._both_ways(x, 1)


def _num_den(geo, e_k, v):
    e_kv = e_k * v
    num = geo.around(e_kv) + geo.bonus * e_kv
    den = geo.around(e_k) + geo.bonus * e_k
    den = torch.where(geo.mask, den, torch.ones_like(den))
    return num, den


def forward(k, v, w, u, lengths=None):
    """(y, y - centre, den, key max, centre) in float64; the C++ kernel returns the same in fp32.

    y = 0 on padding; the centre is v at the key max. Only y is used by `backward` here,
    which recomputes the rest in float64. (The op casts to float64 for float64 inputs.)
    """
    if k.numel() == 0:  # empty N, T or C: nothing to reduce over
        empty = torch.zeros(k.shape, dtype=torch.float64, device=k.device)
        key = torch.zeros((k.shape[0], k.shape[2]), dtype=torch.float64, device=k.device)
        return empty, empty.clone(), empty.clone(), key, key.clone()
    geo = _Geometry(k, w, u, lengths)
    e_k, k_max = geo.keys(k)
    num, den = _num_den(geo, e_k, geo.values(v))
    y = torch.where(geo.mask, num / den, torch.zeros_like(num))
    at_max = torch.where(geo.mask, k.to(torch.float64), -torch.inf).argmax(1, keepdim=True)
    centre = geo.values(v).gather(1, at_max).squeeze(1)
    y_centred = torch.where(geo.mask, y - centre[:, None, :], torch.zeros_like(y))
    return y, y_centred, den, k_max, centre


def backward(grad_y, k, v, w, u, lengths=None):
    """Gradients (float64) of sum(grad_y * y) for k, v (N, T, C) and w, u (C,)."""
    if k.numel() == 0:
        zeros = torch.zeros(k.shape, dtype=torch.float64, device=k.device)
        flat = torch.zeros(k.shape[2], dtype=torch.float64, device=k.device)
        return zeros, zeros.clone(), flat, flat.clone()
    geo = _Geometry(k, w, u, lengths)
    e_k, _ = geo.keys(k)
    v = geo.values(v)
    num, den = _num_den(geo, e_k, v)
    g = torch.where(geo.mask, grad_y.to(torch.float64), torch.zeros_like(num))
    p = g / den  # dL/dnum
    q = -p * num / den  # dL/dden
    grad_v = e_k * (geo.bonus * p + geo.around(p))
    grad_k = v * grad_v + e_k * (geo.bonus * q + geo.around(q))
    grad_u_seq = (geo.bonus * e_k * (p * v + q)).sum(1, keepdim=True)  # d/du' per sequence
    grad_w_seq = -(e_k * (v * geo.around_weighted(p) + geo.around_weighted(q))).sum(1, keepdim=True)
    grad_w = (grad_w_seq / geo.length).sum((0, 1))
    grad_u = (grad_u_seq / geo.length).sum((0, 1))
    return grad_k, grad_v, grad_w, grad_u
