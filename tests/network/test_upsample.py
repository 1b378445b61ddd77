"""Dynamic upsampling: starts as linear interpolation, learns offsets, any per-axis scale."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_sss.network.init import initialize
from nnunet_sss.network.upsample import DynamicUpsample, Upsample


@pytest.mark.parametrize("conv,size,scale", [
    (nn.Conv2d, (5, 7), (2, 2)), (nn.Conv2d, (4, 6), (1, 2)), (nn.Conv2d, (3, 3), (3, 2)),
    (nn.Conv3d, (3, 4, 5), (2, 2, 2)), (nn.Conv3d, (4, 3, 2), (1, 2, 2)), (nn.Conv3d, (2, 3, 4), (2, 1, 3)),
])
def test_zero_offsets_are_linear_interpolation(conv, size, scale):
    up = DynamicUpsample(conv, 6, scale).double()
    x = torch.randn(2, 6, *size, dtype=torch.float64)
    mode = "bilinear" if len(size) == 2 else "trilinear"
    expected = F.interpolate(x, scale_factor=scale, mode=mode, align_corners=False)
    torch.testing.assert_close(up(x), expected)


def test_offsets_learn_and_move_the_samples():
    up = DynamicUpsample(nn.Conv3d, 4, (2, 2, 2)).double()
    x = torch.randn(1, 4, 3, 4, 5, dtype=torch.float64)
    up(x).square().sum().backward()
    assert up.offset.weight.grad.abs().sum() > 0 and up.offset.bias.grad.abs().sum() > 0
    with torch.no_grad():
        up.offset.bias.normal_()
    assert not torch.allclose(up(x), F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False))
    small = torch.randn(1, 4, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: up(t), (small,), fast_mode=True)


def test_initialize_keeps_zero_offsets_and_inits_convs():
    up = Upsample(nn.Conv3d, 8, 4, (1, 2, 2), "dynamic")
    before = up.project.weight.clone()
    up.apply(initialize)
    assert up.sample.offset.weight.eq(0).all() and up.sample.offset.bias.eq(0).all()
    assert not torch.equal(up.project.weight, before)


@pytest.mark.parametrize("mode", ["dynamic", "transpose"])
def test_upsample_shapes(mode):
    up = Upsample(nn.Conv3d, 8, 4, (1, 2, 2), mode)
    assert up(torch.randn(2, 8, 3, 4, 5)).shape == (2, 4, 3, 8, 10)
    with pytest.raises(ValueError, match="unknown upsample"):
        Upsample(nn.Conv3d, 8, 4, (1, 2, 2), "pixelshuffle")


@pytest.mark.parametrize("conv,size,scale", [(nn.Conv2d, (5, 6), (2, 1)), (nn.Conv3d, (3, 4, 5), (1, 2, 2))])
def test_float32_sampling_matches_float64(conv, size, scale):
    """fp32 on the CPU samples with the C++ kernel, float64 with grid_sample: same values and
    gradients, offsets moved well off the plain interpolation (some points past the border)."""
    up = DynamicUpsample(conv, 5, scale)
    with torch.no_grad():
        up.offset.weight.normal_(0, 2.0), up.offset.bias.normal_(0, 2.0)
    x = torch.randn(2, 5, *size)
    results = []
    for dtype in (torch.float32, torch.float64):
        model, inputs = up.to(dtype), x.to(dtype).requires_grad_()
        out = model(inputs)
        grads = torch.autograd.grad(out.sin().sum(), (inputs, *model.parameters()))
        results.append([out, *grads])
    for fp32, fp64 in zip(*results):
        torch.testing.assert_close(fp32.double(), fp64, rtol=1e-4, atol=1e-4)
