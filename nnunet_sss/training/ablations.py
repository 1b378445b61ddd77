"""Ablation trainers: each turns off one RWKV-SSS idea (or tries one candidate change) through one
network option.

Names follow nnU-Net's variant style: nnUNetTrainerRWKVSSS_<ablation>; each also gets the
schedule variants (schedules.py). The options are the network's (docs/ARCHITECTURE.md).
"""
from types import MappingProxyType

from .trainer import nnUNetTrainerRWKVSSS
from .variants import define_variant

# suffix: (the one option changed, what it measures)
ABLATIONS = MappingProxyType({
    "noRWKV": ({"use_rwkv": False}, "no Stage-Scan blocks: convs in their place, same widths"),
    "rasterScan": ({"scan": "raster"}, "one raster scan order instead of the stage (snake, all axis orders) scan"),
    "globalShift": ({"shift": "global"}, "token shift over the whole map instead of inside each window"),
    "noShift": ({"shift": "none"}, "no token shift: each projection reads its own token, no mixes"),
    "fullResWKV": ({"wkv_pool": (1,)}, "WKV at full resolution instead of on the pooled K/V map"),
    "noPartitions": ({"global_window": None, "local_window": None},
                     "no Stage-Scan partitions: both layers of a block scan the whole map as one window"),
    "transposedUp": ({"upsample": "transpose"}, "transposed-conv upsampling instead of dynamic upsampling"),
    # what the WKV itself adds: the block kept, only its token mixer replaced
    "wkvMean": ({"wkv_mixer": "mean"}, "the mean of v over each window instead of the Bi-WKV (a pooling mixer)"),
    "wkvIdentity": ({"wkv_mixer": "identity"}, "y = v instead of the Bi-WKV (no token mixing)"),
    # candidate changes within the method (issue: make the WKV earn its place)
    "layerScale": ({"layer_scale": 1e-2}, "a per-channel scale on both branches of every RWKV layer, from 0.01"),
    "tokenDecay": ({"wkv_decay": "token"}, "a per-token decay graded over channels instead of w/T"),
    "blockAfter": ({"block_placement": "after"}, "the blocks after the plans' convs instead of in place of one"),
    "mergeWindows": ({"merge_equal_windows": True}, "one layer where the global and local windows coincide"),
})

# candidate changes of the training rather than the network: suffix: (trainer attributes, what)
TRAINING_ARMS = MappingProxyType({
    "wkvFastDecay": ({"wkv_lr_scale": 10.0}, "the WKV's decay and bonus trained at 10x the rate of the rest"),
})

ABLATION_TRAINERS = (
    *(define_variant(globals(), f"{nnUNetTrainerRWKVSSS.__name__}_{suffix}", (nnUNetTrainerRWKVSSS,),
                     {"network_overrides": MappingProxyType({**nnUNetTrainerRWKVSSS.network_overrides, **option})},
                     f"RWKV-SSS ablation: {what} ({option}).")
      for suffix, (option, what) in ABLATIONS.items()),
    *(define_variant(globals(), f"{nnUNetTrainerRWKVSSS.__name__}_{suffix}", (nnUNetTrainerRWKVSSS,), dict(attributes),
                     f"RWKV-SSS candidate: {what} ({attributes}).")
      for suffix, (attributes, what) in TRAINING_ARMS.items()),
)
