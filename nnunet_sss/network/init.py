"""Initialisation: Vision-RWKV's depth-graded init for the RWKV parameters, He for convs.

Vision-RWKV grades the per-channel WKV decay, bonus and token-shift mix coefficients by the
layer's depth (layer i of n): early layers mix in more of the shifted neighbour and decay
fast in some channels, deep layers keep more of the token itself. We count layers over the
whole encoder (each global or local half of a Stage-Scan block is one layer).

nnU-Net calls `network.apply(network.initialize)` after building a network. `initialize`
gives convs and transposed convs He init as nnU-Net does, but leaves alone the modules that
carry their own init (marked `keep_init`): the zero-initialised offset convs of dynamic
upsampling. Linear layers and bare parameters (the RWKV ones) are never touched.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from dynamic_network_architectures.initialization.weight_init import InitWeights_He


def _channel_ramp(channels: int) -> torch.Tensor:
    return torch.arange(channels, dtype=torch.float32) / channels


def depth_ratios(layer_id: int, n_layers: int):
    """(ratio_0_to_1, ratio_1_to_almost_0) of Vision-RWKV for layer `layer_id` of `n_layers`."""
    return layer_id / max(n_layers - 1, 1), 1.0 - layer_id / n_layers


def wkv_decay_init(channels: int, layer_id: int, n_layers: int) -> torch.Tensor:
    """Per-channel decay w from -5 to 3, curved more in deeper layers."""
    r01, _ = depth_ratios(layer_id, n_layers)
    h = torch.arange(channels, dtype=torch.float32) / max(channels - 1, 1)
    return -5 + 8 * h ** (0.7 + 1.3 * r01)


def token_decay_init(channels: int, nearest: float = 1.0, farthest: float = 1 / 1024) -> torch.Tensor:
    """log of a per-token decay w' graded log-uniformly over the channels from `nearest` (a weight
    of e^-1 one token further: about one token) to `farthest` (about a thousand tokens), for the
    spatial mix's "token" decay, whose w' = exp(parameter) stays positive."""
    ramp = torch.arange(channels, dtype=torch.float32) / max(channels - 1, 1)
    return math.log(nearest) + ramp * (math.log(farthest) - math.log(nearest))


def wkv_bonus_init(channels: int) -> torch.Tensor:
    """Per-channel bonus u: log(0.3) with a +-0.5 zigzag over channels."""
    zigzag = ((torch.arange(channels) + 1) % 3 - 1).float() * 0.5
    return torch.full((channels,), math.log(0.3)) + zigzag


def mix_init(channels: int, layer_id: int, n_layers: int, kind: str) -> torch.Tensor:
    """Token-shift mix coefficient (weight of the unshifted token) for k, v or r."""
    r01, r10 = depth_ratios(layer_id, n_layers)
    ramp = _channel_ramp(channels)
    if kind == "k":
        return ramp ** r10
    if kind == "v":
        return ramp ** r10 + 0.3 * r01
    if kind == "r":
        return ramp ** (0.5 * r10)
    raise ValueError(f"unknown mix kind {kind!r}")


def keep_init(module: nn.Module) -> nn.Module:
    """Mark a module so that `initialize` leaves its parameters as they are."""
    module.keep_init = True
    return module


_he = InitWeights_He(1e-2)


def initialize(module: nn.Module) -> None:
    """nnU-Net's per-module init hook: He for convs unless marked `keep_init`."""
    if getattr(module, "keep_init", False):
        return
    _he(module)
