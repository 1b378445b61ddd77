"""The Bi-WKV operator (layer 1: knows no network and no nnU-Net).

TEMPORARY: `bi_wkv` is the float64 reference until the O(T) paths land (issue 3).
"""
from .reference import bi_wkv_reference


def bi_wkv(k, v, w, u, *, lengths=None, backend=None):
    """Bi-WKV over (N, T, C) sequences; see docs/ARCHITECTURE.md for the contract."""
    return bi_wkv_reference(k, v, w, u, lengths).to(v.dtype)


__all__ = ["bi_wkv", "bi_wkv_reference"]
