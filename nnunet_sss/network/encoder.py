"""The encoder: per stage, the plans' first conv (kernel and stride from the plans, with norm and
nonlin), then `depth` Stage-Scan blocks standing in for the plans' remaining convs.

A stage with depth 0 (or every stage with `use_rwkv=False`) keeps all its plans convs, exactly
as PlainConvUNet builds it, so the no-RWKV ablation differs from RWKV-SSS in the blocks only.
Plans with one conv per stage still get `depth` blocks (the block depth is RWKV-SSS's own
option); ResEnc plans reach here with their block counts as conv counts, which matter only
where depth is 0. The module layout (`stages[s][0]` the conv block, `stages[s][1]` the blocks)
keeps PlainConvUNet's key to the first conv: `stages.0.0.convs.0.conv`.

With `placement="after"` a stage with blocks keeps all its plans convs and the blocks follow
them (context added to the local filters instead of traded for one). With `single_layer_stages`
the blocks of those stages have one layer (see unet.py, `merge_equal_windows`).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from torch import Tensor, nn
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks

from .block import RWKVStage, StageScanBlock
from .cost import rwkv_activations


class RWKVSSSEncoder(nn.Module):
    def __init__(self, input_channels: int, features_per_stage: Sequence[int], conv_op, kernel_sizes,
                 strides, n_conv_per_stage: Sequence[int], depths: Sequence[int], windows: Sequence[Tuple],
                 pools: Sequence[Tuple[int, ...]], hidden_ratio: float, scan_mode: str, shift_mode: str,
                 checkpoint: bool = False, placement: str = "replace", single_layer_stages: Sequence[int] = (),
                 layer_options: dict = None, conv_bias=False, norm_op=None, norm_op_kwargs=None, dropout_op=None, dropout_op_kwargs=None,
                 nonlin=None, nonlin_kwargs=None, nonlin_first=False):
        super().__init__()
        n_dims = len(maybe_convert_scalar_to_list(conv_op, 1))
        global_window, local_window = windows
        n_layers = sum(d * (1 if s in single_layer_stages else 2) for s, d in enumerate(depths))
        layer_id = 0
        stages = []
        for s, features in enumerate(features_per_stage):
            n_convs = 1 if depths[s] > 0 and placement == "replace" else n_conv_per_stage[s]
            convs = StackedConvBlocks(n_convs, conv_op, input_channels, features, kernel_sizes[s], strides[s],
                                      conv_bias, norm_op, norm_op_kwargs, dropout_op, dropout_op_kwargs,
                                      nonlin, nonlin_kwargs, nonlin_first)
            modules = [convs]
            if depths[s] > 0:
                blocks = []
                for _ in range(depths[s]):
                    single = s in single_layer_stages
                    blocks.append(StageScanBlock(features, n_dims, global_window, local_window, pools[s],
                                                 hidden_ratio, scan_mode, shift_mode, layer_id, n_layers,
                                                 checkpoint, single, **(layer_options or {})))
                    layer_id += 1 if single else 2
                modules.append(RWKVStage(blocks))
            stages.append(nn.Sequential(*modules))
            input_channels = features

        self.stages = nn.Sequential(*stages)
        self.output_channels = list(features_per_stage)
        self.strides = [maybe_convert_scalar_to_list(conv_op, s) for s in strides]
        self.kernel_sizes = list(kernel_sizes)
        self.depths = list(depths)
        self.pools = list(pools)
        self.windows = windows
        self.scan_mode = scan_mode
        self.hidden_ratio = hidden_ratio
        self.checkpoint = checkpoint
        self.single_layer_stages = tuple(single_layer_stages)
        # what a decoder needs, as PlainConvEncoder stores it
        self.conv_op, self.conv_bias = conv_op, conv_bias
        self.norm_op, self.norm_op_kwargs = norm_op, norm_op_kwargs
        self.dropout_op, self.dropout_op_kwargs = dropout_op, dropout_op_kwargs
        self.nonlin, self.nonlin_kwargs = nonlin, nonlin_kwargs

    def forward(self, x: Tensor) -> List[Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Activations in PlainConvUNet's units (one per conv output element); see unet.py."""
        output = np.int64(0)
        blocks = []
        n_orders = len(input_size) if self.scan_mode == "stage" else 1
        for s, stage in enumerate(self.stages):
            output += stage[0].compute_conv_feature_map_size(input_size)
            input_size = [i // j for i, j in zip(input_size, self.strides[s])]
            if self.depths[s]:
                windows = self.windows[:1] if s in self.single_layer_stages else self.windows
                blocks.append((input_size, self.output_channels[s], windows, self.pools[s], self.hidden_ratio,
                               n_orders, self.depths[s]))
        return output + np.int64(rwkv_activations(blocks, self.checkpoint))
