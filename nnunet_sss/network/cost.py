"""Activation estimates of the RWKV blocks for `compute_conv_feature_map_size`.

PLACEHOLDER constants, calibrated against the tensors autograd keeps (tests/network/test_cost.py).
"""
from __future__ import annotations

import math
from typing import Sequence


def stage_scan_block_activations(size: Sequence[int], channels: int, windows, pool, hidden_ratio: float,
                                 scan_mode: str, checkpoint: bool = False) -> int:
    tokens = math.prod(size)
    pooled = math.prod(-(-s // min(p, s)) for s, p in zip(size, pool))
    orders = len(size) if scan_mode == "stage" else 1
    per_layer = (12 + 2 * hidden_ratio) * tokens * channels + (3 + 4 * orders) * pooled * channels
    return int(2 * per_layer / 2)
