"""Helpers the network tests import by name. Not in conftest.py: every test folder has a
conftest module, and a spawned DDP worker would import whichever comes first on sys.path."""
import pydoc

from torch import nn


def resolve_arch_kwargs(architecture: dict) -> dict:
    """A plans `architecture` entry -> constructor kwargs (as get_network_from_plans does)."""
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    return kwargs


def tiny_kwargs(n_dims: int, **overrides) -> dict:
    """A 3-stage network small enough for the O(T) operator on 2 CPU cores."""
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[n_dims]
    norm = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[n_dims]
    kwargs = dict(input_channels=1, n_stages=3, features_per_stage=[8, 12, 16], conv_op=conv, kernel_sizes=3,
                  strides=[1, 2, 2], n_conv_per_stage=2, num_classes=3, n_conv_per_stage_decoder=1,
                  conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
                  nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=True,
                  local_window=4, global_window=8)
    kwargs.update(overrides)
    return kwargs
