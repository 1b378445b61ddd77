"""RWKV-SSS size presets: the network's own options; widths, kernels and strides come from the plans.

A preset never names the stage count, so one preset fits any configuration (2d, 3d_fullres,
3d_lowres, cascade) and any dataset. The option names are those of `RWKVSSSUNet`
(docs/ARCHITECTURE.md, "The network constructor").
"""
from types import MappingProxyType
from typing import Optional

# Every RWKV-SSS option, with the network's default. The plans writer writes all of them, so a
# plans file states the whole network and the stock nnUNetTrainer rebuilds exactly it.
NETWORK_DEFAULTS = MappingProxyType({
    "use_rwkv": True,
    "rwkv_depths": 1,
    "local_window": 8,
    "global_window": 32,
    "scan": "stage",
    "shift": "window",
    "wkv_pool": (2,),
    "hidden_ratio": 2,
    "upsample": "dynamic",
    "rwkv_checkpoint": True,  # recompute block activations in backward: memory, not the model
    "rwkv_first_stage": 0,  # stages before it keep the plans' convs
    "wkv_mixer": "wkv",
    "wkv_decay": "window",
    "layer_scale": None,
    "block_placement": "replace",
    "merge_equal_windows": False,
    "patch_size": None,  # filled in by the trainer from the configuration when an option needs it
})

# S is the network's defaults (one Stage-Scan block per stage, the block taking the place of the
# plans' second conv); as the default preset it takes a measured setting per configuration (below).
# M doubles the blocks and lets the global block see the whole map. L adds a third block, pools K/V
# in the two largest stages and widens the channel mix.
PRESETS = MappingProxyType({
    "S": MappingProxyType(dict(NETWORK_DEFAULTS)),
    "M": MappingProxyType({**NETWORK_DEFAULTS, "rwkv_depths": 2, "global_window": None}),
    "L": MappingProxyType({**NETWORK_DEFAULTS, "rwkv_depths": 3, "global_window": None,
                           "wkv_pool": (2, 2), "hidden_ratio": 4}),
})

DEFAULT_PRESET = "S"

# The default preset's setting per configuration, measured (docs/results.md, "The default per
# configuration"): in 2d, blocks from the second stage on and a channel mix as wide as its input beat
# nnU-Net's network trained with the same optimiser over five folds, at about half the design's cost;
# in 3d the design's own defaults stay (the held-out 3D gain over that control was theirs; the cheaper
# setting was level with it on Hippocampus 3d). Keyed by the patch's dimensionality, so 2d,
# 3d_fullres, 3d_lowres and cascades alike take theirs.
DEFAULT_PRESET_BY_DIMS = MappingProxyType({
    2: MappingProxyType({"rwkv_first_stage": 1, "hidden_ratio": 1}),
})

# GPU memory (GiB) of the memory presets of the planner (`nnunet-sss plans --preset`), named and
# sized as nnU-Net's residual-encoder presets (nnUNetPlannerResEncM/L/XL). They set the GPU the
# plans are sized for, not the network: any size preset above (`--size`) trains at any of them.
MEMORY_PRESETS = MappingProxyType({"M": 8, "L": 24, "XL": 40})


def preset_options(name: str = DEFAULT_PRESET, *, n_dims: Optional[int] = None, **overrides) -> dict:
    """The options of preset `name` with `overrides` applied; unknown names raise, naming them.
    With `n_dims` (the configuration's patch dimensionality) the default preset takes that
    configuration's measured setting (DEFAULT_PRESET_BY_DIMS) under the overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown RWKV-SSS preset {name!r}; choose one of {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(NETWORK_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown RWKV-SSS option(s) {unknown}; known: {sorted(NETWORK_DEFAULTS)}")
    if n_dims is not None and n_dims not in (2, 3):
        raise ValueError(f"n_dims must be 2 or 3 (the patch's dimensionality), got {n_dims!r}")
    by_dims = DEFAULT_PRESET_BY_DIMS.get(n_dims, {}) if name == DEFAULT_PRESET else {}
    return {**PRESETS[name], **by_dims, **overrides}
