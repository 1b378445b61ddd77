"""The Bi-WKV operator (layer 1: knows no network and no nnU-Net).

`bi_wkv` is the public entry point (a torch.library custom op); `bi_wkv_reference` is the
O(T^2) float64 definition, for tests only. See docs/kernels.md.
"""
from .op import BACKENDS, bi_wkv
from .reference import bi_wkv_reference

__all__ = ["bi_wkv", "bi_wkv_reference", "BACKENDS"]
