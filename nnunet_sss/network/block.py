"""The Stage-Scan block: a global layer (large windows) then a local layer (small windows).

Each layer is a pre-norm residual pair, x + SpatialMix(LN(x)) then x + ChannelMix(LN(x)), on
channels-last tokens (B, *S, C). With `layer_scale` each branch is multiplied by a learned
per-channel scale that starts at that small value (CaiT's LayerScale), so an untrained branch
starts near silent instead of adding 0.4 of its residual in noise. The scan orders are put back in place inside the spatial mix
(inverse permutation) before any residual add. `RWKVStage` wraps a stage's blocks and converts
the conv path's (B, C, *S) maps to tokens and back once per stage, not once per block.

With `checkpoint`, a layer keeps only its input for backward and recomputes its inside then
(activation checkpointing, `_Rebuild`: the layer runs without autograd in the forward, and the
backward rebuilds it and hands back the gradients of its input and parameters; unlike
torch.utils.checkpoint it keeps no per-tensor hooks, which cost one op per saved tensor): a layer at full resolution would otherwise keep about a dozen
maps of its width, against the one or two of the conv it replaces. The recomputation runs in
micro-batches on the CPU (`micro_batch_size`), since rebuilding a whole layer of the whole batch
at once briefly holds those dozen maps anyway: at stage 0 that peak alone was as large as all of
PlainConvUNet's activations. On a GPU it runs whole (launches, not memory, bound its step). Every token op of a layer is per sample, so the split changes
nothing but the order of the parameter-gradient sums. The stage hands its first layer a
channels-last view of the conv output, which the conv keeps anyway; the layer's contiguous copy
is made inside the checkpoint, so the stage keeps no second copy of its input.
"""
from __future__ import annotations

import contextlib
import math
from typing import Optional, Tuple

import torch

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .channel_mix import ChannelMix
from .spatial_mix import SpatialMix

# Micro-batches of the checkpointed recomputation: at most this many per layer, and none smaller
# than this many elements (unless one sample is larger): small enough that the recomputed layer
# is no longer the training peak, large enough that the deepest stages are not split and a GPU
# still gets large kernels.
MICRO_BATCHES = 4
MICRO_BATCH_MIN_ELEMENTS = 2 ** 20
# Devices where the rebuild runs whole: an eager GPU step is bound by kernel launches, and a split
# multiplies the launches of the largest stages (one H100, Hippocampus 3d at batch 9: 315 ms a
# step in micro-batches against 146 ms whole, for a peak of 1114 against 2133 MiB). The whole
# rebuild is what `cost.py` counts, so nnU-Net's planner already sizes GPU batches for it.
WHOLE_BATCH_DEVICES = ("cuda",)
_WHOLE_BATCH = [False]


@contextlib.contextmanager
def whole_batch_rebuild():
    """Rebuild checkpointed layers whole on every device, as on a GPU (for measuring GPU-mode memory
    on the CPU)."""
    _WHOLE_BATCH[0], before = True, _WHOLE_BATCH[0]
    try:
        yield
    finally:
        _WHOLE_BATCH[0] = before


def micro_batch_size(x: Tensor) -> int:
    """Samples per micro-batch of the checkpointed recomputation of a layer's input x."""
    if x.device.type in WHOLE_BATCH_DEVICES or _WHOLE_BATCH[0]:
        return max(1, x.shape[0])
    per_sample = max(1, math.prod(x.shape[1:]))
    return max(-(-x.shape[0] // MICRO_BATCHES), -(-MICRO_BATCH_MIN_ELEMENTS // per_sample))


def _amp_state(x: Tensor):
    device = x.device.type
    return device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)


class _Rebuild(torch.autograd.Function):
    """y = fn(x) keeping only x; the backward rebuilds fn in micro-batches (with the forward's
    autocast state) and returns the gradients of x and of `params` (fn's parameters) as its
    own outputs, so that the engine accumulates them, and DDP and torch.autograd.grad see them,
    exactly as for any other layer. (Tools that hook every module's backward from inside the
    engine, such as torch's FlopCounterMode, cannot follow the nested pass.)"""

    @staticmethod
    def forward(ctx, fn, x, *params):
        ctx.fn, ctx.amp = fn, _amp_state(x)
        ctx.save_for_backward(x, *params)
        return fn(x)

    @staticmethod
    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        grad_x, grad_params = [], [None] * len(params)
        device, enabled, dtype = ctx.amp
        split = micro_batch_size(x)
        for part, grad_part in zip(x.detach().split(split), grad.split(split)):
            part.requires_grad_(True)
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=enabled):
                out = ctx.fn(part)
            grads = torch.autograd.grad(out, (part, *params), grad_part, allow_unused=True)
            grad_x.append(grads[0])
            for i, g in enumerate(grads[1:]):
                if g is not None:
                    grad_params[i] = g if grad_params[i] is None else grad_params[i].add_(g)
        return (None, grad_x[0] if len(grad_x) == 1 else torch.cat(grad_x), *grad_params)


