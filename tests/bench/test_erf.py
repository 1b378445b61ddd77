"""`python -m nnunet_sss.bench.erf`: the effective receptive field of a network whose reach is known,
and of a trained fold."""
import math

import pytest
import torch
from torch import nn

from nnunet_sss.bench import erf


class BoxFilter(nn.Module):
    """Two output channels: background 0, foreground the sum of the input over a (2 r + 1)^2 box."""

    def __init__(self, radius: int):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2 * radius + 1, padding=radius, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1].fill_(1.0)

    def forward(self, x):
        return [self.conv(x)]  # a deep-supervision list, as nnU-Net's networks return in training


def test_a_box_filters_reach_is_its_box():
    x = torch.randn(1, 15, 15)
    grad = erf.gradient_map(BoxFilter(1), x, (7, 7))
    assert torch.equal(grad > 0, erf.distances((15, 15), (7, 7), (1, 1)) <= math.sqrt(2) + 1e-9)
    assert erf.mass_radii(grad, (7, 7), (1.0, 1.0)) == pytest.approx([1.0, math.sqrt(2)])  # 5/9, then 9/9
    # in mm: 1 voxel at 0, 2 at 0.5, 2 at 2.0 (5/9 of the mass), 4 at sqrt(4.25)
    assert erf.mass_radii(grad, (7, 7), (2.0, 0.5)) == pytest.approx([2.0, math.sqrt(4.25)])
    wide = erf.gradient_map(BoxFilter(3), x, (7, 7))
    assert erf.mass_radii(wide, (7, 7), (1.0, 1.0))[1] > 2.5


def test_the_voxel_is_the_foreground_voxel_nearest_the_centroid_and_the_object_is_measured_around_it():
    labels = torch.zeros(15, 15, dtype=torch.long)
    labels[2, 2:13] = 1
    labels[2:13, 2] = 2  # an L: its centroid (4.6, 4.6) lies outside it
    voxel = erf.output_voxel(labels, labels.shape)
    assert labels[voxel] > 0 and voxel in ((2, 5), (5, 2))
    assert erf.output_voxel(torch.zeros(15, 15, dtype=torch.long), (15, 15)) == (7, 7)
    point = torch.zeros(15, 15, dtype=torch.long)
    point[7, 7] = 1
    reach = erf.case_reach(BoxFilter(1), torch.randn(1, 15, 15), point, (1.0, 1.0))
    assert reach.object_r90 == 0.0 and reach.beyond_object == pytest.approx(8 / 9)


def test_a_network_without_reach_is_an_error():
    class Constant(nn.Module):
        def forward(self, x):
            return x.sum() * 0 + torch.zeros(1, 2, *x.shape[2:])
    with pytest.raises((ValueError, RuntimeError)):
        erf.case_reach(Constant(), torch.randn(1, 9, 9), None, (1.0, 1.0))


def test_a_trained_fold_and_bad_input(hippocampus_rwkvsss_smoke, capsys):
    fold = hippocampus_rwkvsss_smoke.results_folder("nnUNetTrainerRWKVSSS_smoke", "2d") / "fold_0"
    data = hippocampus_rwkvsss_smoke.dataset_preprocessed / "nnUNetPlans_2d"
    assert erf.main(["--model", str(fold), "--cases", "2", "--data", str(data)]) == 0
    line = next(r for r in capsys.readouterr().out.splitlines() if "fold_0" in r).split("|")[1:-1]
    r50, r90, object_r90, ratio, beyond = (float(c) for c in line[2:])
    assert line[1].strip() == "2" and 0 < r50 <= r90 and object_r90 > 0 and 0 <= beyond <= 1
    assert ratio == pytest.approx(r90 / object_r90, rel=0.03)  # of the medians, printed rounded to 0.1 mm
    assert erf.main(["--model", str(fold.parent / "fold_4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no checkpoint_final.pth" in err and "\n" not in err


@pytest.mark.parametrize("name", ["large2d", "aniso3d"])
def test_the_large_layouts_build_both_networks_at_their_patch(name):
    """The probes' layouts for large images: strides per axis, a patch every stage divides."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_sss.bench.network import LAYOUTS
    from nnunet_sss.network.unet import RWKVSSSUNet

    layout = LAYOUTS[name]
    strides = layout["kwargs"]["strides"]
    assert all(len(s) == len(layout["patch"]) for s in strides)
    assert RWKVSSSUNet(**layout["kwargs"]).compute_conv_feature_map_size(layout["patch"]) > \
        PlainConvUNet(**layout["kwargs"]).compute_conv_feature_map_size(layout["patch"]) > 0
    if name == "aniso3d":
        assert strides[1] == [1, 2, 2]  # the thick-slice axis is not halved first
