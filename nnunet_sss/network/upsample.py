"""Decoder upsampling: dynamic (learned point offsets + linear sampling, after DySample) or the
transposed conv of nnU-Net, both mapping the deeper feature to the skip's width.

Dynamic: a 1x1 conv to the skip's width, then each output voxel samples the (narrowed) map at
its own position plus a learned offset. The offsets come from a 1x1 conv of the same map
(D offsets per output voxel of a cell, shared by all channels), scaled by 0.25 input voxels
(DySample's static scope) and initialised to zero, so the layer starts as plain linear
interpolation (align_corners=False). Because the offsets are shared by all channels, the
1x1 conv commutes with the sampling; running it first, at the low resolution, costs
prod(scale) times less than after. Per-axis scale factors come from the plans' strides
(anisotropic and 1 allowed). 2D and 3D share every line. The sampling is the kernels' layer's
`linear_sample` (grid_sample's bilinear/border maths; channels-last C++ on the CPU).

The offset-free sampling grid depends only on the output size, so it is made once per size
(`base_grid`): nnU-Net's predictor runs every tile and mirror at the same patch size, and
rebuilding it cost each upsampling an arange, add, div and sub per axis, a meshgrid and a stack
on every tile and mirror.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Type

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim, get_matching_convtransp

from nnunet_sss.kernels import linear_sample
from nnunet_sss.kernels.constants import cached_constant

from .cost import dynamic_upsample_activations
from .init import keep_init

OFFSET_SCOPE = 0.25  # offsets in input voxels, at most about a quarter voxel per unit of the conv


@cached_constant()
def base_grid(out_size: Tuple[int, ...], scale: Tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """(*out_size, D), the sampling grid without offsets: output voxel o of axis a looks at input
    coordinate (o + 0.5) / f - 0.5. Cached per (size, scale, dtype, device); read-only."""
    axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / f - 0.5 for n, f in zip(out_size, scale)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)


class DynamicUpsample(nn.Module):
    """Learned-offset upsampling of (B, C, *S) by an integer factor per axis."""

    def __init__(self, conv_op: Type[_ConvNd], channels: int, scale: Sequence[int]):
        super().__init__()
        self.n_dims = convert_conv_op_to_dim(conv_op)
        self.scale = tuple(int(s) for s in scale)
        if len(self.scale) != self.n_dims or min(self.scale) < 1:
            raise ValueError(f"scale {tuple(scale)} must give an integer >= 1 for each of the {self.n_dims} axes")
        self.offset = keep_init(conv_op(channels, self.n_dims * math.prod(self.scale), 1, bias=True))
        nn.init.zeros_(self.offset.weight)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, size = x.shape[0], x.shape[2:]
        out_size = tuple(s * f for s, f in zip(size, self.scale))
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32  # sampling math in >= fp32
        offset = self.offset(x).to(dtype) * OFFSET_SCOPE
        # (B, D*prod(f), *S) -> (B, D, f0, f1, .., S0, S1, ..) -> (B, S0, f0, S1, f1, .., D) -> (B, *out_size, D)
        offset = offset.view(batch, self.n_dims, *self.scale, *size)
        perm = [0] + [i for a in range(self.n_dims) for i in (2 + self.n_dims + a, 2 + a)] + [1]
        offset = offset.permute(perm).reshape(batch, *out_size, self.n_dims)
        return linear_sample(x, offset + base_grid(out_size, self.scale, dtype, x.device))

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class Upsample(nn.Module):
    """Deeper feature (C_in) -> skip's resolution and width (C_out): 'dynamic' or 'transpose'."""

    def __init__(self, conv_op: Type[_ConvNd], in_channels: int, out_channels: int, scale: Sequence[int],
                 mode: str = "dynamic", bias: bool = False):
        super().__init__()
        self.mode = mode
        if mode == "dynamic":
            self.project = conv_op(in_channels, out_channels, 1, bias=bias)
            self.sample = DynamicUpsample(conv_op, out_channels, scale)
        elif mode == "transpose":
            self.project = get_matching_convtransp(conv_op)(in_channels, out_channels, scale, scale, bias=bias)
            self.sample = nn.Identity()
        else:
            raise ValueError(f"unknown upsample {mode!r}: expected 'dynamic' or 'transpose'")

    def forward(self, x: Tensor) -> Tensor:
        return self.sample(self.project(x))

    def feature_map_size(self, in_size: Sequence[int], out_channels: int) -> int:
        """Activations in PlainConvUNet's units (see cost.py)."""
        if self.mode == "transpose":
            return out_channels * math.prod(in_size) * math.prod(self.project.stride)
        return dynamic_upsample_activations(in_size, self.sample.scale, out_channels)
