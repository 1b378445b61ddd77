"""Turn the `architecture` entry of nnU-Net plans into one that builds RWKV-SSS.

nnU-Net describes a network as {network_class_name, arch_kwargs, _kw_requires_import} and builds
it with `get_network_from_plans`. RWKVSSSUNet takes PlainConvUNet's arguments, so a plans entry
for PlainConvUNet, for ResidualEncoderUNet (nnU-Net's ResEnc presets) or for RWKVSSSUNet itself
maps onto it: widths, kernels, strides, norms and nonlinearities come from the plans, the
RWKV-SSS options from a preset (plans/presets.py). Pure dict work: no torch, no nnunetv2.
"""
from typing import Mapping, Optional

from .presets import DEFAULT_PRESET, NETWORK_DEFAULTS, preset_options

RWKVSSS_CLASS_NAME = "nnunet_sss.RWKVSSSUNet"

# RWKVSSSUNet's arguments shared with PlainConvUNet, in its order. input_channels, num_classes
# and deep_supervision are not in plans: nnU-Net passes them when it builds the network.
SHARED_KWARGS = (
    "n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
    "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs", "dropout_op",
    "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "nonlin_first",
)
REQUIRED_KWARGS = ("n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides",
                   "n_conv_per_stage_decoder")
# ResidualEncoderUNet's own arguments. Its encoder depth (n_blocks_per_stage) becomes
# n_conv_per_stage; the residual block type and bottleneck/stem widths have no counterpart.
RESENC_ONLY_KWARGS = ("n_blocks_per_stage", "block", "bottleneck_channels", "stem_channels")


def is_rwkvsss(architecture: Mapping) -> bool:
    """True if a plans `architecture` entry already builds RWKVSSSUNet (any import path to it)."""
    return architecture["network_class_name"].rsplit(".", 1)[-1] == "RWKVSSSUNet"


def architecture_dims(architecture: Mapping) -> int:
    """2 or 3: the dimensionality of the network a plans `architecture` entry builds (from its kernels)."""
    try:
        return len(architecture["arch_kwargs"]["kernel_sizes"][0])
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"the plans architecture {architecture.get('network_class_name')!r} names no "
                         f"kernel_sizes: cannot tell whether it is 2d or 3d") from None


def preset_options_for(architecture: Mapping, size: str = DEFAULT_PRESET, **overrides) -> dict:
    """Preset `size`'s options for the configuration that `architecture` describes (the default
    preset's setting depends on 2d/3d, presets.DEFAULT_PRESET_BY_DIMS), `overrides` applied last."""
    return preset_options(size, n_dims=architecture_dims(architecture), **overrides)


def rwkvsss_options(architecture: Mapping) -> dict:
    """The RWKV-SSS options stated in an RWKVSSSUNet plans entry ({} for other networks)."""
    if not is_rwkvsss(architecture):
        return {}
    kwargs = architecture["arch_kwargs"]
    return {k: kwargs[k] for k in NETWORK_DEFAULTS if k in kwargs}


def rwkvsss_architecture(architecture: Mapping, options: Optional[Mapping] = None) -> dict:
    """A new `architecture` entry that builds RWKVSSSUNet from `architecture`'s layout.

    The RWKV-SSS options are those already in `architecture` (if it is RWKVSSSUNet), updated
    with `options`. Keys that cannot be carried over raise a ValueError naming them, so a
    plans entry for some other network is never silently reinterpreted.
    """
    options = dict(options or {})
    unknown_options = sorted(set(options) - set(NETWORK_DEFAULTS))
    if unknown_options:
        raise ValueError(f"unknown RWKV-SSS option(s) {unknown_options}; known: {sorted(NETWORK_DEFAULTS)}")

    source = dict(architecture["arch_kwargs"])
    name = architecture["network_class_name"]
    if "n_blocks_per_stage" in source and "n_conv_per_stage" not in source:
        source["n_conv_per_stage"] = source["n_blocks_per_stage"]
    for key in RESENC_ONLY_KWARGS:
        source.pop(key, None)

    merged_options = {**rwkvsss_options(architecture), **options}
    for key in NETWORK_DEFAULTS:
        source.pop(key, None)

    missing = [k for k in REQUIRED_KWARGS if k not in source]
    if "n_conv_per_stage" not in source:
        missing.append("n_conv_per_stage (or n_blocks_per_stage)")
    unexpected = sorted(set(source) - set(SHARED_KWARGS))
    if missing or unexpected:
        raise ValueError(
            f"cannot build RWKVSSSUNet from the plans architecture {name}: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"no counterpart for {unexpected}" if unexpected else "")
            + ". RWKV-SSS takes PlainConvUNet- or ResidualEncoderUNet-style plans.")

    arch_kwargs = {k: source[k] for k in SHARED_KWARGS if k in source}
    arch_kwargs.update(merged_options)
    requires_import = [k for k in architecture.get("_kw_requires_import", ()) if k in arch_kwargs]
    return {
        "network_class_name": RWKVSSS_CLASS_NAME,
        "arch_kwargs": _as_json(arch_kwargs),
        "_kw_requires_import": requires_import,
    }


def _as_json(value):
    """Tuples become lists, so an entry built in memory equals its round trip through JSON."""
    if isinstance(value, Mapping):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value
