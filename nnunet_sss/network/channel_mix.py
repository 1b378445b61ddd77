"""Channel mix: token shift -> sigmoid(R') * W_v relu(W_k x)^2, on channels-last tokens.

The shift uses the same windows as the block's spatial mix, so this half of the block does
not look across partition borders either. Shift, mix and projections are one step
(fused.shift_mix_project), as in the spatial mix.
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor, nn

from .init import mix_init
from .fused import shift_mix_project, squared_relu_gate
from .shift import layer_shift_starts


class ChannelMix(nn.Module):
    """Vision-RWKV's channel mix with a hidden width of `hidden_ratio` x channels."""

    def __init__(self, channels: int, hidden_ratio: float = 2, shift_windows: Optional[Tuple] = (None, None),
                 layer_id: int = 0, n_layers: int = 1):
        super().__init__()
        self.hidden = max(1, int(round(hidden_ratio * channels)))
        # (window, pool) as in SpatialMix.shift_windows; None: no token shift, so no mixes
        self.shift_windows = None if shift_windows is None else tuple(shift_windows)
        self.key = nn.Linear(channels, self.hidden, bias=False)
        self.value = nn.Linear(self.hidden, channels, bias=False)
        self.receptance = nn.Linear(channels, channels, bias=False)
        if shift_windows is None:
            self.mix_k = self.mix_r = None
        else:
            self.mix_k = nn.Parameter(mix_init(channels, layer_id, n_layers, "k"))
            self.mix_r = nn.Parameter(mix_init(channels, layer_id, n_layers, "k"))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[1:-1]
        k, r = shift_mix_project(x, layer_shift_starts(size, self.shift_windows), (1,) * len(size),
                                 full=[(self.key.weight, self.mix_k), (self.receptance.weight, self.mix_r)])
        return squared_relu_gate(k, r, self.value.weight)

    def extra_repr(self) -> str:
        return f"hidden={self.hidden}, shift_windows={self.shift_windows}"