class RWKVLayer(nn.Module):
    """One pre-norm residual pair of spatial mix and channel mix over one partition."""

    def __init__(self, channels: int, n_dims: int, window: Tuple[Optional[int], ...], pool: Tuple[int, ...],
                 hidden_ratio: float, scan_mode: str, shift_mode: str, layer_id: int, n_layers: int,
                 checkpoint: bool = False, mixer: str = "wkv", decay: str = "window",
                 layer_scale: Optional[float] = None):
        super().__init__()
        self.checkpoint = checkpoint
        self.norm1 = nn.LayerNorm(channels)
        self.spatial_mix = SpatialMix(channels, n_dims, window, pool, scan_mode, shift_mode, layer_id, n_layers,
                                      mixer, decay)
        self.norm2 = nn.LayerNorm(channels)
        self.channel_mix = ChannelMix(channels, hidden_ratio, self.spatial_mix.shift_windows(), layer_id, n_layers)
        if layer_scale is None:
            self.scale1 = self.scale2 = None
        else:
            self.scale1 = nn.Parameter(torch.full((channels,), float(layer_scale)))
            self.scale2 = nn.Parameter(torch.full((channels,), float(layer_scale)))

    @staticmethod
    def _residual(x: Tensor, branch: Tensor, scale: Optional[Tensor]) -> Tensor:
        return x + branch if scale is None else torch.addcmul(x, branch, scale)

    def _forward(self, x: Tensor) -> Tensor:
        x = x.contiguous()  # the stage's channels-last view of its conv output: copied here, inside the checkpoint
        x = self._residual(x, self.spatial_mix(self.norm1(x)), self.scale1)
        return self._residual(x, self.channel_mix(self.norm2(x)), self.scale2)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.checkpoint and torch.is_grad_enabled() and x.requires_grad):
            return self._forward(x)
        if torch.compiler.is_compiling():  # what dynamo traces without a break
            return checkpoint(self._forward, x, use_reentrant=False)
        return _Rebuild.apply(self._forward, x, *(p for p in self.parameters() if p.requires_grad))


class StageScanBlock(nn.Module):
    """Global layer then local layer; `layer_id` counts layers over the whole encoder."""

    def __init__(self, channels: int, n_dims: int, global_window, local_window, pool, hidden_ratio: float,
                 scan_mode: str, shift_mode: str, layer_id: int, n_layers: int, checkpoint: bool = False,
                 single_layer: bool = False, **layer_options):
        super().__init__()
        common = dict(channels=channels, n_dims=n_dims, pool=pool, hidden_ratio=hidden_ratio,
                      scan_mode=scan_mode, shift_mode=shift_mode, n_layers=n_layers, checkpoint=checkpoint,
                      **layer_options)
        self.global_layer = RWKVLayer(window=global_window, layer_id=layer_id, **common)
        # `single_layer`: where the two windows are the same window, the local layer would repeat the global one
        self.local_layer = None if single_layer else RWKVLayer(window=local_window, layer_id=layer_id + 1, **common)

    def forward(self, x: Tensor) -> Tensor:
        x = self.global_layer(x)
        return x if self.local_layer is None else self.local_layer(x)


class RWKVStage(nn.Module):
    """A stage's Stage-Scan blocks on (B, C, *S) maps: tokens channels-last inside."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x.movedim(1, -1)).movedim(-1, 1).contiguous()
