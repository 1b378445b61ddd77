"""The operators (layer 1: knows no network and no nnU-Net).

`bi_wkv` is the Bi-WKV entry point (a torch.library custom op); `bi_wkv_reference` is the
O(T^2) float64 definition, for tests only. `linear_sample` is the point sampler of the
dynamic upsampling (F.grid_sample's bilinear/border maths, channels-last on the CPU), with
`linear_sample_reference` its float64 definition. `token_shift` is the windowed token shift of
the RWKV layers (one op; C++ on the CPU, one gather elsewhere), with `token_shift_reference`
its slice-by-slice definition. `cell_sum` sums each cell of a channels-last map (the
low-resolution WKV's pooling; one op, C++ on the CPU), with `cell_sum_reference` its definition.
See docs/kernels.md.
"""
from .cell_sum import cell_sum, cell_sum_reference
from .sampler import linear_sample, linear_sample_reference
from .op import BACKENDS, bi_wkv
from .reference import bi_wkv_reference
from .token_shift import token_shift, token_shift_reference

__all__ = ["bi_wkv", "bi_wkv_reference", "BACKENDS", "cell_sum", "cell_sum_reference", "linear_sample", "linear_sample_reference", "token_shift",
           "token_shift_reference"]
