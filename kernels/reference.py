"""Bi-WKV by its definition: O(T^2) in float64. For tests only.

y_t = (sum_{i!=t} e^{-(|t-i|-1) w/T + k_i} v_i + e^{u/T + k_t} v_t) / (same with v = 1)
"""
import torch


def bi_wkv_reference(k, v, w, u, lengths=None):
    """k, v: (N, T, C); w, u: (C,); lengths: optional (N,) real tokens per sequence.

    Returns float64 (N, T, C); positions >= lengths[n] are 0. Differentiable (autograd in float64).
    """
    n_seq, t_max, _ = k.shape
    k, v, w, u = (x.to(torch.float64) for x in (k, v, w, u))
    if lengths is None:
        lengths = [t_max] * n_seq
    out = torch.zeros_like(v)
    outs = []
    for n in range(n_seq):
        length = int(lengths[n])
        if length == 0:
            outs.append(out[n])
            continue
        pos = torch.arange(length, dtype=torch.float64, device=k.device)
        dist = (pos[:, None] - pos[None, :]).abs()  # (t, i)
        # exponent (t, i, c): -(|t-i|-1) w' + k_i off the diagonal, u' + k_t on it
        expo = -(dist - 1)[..., None] * (w / length) + k[n, None, :length, :]
        diag = torch.eye(length, dtype=torch.bool, device=k.device)[..., None]
        expo = torch.where(diag, (u / length) + k[n, None, :length, :], expo)
        expo = expo - expo.amax(dim=1, keepdim=True)  # stable: largest term of each row is e^0
        weight = expo.exp()
        y = (weight * v[n, None, :length, :]).sum(1) / weight.sum(1)
        outs.append(torch.cat([y, out[n, length:]], 0))
    return torch.stack(outs, 0) if outs else out
