"""Spatial mix: token shift -> R, K, V -> Bi-WKV per window and scan order -> merge -> LayerNorm
-> sigmoid(R) gate -> output projection. Works on channels-last tokens (B, *S, C).

Token-shift mix: Vision-RWKV's x_r = mu_r * x + (1 - mu_r) * shift(x) (and k, v alike), done with
the projections in one hand-written step (fused.shift_mix_project) that keeps two maps for
backward whatever the number of projections. K and V are mixed on the pooled map (pooling and
the per-channel mix commute).

Low-resolution WKV: with pool p > 1, K and V are computed from the average-pooled map (factor p
per axis, partial cells at the far border averaged over their real tokens), the WKV runs
there, and its normalised output is repeated back to full resolution (nearest, so a pooled
window never spills into the next) inside the full-resolution gate. Windows are counted in
tokens of the map the WKV runs on; the token shift uses the same windows at full resolution
(a window border at pooled token i is the border at voxel i * p).

The WKV and the merge of the scan orders run in float32 even under fp16 autocast (a sum of
several scans overflowed fp16 in Vision Mamba); the merge weights are a softmax, summing to 1.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from nnunet_sss.kernels import bi_wkv

from .fused import gate_project, shift_mix_project
from .init import mix_init, wkv_bonus_init, wkv_decay_init
from .scan import axis_orders, scan, scan_plan, sequence_lengths, unscan
from .shift import shift_starts


def at_least_fp32(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 (the WKV and the merge of scan orders); fp32/fp64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class SpatialMix(nn.Module):
    """Vision-RWKV's spatial mix over windows, with several snake scan orders merged."""

    def __init__(self, channels: int, n_dims: int, window: Tuple[Optional[int], ...], pool: Tuple[int, ...],
                 scan_mode: str = "stage", shift_mode: str = "window", layer_id: int = 0, n_layers: int = 1):
        super().__init__()
        self.n_dims, self.window, self.pool = n_dims, tuple(window), tuple(pool)
        self.orders = axis_orders(n_dims, scan_mode)
        self.snake = scan_mode == "stage"
        self.shift_mode = shift_mode
        self.receptance = nn.Linear(channels, channels, bias=False)
        self.key = nn.Linear(channels, channels, bias=False)
        self.value = nn.Linear(channels, channels, bias=False)
        self.output = nn.Linear(channels, channels, bias=False)
        self.norm = nn.LayerNorm(channels)
        self.decay = nn.Parameter(wkv_decay_init(channels, layer_id, n_layers))
        self.bonus = nn.Parameter(wkv_bonus_init(channels))
        self.mix_k = nn.Parameter(mix_init(channels, layer_id, n_layers, "k"))
        self.mix_v = nn.Parameter(mix_init(channels, layer_id, n_layers, "v"))
        self.mix_r = nn.Parameter(mix_init(channels, layer_id, n_layers, "r"))
        # learned weights of the scan orders (softmax); a single order needs none
        self.scan_logits = nn.Parameter(torch.zeros(len(self.orders))) if len(self.orders) > 1 else None

    def shift_windows(self):
        """(window, pool) of the token shift: the WKV's windows mapped to full resolution, or
        (None, None) = the whole map for the global-shift ablation."""
        return (None, None) if self.shift_mode == "global" else (self.window, self.pool)

    def scan_weights(self) -> Optional[Tensor]:
        return None if self.scan_logits is None else torch.softmax(at_least_fp32(self.scan_logits), 0)

    def forward(self, x: Tensor) -> Tensor:
        batch, size, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
        pool = tuple(min(p, s) for p, s in zip(self.pool, size))
        r, k, v = shift_mix_project(x, shift_starts(size, *self.shift_windows()), pool,
                                    full=[(self.receptance.weight, self.mix_r)],
                                    low=[(self.key.weight, self.mix_k), (self.value.weight, self.mix_v)])
        wkv_size = k.shape[1:-1]
        k, v = (at_least_fp32(t).reshape(batch, -1, channels) for t in (k, v))
        plan = scan_plan(wkv_size, self.window, self.orders, self.snake, x.device)
        y = bi_wkv(scan(k, plan), scan(v, plan), self.decay, self.bonus, lengths=sequence_lengths(plan, batch))
        y = self.norm(unscan(y, plan, self.scan_weights()).view(batch, *wkv_size, channels))
        return gate_project(r, y, self.output.weight, pool)

    def extra_repr(self) -> str:
        return f"window={self.window}, pool={self.pool}, orders={self.orders}, snake={self.snake}, shift={self.shift_mode}"
