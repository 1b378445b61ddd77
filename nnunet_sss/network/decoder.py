"""The decoder: upsample the deeper feature to the skip's size and width, concatenate the skip,
run the plans' conv blocks, and keep a segmentation head per stage for deep supervision.

Exposed the way nnU-Net expects: `deep_supervision` attribute; with it on, forward returns a
list of logits, full resolution first, one per decoder stage; off, the full-resolution logits.
The heads exist either way, so the state_dict does not depend on the switch. With it off,
during training the unused heads join the output with weight 0 so that DDP without
`find_unused_parameters` finds a gradient for every parameter (nnU-Net issue #2571).
"""
from __future__ import annotations

from typing import List, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from dynamic_network_architectures.building_blocks.simple_conv_blocks import StackedConvBlocks

from .upsample import Upsample


class RWKVSSSDecoder(nn.Module):
    def __init__(self, encoder, num_classes: int, n_conv_per_stage: Union[int, Sequence[int]],
                 deep_supervision: bool, upsample: str = "dynamic", nonlin_first: bool = False):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_classes = num_classes
        n_enc = len(encoder.output_channels)
        if isinstance(n_conv_per_stage, int):
            n_conv_per_stage = [n_conv_per_stage] * (n_enc - 1)
        if len(n_conv_per_stage) != n_enc - 1:
            raise ValueError(f"n_conv_per_stage_decoder needs n_stages - 1 = {n_enc - 1} entries, "
                             f"got {list(n_conv_per_stage)}")
        self.skip_channels = list(encoder.output_channels[:-1])
        self.strides = [list(s) for s in encoder.strides]
        upsamplers, stages, seg_layers = [], [], []
        for s in range(1, n_enc):
            below, skip = encoder.output_channels[-s], encoder.output_channels[-(s + 1)]
            upsamplers.append(Upsample(encoder.conv_op, below, skip, encoder.strides[-s], upsample,
                                       bias=encoder.conv_bias))
            stages.append(StackedConvBlocks(
                n_conv_per_stage[s - 1], encoder.conv_op, 2 * skip, skip, encoder.kernel_sizes[-(s + 1)], 1,
                encoder.conv_bias, encoder.norm_op, encoder.norm_op_kwargs, encoder.dropout_op,
                encoder.dropout_op_kwargs, encoder.nonlin, encoder.nonlin_kwargs, nonlin_first))
            seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.upsamplers = nn.ModuleList(upsamplers)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: List[Tensor]):
        x = skips[-1]
        outputs = []
        last = len(self.stages) - 1
        for s in range(len(self.stages)):
            x = self.upsamplers[s](x)
            x = self.stages[s](torch.cat((x, skips[-(s + 2)]), 1))
            if self.deep_supervision or s == last:
                outputs.append(self.seg_layers[s](x))
        if self.deep_supervision:
            return outputs[::-1]
        logits = outputs[-1]
        if self.training and torch.is_grad_enabled():
            unused = sum(p.sum() for layer in self.seg_layers[:-1] for p in layer.parameters())
            logits = logits + 0 * unused
        return logits

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Activations in PlainConvUNet's units (one per conv output element); see unet.py."""
        sizes = []
        for stride in self.strides[:-1]:
            input_size = [i // j for i, j in zip(input_size, stride)]
            sizes.append(input_size)
        output = np.int64(0)
        for s in range(len(self.stages)):
            size, skip = sizes[-(s + 1)], self.skip_channels[-(s + 1)]
            low = [i // j for i, j in zip(size, self.strides[-(s + 1)])]
            output += self.stages[s].compute_conv_feature_map_size(size)
            output += self.upsamplers[s].feature_map_size(low, skip)
            if self.deep_supervision or s == len(self.stages) - 1:
                output += np.prod([self.num_classes, *size], dtype=np.int64)
        return output
