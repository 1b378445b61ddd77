"""The Stage-Scan block: a global layer (large windows) then a local layer (small windows).

Each layer is a pre-norm residual pair, x + SpatialMix(LN(x)) then x + ChannelMix(LN(x)), on
channels-last tokens (B, *S, C). The scan orders are put back in place inside the spatial mix
(inverse permutation) before any residual add. `RWKVStage` wraps a stage's blocks and converts
the conv path's (B, C, *S) maps to tokens and back once per stage, not once per block.

With `checkpoint`, a layer keeps only its input for backward and recomputes its inside then
(activation checkpointing): a layer at full resolution would otherwise keep about a dozen
maps of its width, against the one or two of the conv it replaces.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .channel_mix import ChannelMix
from .spatial_mix import SpatialMix


class RWKVLayer(nn.Module):
    """One pre-norm residual pair of spatial mix and channel mix over one partition."""

    def __init__(self, channels: int, n_dims: int, window: Tuple[Optional[int], ...], pool: Tuple[int, ...],
                 hidden_ratio: float, scan_mode: str, shift_mode: str, layer_id: int, n_layers: int,
                 checkpoint: bool = False):
        super().__init__()
        self.checkpoint = checkpoint
        self.norm1 = nn.LayerNorm(channels)
        self.spatial_mix = SpatialMix(channels, n_dims, window, pool, scan_mode, shift_mode, layer_id, n_layers)
        self.norm2 = nn.LayerNorm(channels)
        self.channel_mix = ChannelMix(channels, hidden_ratio, self.spatial_mix.shift_windows(), layer_id, n_layers)

    def _forward(self, x: Tensor) -> Tensor:
        x = x + self.spatial_mix(self.norm1(x))
        return x + self.channel_mix(self.norm2(x))

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpoint and torch.is_grad_enabled() and x.requires_grad:
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class StageScanBlock(nn.Module):
    """Global layer then local layer; `layer_id` counts layers over the whole encoder."""

    def __init__(self, channels: int, n_dims: int, global_window, local_window, pool, hidden_ratio: float,
                 scan_mode: str, shift_mode: str, layer_id: int, n_layers: int, checkpoint: bool = False):
        super().__init__()
        common = dict(channels=channels, n_dims=n_dims, pool=pool, hidden_ratio=hidden_ratio,
                      scan_mode=scan_mode, shift_mode=shift_mode, n_layers=n_layers, checkpoint=checkpoint)
        self.global_layer = RWKVLayer(window=global_window, layer_id=layer_id, **common)
        self.local_layer = RWKVLayer(window=local_window, layer_id=layer_id + 1, **common)

    def forward(self, x: Tensor) -> Tensor:
        return self.local_layer(self.global_layer(x))


class RWKVStage(nn.Module):
    """A stage's Stage-Scan blocks on (B, C, *S) maps: tokens channels-last inside."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.movedim(1, -1).contiguous()
        return self.blocks(tokens).movedim(-1, 1).contiguous()
