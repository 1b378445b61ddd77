"""Bi-WKV by its definition: O(T^2) in float64. For tests only.

y_t = (sum_{i!=t} e^{-(|t-i|-1) w/T + k_i} v_i + e^{u/T + k_t} v_t) / (same with v = 1)

Written as y = (D (E v)) / (D E) with the (T, T) weight matrix D[t, i] = e^{-(|t-i|-1) w/T}
off the diagonal, e^{u/T} on it, and E_i = e^{k_i - max k}. Every entry of D lies within
e^{+-(|w| + |u|)}, so float64 holds it for any |w| < 700; subtracting the max key keeps E in
(0, 1]. Terms that underflow to 0 weigh less than e^{-700} against the largest one. D is
shared by all sequences of one length, so the sums are batched matrix products.
"""
import torch

_BLOCK_ELEMS = 1 << 22  # float64 elements per (channels, T, T) block of D: 32 MiB


def _same_length(k, v, w, u):
    """k, v: (N, L, C) float64, one real length L; w, u: (C,) already divided by L."""
    n_seq, length, chans = k.shape
    e_k = torch.exp(k - k.amax(1, keepdim=True).detach())  # y does not depend on the shift
    pos = torch.arange(length, dtype=torch.float64, device=k.device)
    gap = (pos[:, None] - pos[None, :]).abs() - 1  # (t, i): |t - i| - 1
    diag = torch.eye(length, dtype=torch.bool, device=k.device)
    block = max(1, _BLOCK_ELEMS // max(1, length * length))
    outs = []
    for c0 in range(0, chans, block):
        c1 = min(chans, c0 + block)
        weights = torch.where(diag, u[c0:c1, None, None], -gap * w[c0:c1, None, None]).exp()  # (c, t, i)
        e_c = e_k[:, :, c0:c1].permute(2, 1, 0).contiguous()  # (c, i, n); strided bmm is slow
        num = torch.bmm(weights, e_c * v[:, :, c0:c1].permute(2, 1, 0).contiguous())
        den = torch.bmm(weights, e_c)
        outs.append((num / den).permute(2, 1, 0))  # (n, t, c)
    return torch.cat(outs, 2)


def bi_wkv_reference(k, v, w, u, lengths=None):
    """k, v: (N, T, C); w, u: (C,); lengths: optional (N,) real tokens per sequence.

    Returns float64 (N, T, C); positions >= lengths[n] are 0. Differentiable (autograd in float64).
    """
    n_seq, t_max, _ = k.shape
    k, v, w, u = (x.to(torch.float64) for x in (k, v, w, u))
    lengths = [t_max] * n_seq if lengths is None else [int(n) for n in lengths]
    rows = [torch.zeros_like(v[n]) for n in range(n_seq)]
    for length in sorted(set(lengths) - {0}):
        index = [n for n in range(n_seq) if lengths[n] == length]
        y = _same_length(k[index, :length], v[index, :length], w / length, u / length)
        for row, n in enumerate(index):
            rows[n] = torch.cat([y[row], rows[n][length:]], 0)
    return torch.stack(rows, 0) if rows else torch.zeros_like(v)
