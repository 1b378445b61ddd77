"""Bi-WKV as a chain of PyTorch ops: O(T) time and memory, any device, exact.

The decayed sums become cumulative sums of exponentially re-weighted terms in float64:

    pre(x)_t = sum_{i<t} lam^(t-1-i) x_i = e^{-w'(t-1)} * sum_{i<t} e^{w' i} x_i
    suf(x)_t = sum_{i>t} lam^(i-t-1) x_i = e^{w'(t+1)} * sum_{i>t} e^{-w' i} x_i

with lam = e^{-w'} and w' = w / T. Since |w'| (T - 1) <= |w|, every factor stays within
e^{+-|w|}, which float64 holds for any |w| < 700; each cumulative sum only ever adds terms
that belong to the result, so nothing cancels. Keys are stabilised by the per-(n, c) max
over the real tokens (y does not depend on that shift). This is the fallback where the C++
extension cannot be built and the path for devices without a dedicated kernel.
"""
import torch


def _exclusive_cumsum(x):
    """sum_{i<t} x_i along dim 1, without subtracting (no cancellation)."""
    out = torch.zeros_like(x)
    out[:, 1:] = x[:, :-1].cumsum(1)
    return out


def _reverse_exclusive_cumsum(x):
    """sum_{i>t} x_i along dim 1."""
    out = torch.zeros_like(x)
    out[:, :-1] = x[:, 1:].flip(1).cumsum(1).flip(1)
    return out


class _Geometry:
    """Masks, scaled w'/u' and the bounded re-weighting factors for one (N, T, C) batch."""

    def __init__(self, k, w, u, lengths):
        n_seq, t_max, _ = k.shape
        dd = torch.float64
        pos = torch.arange(t_max, device=k.device, dtype=dd).view(1, t_max, 1)
        if lengths is None:
            lengths = torch.full((n_seq,), t_max, device=k.device, dtype=torch.int64)
        lengths = lengths.to(device=k.device, dtype=torch.int64)
        self.mask = pos < lengths.view(n_seq, 1, 1).to(dd)  # (N, T, 1) real tokens
        self.length = lengths.clamp(min=1).to(dd).view(n_seq, 1, 1)
        self.pos = pos
        self.w = w.to(dd).view(1, 1, -1) / self.length  # w' (N, 1, C)
        self.u = u.to(dd).view(1, 1, -1) / self.length
        zero = torch.zeros((), device=k.device, dtype=dd)
        # every exponent is masked to 0 on padding so that nothing there can overflow
        self.pre_in = torch.exp(torch.where(self.mask, self.w * pos, zero))
        self.pre_out = torch.exp(torch.where(self.mask, -self.w * (pos - 1), zero))
        self.suf_in = torch.exp(torch.where(self.mask, -self.w * pos, zero))
        self.suf_out = torch.exp(torch.where(self.mask, self.w * (pos + 1), zero))
        self.bonus = torch.exp(self.u)

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

    def around(self, x):
        """pre(x) + suf(x): the off-diagonal decayed sum over both directions."""
        return (self.pre_out * _exclusive_cumsum(self.pre_in * x)
                + self.suf_out * _reverse_exclusive_cumsum(self.suf_in * x))

    def around_weighted(self, x):
        """Same, with each term also weighted by its exponent (|t - i| - 1): the d/d(-w') sums."""
        pre_x = self.pre_in * x
        pre = (self.pos - 1) * _exclusive_cumsum(pre_x) - _exclusive_cumsum(self.pos * pre_x)
        suf_x = self.suf_in * x
        suf = _reverse_exclusive_cumsum(self.pos * suf_x) - (self.pos + 1) * _reverse_exclusive_cumsum(suf_x)
        return self.pre_out * pre + self.suf_out * suf


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
