"""RWKV-SSS size presets, the writer of nnU-Net plans that build RWKV-SSS and the planner that
sizes them to a GPU (layer 3)."""
from .architecture import RWKVSSS_CLASS_NAME, is_rwkvsss, rwkvsss_architecture, rwkvsss_options
from .presets import DEFAULT_PRESET, MEMORY_PRESETS, NETWORK_DEFAULTS, PRESETS, preset_options

__all__ = ["DEFAULT_PRESET", "MEMORY_PRESETS", "NETWORK_DEFAULTS", "PRESETS", "RWKVSSS_CLASS_NAME", "is_rwkvsss",
           "preset_options", "rwkvsss_architecture", "rwkvsss_options"]
