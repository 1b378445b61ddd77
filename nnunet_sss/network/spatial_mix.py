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

Two switches isolate what the WKV itself adds (everything else of the mix stays):
- `mixer`: "wkv" (Bi-WKV), "mean" (every token gets the mean of v over its window: a pooling
  mixer, as in PoolFormer) or "identity" (y = v: no token mixing at all).
- `decay`: "window" (Vision-RWKV's w/T and u/T, so a window's locality depends on its length T)
  or "token": the decay acts per token, w' = exp(decay) > 0, graded over the channels at init
  from about one token to about a thousand (`token_decay_init`), so some channels are local
  from the first step whatever the window. The operator divides by the sequence length itself,
  so it is handed w' T and u T, with T the longest window of the partition (a window cut shorter
  at the map border decays up to T / T_n faster), w' capped at TOKEN_RATE_CAP per token (past it
  the WKV weighs little but the adjacent tokens; the cap holds whatever the window's length).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from nnunet_sss.kernels import bi_wkv

from .fused import gate_project, shift_mix_project
from .init import mix_init, token_decay_init, wkv_bonus_init, wkv_decay_init
from .scan import axis_orders, scan, scan_plan, sequence_lengths, unscan
from .shift import layer_shift_starts

MIXERS = ("wkv", "mean", "identity")
DECAYS = ("window", "token")
TOKEN_RATE_CAP = 8.0  # max per-token decay w' in "token" mode: the token after next weighs e^-8 of the next


def at_least_fp32(x: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 (the WKV and the merge of scan orders); fp32/fp64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class SpatialMix(nn.Module):
    """Vision-RWKV's spatial mix over windows, with several snake scan orders merged."""

    def __init__(self, channels: int, n_dims: int, window: Tuple[Optional[int], ...], pool: Tuple[int, ...],
                 scan_mode: str = "stage", shift_mode: str = "window", layer_id: int = 0, n_layers: int = 1,
                 mixer: str = "wkv", decay: str = "window"):
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"unknown mixer {mixer!r}: expected one of {MIXERS}")
        if decay not in DECAYS:
            raise ValueError(f"unknown decay {decay!r}: expected one of {DECAYS}")
        self.mixer, self.decay_mode = mixer, decay
        self.n_dims, self.window, self.pool = n_dims, tuple(window), tuple(pool)
        self.orders = axis_orders(n_dims, scan_mode)
        self.snake = scan_mode == "stage"
        self.shift_mode = shift_mode
        self.receptance = nn.Linear(channels, channels, bias=False)
        self.value = nn.Linear(channels, channels, bias=False)
        self.output = nn.Linear(channels, channels, bias=False)
        self.norm = nn.LayerNorm(channels)
        if mixer == "wkv":  # keys, decay and bonus exist only for the WKV
            self.key = nn.Linear(channels, channels, bias=False)
            self.decay = nn.Parameter(token_decay_init(channels) if decay == "token"
                                      else wkv_decay_init(channels, layer_id, n_layers))
            self.bonus = nn.Parameter(wkv_bonus_init(channels))
            self.mix_k = self._mix(channels, layer_id, n_layers, "k")
        else:
            self.key = self.decay = self.bonus = self.mix_k = None
        self.mix_v = self._mix(channels, layer_id, n_layers, "v")
        self.mix_r = self._mix(channels, layer_id, n_layers, "r")
        # learned weights of the scan orders (softmax); a single order needs none
        self.scan_logits = nn.Parameter(torch.zeros(len(self.orders))) \
            if len(self.orders) > 1 and mixer == "wkv" else None
        # Optional read-only look at the WKV's inputs (nnunet_sss.network.attention); None in training
        self.wkv_probe = None

    def _mix(self, channels: int, layer_id: int, n_layers: int, which: str) -> Optional[nn.Parameter]:
        """Vision-RWKV's per-channel token-shift mix; none without a token shift."""
        return None if self.shift_mode == "none" else nn.Parameter(mix_init(channels, layer_id, n_layers, which))

    def shift_windows(self):
        """(window, pool) of the token shift: the WKV's windows mapped to full resolution,
        (None, None) = the whole map for the global-shift ablation, None = no token shift."""
        if self.shift_mode == "none":
            return None
        return (None, None) if self.shift_mode == "global" else (self.window, self.pool)

    def scan_weights(self) -> Optional[Tensor]:
        return None if self.scan_logits is None else torch.softmax(at_least_fp32(self.scan_logits), 0)

    def forward(self, x: Tensor) -> Tensor:
        batch, size, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
        pool = tuple(min(p, s) for p, s in zip(self.pool, size))
        low = [(self.value.weight, self.mix_v)] if self.key is None else \
            [(self.key.weight, self.mix_k), (self.value.weight, self.mix_v)]
        r, *kv = shift_mix_project(x, layer_shift_starts(size, self.shift_windows()), pool,
                                   full=[(self.receptance.weight, self.mix_r)], low=low)
        wkv_size = kv[-1].shape[1:-1]
        *k, v = (at_least_fp32(t).reshape(batch, -1, channels) for t in kv)
        y = self.norm(self.mix_tokens(k[0] if k else None, v, wkv_size).view(batch, *wkv_size, channels))
        return gate_project(r, y, self.output.weight, pool)

    def wkv_parameters(self, seq_len: int) -> Tuple[Tensor, Tensor]:
        """(w, u) as the operator takes them (it divides both by the sequence length)."""
        if self.decay_mode == "window":
            return self.decay, self.bonus
        return torch.exp(self.decay).clamp(max=TOKEN_RATE_CAP).mul(seq_len), self.bonus * seq_len

    def mix_tokens(self, k: Tensor, v: Tensor, wkv_size) -> Tensor:
        """(B, S', C) keys (None unless the mixer is the WKV) and values on the WKV grid ->
        (B, S', C) mixed values, per `mixer`."""
        if self.mixer == "identity":
            return v
        batch = v.shape[0]
        if self.mixer == "mean":  # order-free: one scan order suffices
            plan = scan_plan(wkv_size, self.window, self.orders[:1], self.snake, v.device)
            seq = scan(v, plan)
            if plan.valid is not None:
                seq = seq * plan.valid.view(plan.n_windows, plan.seq_len, 1).repeat(batch, 1, 1)
                count = sequence_lengths(plan, batch).view(-1, 1, 1).to(seq.dtype)
            else:
                count = plan.seq_len
            mean = seq.sum(1, keepdim=True) / count
            return unscan(mean.expand_as(seq), plan)
        plan = scan_plan(wkv_size, self.window, self.orders, self.snake, v.device)
        w, u = self.wkv_parameters(plan.seq_len)
        keys, lengths = scan(k, plan), sequence_lengths(plan, batch)
        if self.wkv_probe is not None:
            self.wkv_probe(keys=keys, plan=plan, lengths=lengths, decay=w, bonus=u, scan_weights=self.scan_weights())
        y = bi_wkv(keys, scan(v, plan), w, u, lengths=lengths)
        return unscan(y, plan, self.scan_weights())

    def extra_repr(self) -> str:
        return (f"window={self.window}, pool={self.pool}, orders={self.orders}, snake={self.snake}, "
                f"shift={self.shift_mode}, mixer={self.mixer}, decay={self.decay_mode}")
