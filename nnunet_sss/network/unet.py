"""RWKVSSSUNet: the RWKV-SSS network, 2D or 3D, built from the arguments of nnU-Net's
PlainConvUNet (so any plans' `arch_kwargs` fit) plus its own keyword options, one per idea
(each ablation switches exactly one of them; see docs/network.md):

    use_rwkv=True          Stage-Scan blocks in the encoder (False: the plans' convs instead)
    rwkv_depths=1          blocks per encoder stage (int, or a list with one entry per stage)
    rwkv_first_stage=0     stages before this one keep the plans' convs (no blocks), whatever
                           rwkv_depths says: a stage-count-free way to keep blocks off the
                           largest maps
    local_window=8         local layer window, tokens per axis (int or per-axis list); None = the
                           whole map (only with global_window=None: no partitions at all)
    global_window=32       global layer window, tokens per axis; None = the whole map
    scan="stage"           snake order, all cyclic axis orders, learned merge ("raster": one order)
    shift="window"         token shift inside windows ("global": across the whole map)
    wkv_pool=(2,)          per-stage pool factor of K, V and the WKV (int or per-axis list)
    hidden_ratio=2         channel-mix hidden width / width
    upsample="dynamic"     learned-offset upsampling ("transpose": nnU-Net's transposed conv)
    rwkv_checkpoint=True   recompute each RWKV layer in backward instead of keeping its inside
                           (memory; no effect on the result)
    wkv_mixer="wkv"        token mixer of the spatial mix: "wkv", "mean" (of v over its window),
                           "identity" (y = v): isolates what the WKV adds
    wkv_decay="window"     "window": w/T, u/T as Vision-RWKV; "token": per-token decay graded over
                           channels, local from the start whatever the window length
    layer_scale=None       per-channel scale of each RWKV branch, starting at this value
    block_placement="replace"  the blocks take the place of the plans' second conv; "after":
                           the stage keeps its convs and the blocks follow them
    merge_equal_windows=False  one layer instead of two in the stages where the global and local
                           windows cut the map into the same windows (needs patch_size)
    patch_size=None        the training patch (spatial sizes), given by the trainer when an
                           option needs the stages' map sizes
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures

from .decoder import RWKVSSSDecoder
from .encoder import RWKVSSSEncoder
from .init import initialize as _initialize
from .scan import clip_window, partition
from .spatial_mix import DECAYS, MIXERS

SCANS = ("stage", "raster")
PLACEMENTS = ("replace", "after")
SHIFTS = ("window", "global", "none")
UPSAMPLES = ("dynamic", "transpose")
_CONV_DIMS = {nn.Conv2d: 2, nn.Conv3d: 3}


def _per_stage(value, n_stages: int, name: str) -> list:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [int(value)] * n_stages
    value = list(value)
    if len(value) != n_stages:
        raise ValueError(f"{name} needs one entry per stage ({n_stages}), got {value}")
    return value


def _per_axis(value, n_dims: int, name: str, stage: Optional[int] = None) -> Tuple[int, ...]:
    where = f"{name}" if stage is None else f"{name}[{stage}]"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * n_dims
    value = tuple(value)
    if len(value) != n_dims or not all(isinstance(v, (int, np.integer)) for v in value):
        raise ValueError(f"{where} must be an int or {n_dims} ints (one per spatial axis of the "
                         f"{n_dims}D conv_op), got {value}")
    if min(value) < 1:
        raise ValueError(f"{where} must be >= 1 on every axis, got {value}")
    return tuple(int(v) for v in value)


def equal_window_stages(patch_size, strides, pools, global_window, local_window) -> Tuple[int, ...]:
    """Stages whose WKV map (at this patch size) the global and the local window cut alike."""
    stages, size = [], list(patch_size)
    for s, (stride, pool) in enumerate(zip(strides, pools)):
        size = [-(-n // st) for n, st in zip(size, stride)]
        wkv_size = [-(-n // min(p, n)) for n, p in zip(size, pool)]
        if partition(wkv_size, clip_window(global_window, wkv_size)) == \
                partition(wkv_size, clip_window(local_window, wkv_size)):
            stages.append(s)
    return tuple(stages)


class RWKVSSSUNet(AbstractDynamicNetworkArchitectures):
    """U-shaped network whose encoder mixes tokens with windowed, multi-order Bi-WKV."""

    def __init__(
        self,
        input_channels: int,
        n_stages: int,
        features_per_stage: Union[int, List[int], Tuple[int, ...]],
        conv_op: Type[_ConvNd],
        kernel_sizes: Union[int, List[int], Tuple[int, ...]],
        strides: Union[int, List[int], Tuple[int, ...]],
        n_conv_per_stage: Union[int, List[int], Tuple[int, ...]],
        num_classes: int,
        n_conv_per_stage_decoder: Union[int, Tuple[int, ...], List[int]],
        conv_bias: bool = False,
        norm_op: Union[None, Type[nn.Module]] = None,
        norm_op_kwargs: dict = None,
        dropout_op: Union[None, Type[_DropoutNd]] = None,
        dropout_op_kwargs: dict = None,
        nonlin: Union[None, Type[torch.nn.Module]] = None,
        nonlin_kwargs: dict = None,
        deep_supervision: bool = False,
        nonlin_first: bool = False,
        *,
        use_rwkv: bool = True,
        rwkv_depths: Union[int, Sequence[int]] = 1,
        local_window: Union[None, int, Sequence[int]] = 8,
        global_window: Union[None, int, Sequence[int]] = 32,
        scan: str = "stage",
        shift: str = "window",
        wkv_pool: Sequence = (2,),
        hidden_ratio: float = 2,
        upsample: str = "dynamic",
        rwkv_checkpoint: bool = True,
        rwkv_first_stage: int = 0,
        wkv_mixer: str = "wkv",
        wkv_decay: str = "window",
        layer_scale: Optional[float] = None,
        block_placement: str = "replace",
        merge_equal_windows: bool = False,
        patch_size: Optional[Sequence[int]] = None,
    ):
        super().__init__()
        self.key_to_encoder = "encoder.stages"
        self.key_to_stem = "encoder.stages.0"
        self.keys_to_in_proj = ("encoder.stages.0.0.convs.0.conv", "encoder.stages.0.0.convs.0.all_modules.0")

        if conv_op not in _CONV_DIMS:
            raise ValueError(f"conv_op must be torch.nn.Conv2d or torch.nn.Conv3d, got {conv_op}")
        n_dims = _CONV_DIMS[conv_op]
        if n_stages < 1:
            raise ValueError(f"n_stages must be >= 1, got {n_stages}")
        features_per_stage = _per_stage(features_per_stage, n_stages, "features_per_stage")
        kernel_sizes = [_per_axis(k, n_dims, "kernel_sizes", s)
                        for s, k in enumerate(_per_stage(kernel_sizes, n_stages, "kernel_sizes"))]
        strides = [_per_axis(k, n_dims, "strides", s) for s, k in enumerate(_per_stage(strides, n_stages, "strides"))]
        n_conv_per_stage = _per_stage(n_conv_per_stage, n_stages, "n_conv_per_stage")
        if min(n_conv_per_stage) < 1:
            raise ValueError(f"n_conv_per_stage must be >= 1 per stage, got {n_conv_per_stage}")

        # --- RWKV-SSS options
        if scan not in SCANS:
            raise ValueError(f"unknown scan {scan!r}: expected one of {SCANS}")
        if shift not in SHIFTS:
            raise ValueError(f"unknown shift {shift!r}: expected one of {SHIFTS}")
        if upsample not in UPSAMPLES:
            raise ValueError(f"unknown upsample {upsample!r}: expected one of {UPSAMPLES}")
        if not isinstance(use_rwkv, bool):
            raise ValueError(f"use_rwkv must be True or False, got {use_rwkv!r}")
        depths = _per_stage(rwkv_depths, n_stages, "rwkv_depths")
        if any((not isinstance(d, (int, np.integer))) or d < 0 for d in depths):
            raise ValueError(f"rwkv_depths must be ints >= 0, got {rwkv_depths}")
        if not isinstance(rwkv_first_stage, (int, np.integer)) or not 0 <= rwkv_first_stage <= n_stages:
            raise ValueError(f"rwkv_first_stage must be an int in [0, n_stages={n_stages}], got {rwkv_first_stage!r}")
        depths = [0 if s < rwkv_first_stage else d for s, d in enumerate(depths)]
        if not use_rwkv:
            depths = [0] * n_stages
        glob = (None,) * n_dims if global_window is None else _per_axis(global_window, n_dims, "global_window")
        if local_window is None and global_window is not None:
            raise ValueError(f"local_window None (the whole map) is larger than global_window {glob}: the local "
                             "layer's windows must fit inside the global layer's; set global_window None too")
        local = (None,) * n_dims if local_window is None else _per_axis(local_window, n_dims, "local_window")
        if global_window is not None and any(l > g for l, g in zip(local, glob)):
            raise ValueError(f"local_window {local} is larger than global_window {glob} on some axis: the "
                             "local layer's windows must fit inside the global layer's")
        if isinstance(wkv_pool, (int, str)) or wkv_pool is None:
            raise ValueError(f"wkv_pool must be a list with one entry per stage from stage 0 (stages past it use 1), "
                             f"e.g. (2,), got {wkv_pool!r}")
        if len(wkv_pool) > n_stages:
            raise ValueError(f"wkv_pool has {len(wkv_pool)} entries for {n_stages} stages")
        pools = [_per_axis(p, n_dims, "wkv_pool", s) for s, p in enumerate(wkv_pool)]
        pools += [(1,) * n_dims] * (n_stages - len(pools))
        if not isinstance(rwkv_checkpoint, bool):
            raise ValueError(f"rwkv_checkpoint must be True or False, got {rwkv_checkpoint!r}")
        if not hidden_ratio > 0:
            raise ValueError(f"hidden_ratio must be > 0, got {hidden_ratio}")
        if wkv_mixer not in MIXERS:
            raise ValueError(f"unknown wkv_mixer {wkv_mixer!r}: expected one of {MIXERS}")
        if wkv_decay not in DECAYS:
            raise ValueError(f"unknown wkv_decay {wkv_decay!r}: expected one of {DECAYS}")
        if layer_scale is not None and (isinstance(layer_scale, bool) or not isinstance(layer_scale, (int, float))
                                        or not layer_scale > 0):
            raise ValueError(f"layer_scale must be None or a number > 0, got {layer_scale!r}")
        if block_placement not in PLACEMENTS:
            raise ValueError(f"unknown block_placement {block_placement!r}: expected one of {PLACEMENTS}")
        if not isinstance(merge_equal_windows, bool):
            raise ValueError(f"merge_equal_windows must be True or False, got {merge_equal_windows!r}")
        if patch_size is not None:
            patch_size = _per_axis(patch_size, n_dims, "patch_size")
        if merge_equal_windows and patch_size is None:
            raise ValueError("merge_equal_windows needs patch_size (the training patch) to know which stages' "
                             "windows coincide")
        single_layer_stages = equal_window_stages(patch_size, strides, pools, glob, local) \
            if merge_equal_windows else ()

        self.n_dims = n_dims
        self.strides = strides
        # each spatial size must be a multiple of this: the product of the strides per axis
        self.patch_multiple = tuple(math.prod(s[a] for s in strides) for a in range(n_dims))
        self.options = dict(use_rwkv=use_rwkv, rwkv_depths=depths,
                            local_window=None if local_window is None else local,
                            global_window=None if global_window is None else glob, scan=scan, shift=shift,
                            wkv_pool=[list(p) for p in pools], hidden_ratio=hidden_ratio, upsample=upsample,
                            rwkv_checkpoint=rwkv_checkpoint, rwkv_first_stage=rwkv_first_stage,
                            wkv_mixer=wkv_mixer, wkv_decay=wkv_decay, layer_scale=layer_scale,
                            block_placement=block_placement, merge_equal_windows=merge_equal_windows,
                            patch_size=patch_size)
        self.encoder = RWKVSSSEncoder(
            input_channels, features_per_stage, conv_op, kernel_sizes, strides, n_conv_per_stage, depths,
            (glob, local), pools, hidden_ratio, scan, shift, rwkv_checkpoint, block_placement, single_layer_stages,
            dict(mixer=wkv_mixer, decay=wkv_decay, layer_scale=layer_scale), conv_bias, norm_op, norm_op_kwargs, dropout_op,
            dropout_op_kwargs, nonlin, nonlin_kwargs, nonlin_first)
        self.decoder = RWKVSSSDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
                                      upsample, nonlin_first)

    def _check_size(self, size: Sequence[int], what: str) -> None:
        multiple = self.patch_multiple
        if [n % m for n, m in zip(size, multiple)] != [0] * len(multiple):
            raise ValueError(f"{what} {tuple(size)} is not divisible by the strides: each axis must be a multiple "
                             f"of {multiple} (the product of the strides per axis)")

    def forward(self, x: Tensor):
        if x.dim() != self.n_dims + 2:
            raise ValueError(f"input of shape {tuple(x.shape)} has {x.dim() - 2} spatial dims; this network's "
                             f"conv_op is {self.n_dims}D: expected (B, C, {', '.join('XYZ'[:self.n_dims])})")
        self._check_size(x.shape[2:], "input spatial size")
        return self.decoder(self.encoder(x))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's, with a mismatch named for what it almost always is: weights trained with other
        RWKV-SSS options than the plans now state (a model from before its options were pinned
        into its results folder's plans.json: docs/workflow.md, "Models trained before")."""
        try:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        except RuntimeError as error:
            stated = ", ".join(f"{k}={self.options[k]}" for k in ("rwkv_first_stage", "hidden_ratio", "rwkv_depths",
                                                                   "use_rwkv", "block_placement"))
            raise RuntimeError(
                f"these weights do not fit the RWKV-SSS network the plans build ({stated}): they were trained with "
                f"other RWKV-SSS options. A 2d model trained from nnU-Net's own plans before the 2d default "
                f"became rwkv_first_stage=1, hidden_ratio=1 has the design's defaults (0 and 2): state them in "
                f"its results folder's plans.json (docs/workflow.md, \"Models trained before\").\n{error}") from None

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Activations of one sample for nnU-Net's planners, in PlainConvUNet's units.

        PlainConvUNet counts one element per conv output element; a conv layer really keeps
        about that many (conv output, norm output) per element for backward. The RWKV blocks and
        the dynamic upsampling are counted with the same exchange rate from the tensors their
        backward keeps (see cost.py), so the planner sees their real weight.
        """
        if len(input_size) != self.n_dims:
            raise ValueError(f"give the patch size without batch or channels: {self.n_dims} numbers, "
                             f"got {tuple(input_size)}")
        self._check_size(input_size, "patch size")
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        """nnU-Net's init hook: He for convs; the RWKV and offset parameters keep their own init."""
        _initialize(module)
