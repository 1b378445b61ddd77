"""Activation estimates for `compute_conv_feature_map_size`, in PlainConvUNet's units.

nnU-Net's planners size patches and batches from `compute_conv_feature_map_size`: one unit per
output element of every conv (and transposed conv, and segmentation head). A conv layer with
norm and in-place nonlin really keeps CONV_ELEMENTS_PER_UNIT = 2 elements per output element
for backward (the conv output for the norm, the norm output for the nonlin and the next conv).
The RWKV layers and the dynamic upsampling are counted from the tensors their backward keeps
(tests/network/test_cost.py measures them with saved-tensor hooks) and converted at that
rate, so that the planner weighs them as it weighs convs.

Per RWKV layer on N tokens of C channels, WKV map of N' = N / prod(pool) tokens, K scan orders,
S sequence slots per WKV token (>= 1: padding of windows that do not divide the map), hidden
width H = hidden_ratio * C:
    spatial mix: input, [x | shift x], sigmoid(r)        4 N C
                 pooled [x | shift x], merged, its norm   4 N' C  (2 N' C without pooling)
                 per order: k, v, y, y centred, den       5 K S N' C
    channel mix: input, [x | shift x], sigmoid(r'), value 5 N C
                 relu(k)                                  N H
With checkpointing a layer keeps only its input (N C) until backward, where one layer at a time
is rebuilt in full: the estimate is the inputs plus the largest layer. (A stage's first layer
reads its conv's output, which the conv's count covers; the stage's channels-first output, kept
by the next conv, takes that slot. The rebuild runs in micro-batches of at least one sample,
so the largest layer counted per sample, as nnU-Net scales the estimate with the batch, errs on
the safe side.)
"""
from __future__ import annotations

import math
from typing import Sequence

from .scan import partition

CONV_ELEMENTS_PER_UNIT = 2


def layer_elements(size: Sequence[int], channels: int, window, pool, hidden_ratio: float, n_orders: int) -> int:
    """Elements one RWKV layer keeps for backward (no checkpointing)."""
    tokens = math.prod(size)
    pool = [min(p, s) for p, s in zip(pool, size)]
    wkv_size = [-(-s // p) for s, p in zip(size, pool)]
    wkv_tokens = math.prod(wkv_size)
    slots = math.prod(len(part) * max(part) for part in partition(wkv_size, window)) / wkv_tokens
    pooled = 4 if math.prod(pool) > 1 else 2
    hidden = max(1, int(round(hidden_ratio * channels)))
    spatial = 4 * tokens * channels + pooled * wkv_tokens * channels + 5 * n_orders * slots * wkv_tokens * channels
    channel = 5 * tokens * channels + tokens * hidden
    return int(spatial + channel)


def rwkv_activations(stages, checkpoint: bool) -> int:
    """All Stage-Scan blocks of an encoder, in conv units. `stages`: one (size, channels, windows,
    pool, hidden_ratio, n_orders, depth) per stage that has blocks; windows = (global, local)."""
    kept, largest = 0, 0
    for size, channels, windows, pool, hidden_ratio, n_orders, depth in stages:
        for window in windows:
            full = layer_elements(size, channels, window, pool, hidden_ratio, n_orders)
            kept += depth * (math.prod(size) * channels if checkpoint else full)
            largest = max(largest, full)
    elements = kept + (largest if checkpoint else 0)
    return int(math.ceil(elements / CONV_ELEMENTS_PER_UNIT))


def dynamic_upsample_activations(low_size: Sequence[int], scale: Sequence[int], channels: int) -> int:
    """The 1x1 projection (kept by the sampler and the offset conv) and the sampling grid, in
    conv units, plus the upsampled output counted as nnU-Net counts a transposed conv's."""
    low = math.prod(low_size)
    high = low * math.prod(scale)
    return int(channels * high + math.ceil((channels * low + len(low_size) * high) / CONV_ELEMENTS_PER_UNIT))
