"""compute_conv_feature_map_size counts what backward really keeps, at the conv layers' rate."""

import pytest
import torch
from torch import nn
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU

import nnunet_sss.network.block as block_module
from nnunet_sss.measure import _live_tensor_peak
from nnunet_sss.network.block import RWKVLayer, RWKVStage, StageScanBlock
from nnunet_sss.network.unet import RWKVSSSUNet
from nnunet_sss.network.cost import CONV_ELEMENTS_PER_UNIT, layer_elements
from nnunet_sss.network.upsample import Upsample

from network_cases import tiny_kwargs


def _kept_elements(module, x, exclude=()):
    """Elements of the distinct tensors autograd keeps for backward (inputs and parameters
    listed in `exclude` not counted)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip and t.numel() > 64:
            seen[ptr] = t.untyped_storage().nbytes() // t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(seen.values())


def test_conv_layer_rate():
    conv = ConvDropoutNormReLU(nn.Conv3d, 8, 16, 3, 1, True, nn.InstanceNorm3d, {"affine": True}, None, None,
                               nn.LeakyReLU, {"inplace": True})
    x = torch.randn(2, 8, 6, 8, 6, requires_grad=True)
    kept = _kept_elements(conv, x, exclude=[x, *conv.parameters()])
    assert kept == CONV_ELEMENTS_PER_UNIT * conv.compute_conv_feature_map_size((6, 8, 6)) * 2  # batch 2


@pytest.mark.parametrize("size,window,pool,orders", [((16, 12, 8), (4, 4, 4), (2, 2, 2), "stage"),
                                                     ((10, 14, 10), (8, 8, 8), (1, 1, 1), "stage"),
                                                     ((24, 20), (32, 32), (2, 2), "raster")])
def test_rwkv_layer_estimate(size, window, pool, orders):
    layer = RWKVLayer(16, len(size), window, pool, 2, orders, "window", 0, 2)
    x = torch.randn(1, *size, 16, requires_grad=True)
    kept = _kept_elements(layer, x, exclude=list(layer.parameters()))
    estimate = layer_elements(size, 16, window, pool, 2, len(size) if orders == "stage" else 1)
    assert estimate == pytest.approx(kept, rel=0.15)


def test_checkpointed_layer_keeps_its_input_only():
    layer = RWKVLayer(16, 3, (4, 4, 4), (2, 2, 2), 2, "stage", "window", 0, 2, checkpoint=True)
    x = torch.randn(1, 8, 8, 8, 16, requires_grad=True)
    assert _kept_elements(layer, x, exclude=list(layer.parameters())) == x.numel()


def test_checkpointed_stage_keeps_no_copy_of_its_input():
    """The conv output the stage reads is kept by the conv; the stage adds only the inputs of its
    later layers (its first layer copies the channels-last view inside the checkpoint)."""
    stage = RWKVStage([StageScanBlock(16, 3, (4, 4, 4), (2, 2, 2), (2, 2, 2), 2, "stage", "window", 2 * i, 4,
                                      checkpoint=True) for i in range(2)])
    x = torch.randn(2, 16, 8, 8, 8, requires_grad=True)
    kept = _kept_elements(stage, x, exclude=[x, *stage.parameters()])
    assert kept == 3 * x.numel()  # 4 layers: the inputs of layers 2, 3 and 4


def test_micro_batched_recomputation_lowers_the_training_peak(monkeypatch):
    """Rebuilding a checkpointed layer for the whole batch at once set the network's peak;
    in micro-batches it does not."""
    torch.manual_seed(0)
    net = RWKVSSSUNet(**tiny_kwargs(3))
    x = torch.randn(4, 1, 16, 24, 16)
    monkeypatch.setattr(block_module, "MICRO_BATCH_MIN_ELEMENTS", 1)  # a 4-sample batch in 4 micro-batches
    micro = _live_tensor_peak(net, x, False)
    monkeypatch.setattr(block_module, "MICRO_BATCHES", 1)
    whole = _live_tensor_peak(net, x, False)
    assert micro < 0.9 * whole


def test_dynamic_upsample_estimate():
    up = Upsample(nn.Conv3d, 16, 8, (2, 2, 2), "dynamic")
    x = torch.randn(1, 16, 6, 5, 4, requires_grad=True)
    kept = _kept_elements(up, x, exclude=[x, *up.parameters()])
    high = 8 * 6 * 5 * 4 * 8
    units = up.feature_map_size((6, 5, 4), 8)
    # the output itself is kept by the decoder's next conv, not here: compare the rest
    assert (units - high) * CONV_ELEMENTS_PER_UNIT == pytest.approx(kept, rel=0.15)
