"""Fixtures of the nnU-Net integration tests."""
import pytest

import nnunet_sss


def _placeholder_class():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_sss.plans import NETWORK_DEFAULTS

    class RWKVSSSUNet(PlainConvUNet):
        """Pinned constructor (PlainConvUNet's arguments + the RWKV-SSS options), PlainConvUNet inside."""

        def __init__(self, input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                     n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias=False, norm_op=None,
                     norm_op_kwargs=None, dropout_op=None, dropout_op_kwargs=None, nonlin=None,
                     nonlin_kwargs=None, deep_supervision=False, nonlin_first=False, **options):
            unknown = set(options) - set(NETWORK_DEFAULTS)
            if unknown:
                raise TypeError(f"unknown options {sorted(unknown)}")
            super().__init__(input_channels, n_stages, features_per_stage, conv_op, kernel_sizes, strides,
                             n_conv_per_stage, num_classes, n_conv_per_stage_decoder, conv_bias, norm_op,
                             norm_op_kwargs, dropout_op, dropout_op_kwargs, nonlin, nonlin_kwargs,
                             deep_supervision, nonlin_first)
            self.options = {**NETWORK_DEFAULTS, **options}

    return RWKVSSSUNet


@pytest.fixture(autouse=True)
def rwkvsss_network(monkeypatch):
    """The network class the trainers build (nnunet_sss.RWKVSSSUNet)."""
    cls = getattr(nnunet_sss, "RWKVSSSUNet", None)
    if cls is None:
        cls = _placeholder_class()
        monkeypatch.setattr(nnunet_sss, "RWKVSSSUNet", cls, raising=False)
    return cls
