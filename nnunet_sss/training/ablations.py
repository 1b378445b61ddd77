"""Ablation trainers: each turns off one RWKV-SSS idea through one network option.

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
    "fullResWKV": ({"wkv_pool": (1,)}, "WKV at full resolution instead of on the pooled K/V map"),
    "transposedUp": ({"upsample": "transpose"}, "transposed-conv upsampling instead of dynamic upsampling"),
})

ABLATION_TRAINERS = tuple(
    define_variant(globals(), f"{nnUNetTrainerRWKVSSS.__name__}_{suffix}", (nnUNetTrainerRWKVSSS,),
                   {"network_overrides": MappingProxyType({**nnUNetTrainerRWKVSSS.network_overrides, **option})},
                   f"RWKV-SSS ablation: {what} ({option}).")
    for suffix, (option, what) in ABLATIONS.items()
)
