"""RWKV-SSS size presets, the writer of nnU-Net plans that build RWKV-SSS and the planner that
sizes them to a GPU (layer 3)."""
from .architecture import (RWKVSSS_CLASS_NAME, architecture_dims, is_rwkvsss, preset_options_for, rwkvsss_architecture,
                           rwkvsss_options)
from .presets import DEFAULT_PRESET, DEFAULT_PRESET_BY_DIMS, MEMORY_PRESETS, NETWORK_DEFAULTS, PRESETS, preset_options

__all__ = ["DEFAULT_PRESET", "DEFAULT_PRESET_BY_DIMS", "MEMORY_PRESETS", "NETWORK_DEFAULTS", "PRESETS",
           "RWKVSSS_CLASS_NAME", "architecture_dims", "is_rwkvsss", "preset_options", "preset_options_for",
           "rwkvsss_architecture", "rwkvsss_options"]
