"""RWKVSSSUNet built from nnU-Net plans: shapes per deep-supervision level, learning, switches, errors."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from dynamic_network_architectures.architectures.unet import PlainConvUNet

import nnunet_sss
import nnunet_sss.network.spatial_mix as spatial_mix_module
from nnunet_sss.network.block import RWKVLayer

from network_cases import resolve_arch_kwargs, tiny_kwargs

RWKVSSSUNet = nnunet_sss.RWKVSSSUNet
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # CUDA: Triton WKV, fp16 autocast

ANISO_3D = dict(input_channels=2, n_stages=4, features_per_stage=[8, 16, 24, 32], conv_op=nn.Conv3d,
                kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
                strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]], n_conv_per_stage=[2, 2, 2, 2],
                num_classes=4, n_conv_per_stage_decoder=[2, 2, 2], conv_bias=True, norm_op=nn.InstanceNorm3d,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                nonlin_kwargs={"inplace": True}, deep_supervision=True)
ANISO_2D = dict(ANISO_3D, conv_op=nn.Conv2d, norm_op=nn.InstanceNorm2d, n_stages=3, features_per_stage=[8, 16, 24],
                kernel_sizes=[[3, 1], [3, 3], [3, 3]], strides=[[1, 1], [2, 1], [2, 2]], n_conv_per_stage=[1, 2, 3],
                n_conv_per_stage_decoder=[1, 2])


def _ds_shapes(kwargs, batch, patch):
    """What nnU-Net expects: one output per decoder stage at the patch size / cumulative strides."""
    scales = np.cumprod(np.vstack(kwargs["strides"]), axis=0)[:-1]
    return [(batch, kwargs["num_classes"], *(np.array(patch) // s)) for s in scales]


def _ds_loss(outputs, target):
    """Deep-supervision CE with nnU-Net's halving weights (targets downsampled by nearest)."""
    weights = np.array([1 / (2 ** i) for i in range(len(outputs))])
    weights = weights / weights.sum()
    loss = 0
    for w, out in zip(weights, outputs):
        t = F.interpolate(target[:, None].float(), size=out.shape[2:], mode="nearest")[:, 0].long()
        loss = loss + w * F.cross_entropy(out, t)
    return loss


def _learns(net, x, target, steps=6):
    """On a GPU as nnU-Net trains there: fp16 autocast with a gradient scaler."""
    torch.manual_seed(0)
    amp = x.device.type == "cuda"
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler(x.device.type, enabled=amp)
    losses = []
    for _ in range(steps):
        with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
            loss = _ds_loss(net(x), target)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses


def _check_shapes_against_plain(kwargs, batch, patch, **options):
    torch.manual_seed(0)
    net = RWKVSSSUNet(**kwargs, **options)
    net.apply(net.initialize)
    plain = PlainConvUNet(**kwargs)
    x = torch.randn(batch, kwargs["input_channels"], *patch)
    with torch.no_grad():
        outputs = net(x)
        expected = [tuple(o.shape) for o in plain(x)]
    assert [tuple(o.shape) for o in outputs] == expected == _ds_shapes(kwargs, batch, patch)
    return net


# What nnU-Net 2.8 plans for the whole Dataset004_Hippocampus (patch, stages, batch): the
# fixture's plans must be those, not the plans of a few cases.
HIPPOCAMPUS_PLANS = {"2d": ((56, 40), 4, 366), "3d_fullres": ((40, 56, 40), 4, 9)}


@pytest.mark.parametrize("configuration", ["2d", "3d_fullres"])
def test_built_from_hippocampus_plans(hippocampus_plans, configuration):
    config = hippocampus_plans["configurations"][configuration]
    assert (tuple(config["patch_size"]), config["architecture"]["arch_kwargs"]["n_stages"],
            config["batch_size"]) == HIPPOCAMPUS_PLANS[configuration]
    kwargs = dict(resolve_arch_kwargs(config["architecture"]), input_channels=1, num_classes=3,
                  deep_supervision=True)
    patch = tuple(config["patch_size"])
    net = _check_shapes_against_plain(kwargs, 2, patch)
    # a few optimisation steps on one batch lower the loss (3D on a smaller crop: CPU budget)
    patch = patch if configuration == "2d" else (16, 24, 16)
    torch.manual_seed(1)
    x = torch.randn(2, 1, *patch)
    target = (x[:, 0] > 0.5).long() + (x[:, 0] > 1.2).long()
    _learns(net, x, target)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kwargs,patch", [(ANISO_3D, (8, 16, 24)), (ANISO_2D, (12, 8))])
def test_built_from_anisotropic_plans(kwargs, patch, device):
    net = _check_shapes_against_plain(kwargs, 2, patch, local_window=(2, 4, 4)[:len(patch)])
    x = torch.randn(2, kwargs["input_channels"], *patch)
    target = (x[:, 0] > 0.3).long() + (x[:, 1] > 0.8).long()
    _learns(net.to(device), x.to(device), target.to(device))


def test_deep_supervision_switch_keeps_the_state_dict():
    on = RWKVSSSUNet(**tiny_kwargs(3, deep_supervision=True))
    off = RWKVSSSUNet(**tiny_kwargs(3, deep_supervision=False))
    assert {k: v.shape for k, v in on.state_dict().items()} == {k: v.shape for k, v in off.state_dict().items()}
    off.load_state_dict(on.state_dict())
    x = torch.randn(1, 1, 8, 12, 8)
    on.eval()
    off.eval()
    with torch.no_grad():
        logits = off(x)
        outputs = on(x)
    assert isinstance(logits, torch.Tensor) and isinstance(outputs, list) and len(outputs) == 2
    torch.testing.assert_close(logits, outputs[0])
    # the switch is the attribute nnU-Net flips
    on.decoder.deep_supervision = False
    with torch.no_grad():
        torch.testing.assert_close(on(x), logits)
    # logits, not probabilities: no softmax at the end
    assert not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))
    assert (logits < 0).any()


def test_deep_supervision_off_still_gives_every_parameter_a_gradient():
    net = RWKVSSSUNet(**tiny_kwargs(2, deep_supervision=False))
    net(torch.randn(2, 1, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad.eq(0).all() for p in net.decoder.seg_layers[0].parameters())


def _state_shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _differing(a, b):
    sa, sb = _state_shapes(a), _state_shapes(b)
    return {k for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k)}


ABLATIONS = {
    "use_rwkv": (False, lambda key: key.startswith("encoder.")),
    "scan": ("raster", lambda key: key.endswith("scan_logits")),
    "shift": ("global", None),
    "shift:none": ("none", lambda key: key.rsplit(".", 1)[-1] in ("mix_k", "mix_v", "mix_r")),
    "wkv_pool": ((1,), None),
    "upsample": ("transpose", lambda key: key.startswith("decoder.upsamplers.")),
    "wkv_mixer": ("mean", lambda key: key.split(".spatial_mix.")[-1] in _WKV_ONLY and ".spatial_mix." in key),
    "wkv_decay": ("token", None),
    "layer_scale": (1e-2, lambda key: key.endswith((".scale1", ".scale2"))),
    "block_placement": ("after", lambda key: ".0.convs.1." in key),
}
_WKV_ONLY = {"key.weight", "decay", "bonus", "mix_k", "scan_logits"}  # what a mixer without the WKV drops


@pytest.mark.parametrize("n_dims", [2, 3])
@pytest.mark.parametrize("option", list(ABLATIONS))
def test_each_ablation_switch_builds_runs_and_changes_only_its_idea(n_dims, option, monkeypatch):
    value, where = ABLATIONS[option]
    option = option.split(":")[0]
    torch.manual_seed(0)
    default = RWKVSSSUNet(**tiny_kwargs(n_dims))
    torch.manual_seed(0)
    ablated = RWKVSSSUNet(**tiny_kwargs(n_dims, **{option: value}))
    changed = _differing(default, ablated)
    if where is None:
        assert not changed  # same parameters, the idea is in the computation
    else:
        assert changed and all(where(k) for k in changed)
    calls = []
    real = spatial_mix_module.bi_wkv
    monkeypatch.setattr(spatial_mix_module, "bi_wkv", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(2, 1, *(8, 12, 8)[:n_dims])
    outputs = ablated(x)
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is not None for p in ablated.parameters())
    if option == "use_rwkv":
        assert not calls and not any(isinstance(m, RWKVLayer) for m in ablated.modules())
    elif option == "wkv_mixer":
        assert not calls  # the block runs, its WKV does not
        with torch.no_grad():
            assert not torch.allclose(default(x)[0], ablated(x)[0])
    else:
        assert calls
        with torch.no_grad():
            assert not torch.allclose(default(x)[0], ablated(x)[0])


def test_no_rwkv_encoder_is_plain_conv_unets():
    kwargs = tiny_kwargs(3, n_conv_per_stage=[2, 3, 1])
    ablated = RWKVSSSUNet(**kwargs, use_rwkv=False)
    plain = PlainConvUNet(**{k: v for k, v in kwargs.items() if k not in ("local_window", "global_window")})
    assert _state_shapes(ablated.encoder) == _state_shapes(plain.encoder)


def test_per_stage_depths_and_windows():
    net = RWKVSSSUNet(**tiny_kwargs(3, rwkv_depths=[0, 2, 1], local_window=(2, 4, 4), global_window=None,
                                    wkv_pool=[(1, 2, 2)], hidden_ratio=1.5))
    layers = [m for m in net.modules() if isinstance(m, RWKVLayer)]
    assert len(layers) == 6
    assert len(net.encoder.stages[0][0].convs) == 2 and len(net.encoder.stages[1][0].convs) == 1
    assert layers[0].spatial_mix.window == (None, None, None) and layers[1].spatial_mix.window == (2, 4, 4)
    net(torch.randn(1, 1, 8, 12, 8))
    late = RWKVSSSUNet(**tiny_kwargs(3, rwkv_first_stage=2))
    assert late.encoder.depths == [0, 0, 1] and len(late.encoder.stages[1][0].convs) == 2
    with pytest.raises(ValueError, match="rwkv_first_stage"):
        RWKVSSSUNet(**tiny_kwargs(3, rwkv_first_stage=5))


@pytest.mark.parametrize("n_dims", [2, 3])
def test_no_partitions_gives_every_layer_the_whole_map(n_dims, monkeypatch):
    """The Stage-Scan partitions' ablation: local_window=None with global_window=None leaves one
    window per map in every layer, and the token shift inside it is then the whole-map shift."""
    windows_per_map = []
    real = spatial_mix_module.scan_plan
    monkeypatch.setattr(spatial_mix_module, "scan_plan",
                        lambda *a, **kw: (lambda plan: windows_per_map.append(plan.n_windows) or plan)(real(*a, **kw)))
    x = torch.randn(2, 1, *(16, 24, 16)[:n_dims])
    RWKVSSSUNet(**tiny_kwargs(n_dims))(x)
    assert max(windows_per_map) > 1  # the default partitions these maps
    windows_per_map.clear()
    outputs = {}
    for shift in ("window", "global"):
        torch.manual_seed(0)
        net = RWKVSSSUNet(**tiny_kwargs(n_dims, local_window=None, global_window=None, shift=shift))
        assert net.options["local_window"] is None and net.options["global_window"] is None
        outputs[shift] = net(x)[0]
    assert windows_per_map and set(windows_per_map) == {1}
    torch.testing.assert_close(outputs["window"], outputs["global"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="local_window None .* global_window"):
        RWKVSSSUNet(**tiny_kwargs(n_dims, local_window=None))


def test_initialize_keeps_the_vision_rwkv_init():
    net = RWKVSSSUNet(**tiny_kwargs(3))
    before = copy.deepcopy(net.state_dict())
    net.apply(net.initialize)
    after = net.state_dict()
    rwkv_keys = [k for k in before if any(s in k for s in ("decay", "bonus", "mix_", "scan_logits", ".offset."))]
    assert rwkv_keys and all(torch.equal(before[k], after[k]) for k in rwkv_keys)
    conv_keys = [k for k in before if k.endswith("conv.weight")]
    assert conv_keys and all(not torch.equal(before[k], after[k]) for k in conv_keys)
    # depth-graded: the decay curve and the mixes differ between two layers of the same width
    first, second = [m for m in net.modules() if isinstance(m, RWKVLayer)][:2]
    assert not torch.allclose(first.spatial_mix.decay, second.spatial_mix.decay)
    assert not torch.allclose(first.spatial_mix.mix_k, second.spatial_mix.mix_k)


def test_feature_map_size_counts_the_blocks():
    plain = PlainConvUNet(**{k: v for k, v in tiny_kwargs(3).items() if k not in ("local_window", "global_window")})
    net = RWKVSSSUNet(**tiny_kwargs(3))
    ablated = RWKVSSSUNet(**tiny_kwargs(3, use_rwkv=False, upsample="transpose"))
    small, large = net.compute_conv_feature_map_size((8, 12, 8)), net.compute_conv_feature_map_size((16, 24, 16))
    assert large == pytest.approx(8 * small, rel=0.05)
    assert ablated.compute_conv_feature_map_size((16, 24, 16)) == plain.compute_conv_feature_map_size((16, 24, 16))
    with pytest.raises(ValueError, match="divisible"):
        net.compute_conv_feature_map_size((8, 12, 9))
    with pytest.raises(ValueError, match="3 numbers"):
        net.compute_conv_feature_map_size((8, 12))


def test_bad_input_gets_a_clear_error():
    net = RWKVSSSUNet(**tiny_kwargs(3))
    with pytest.raises(ValueError, match="spatial dims.*3D"):
        net(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"not divisible by the strides.*\(4, 4, 4\)"):
        net(torch.randn(1, 1, 8, 12, 10))
    with pytest.raises(ValueError, match="local_window .* larger than global_window"):
        RWKVSSSUNet(**tiny_kwargs(3, local_window=16, global_window=8))
    with pytest.raises(ValueError, match="local_window must be an int or 3 ints"):
        RWKVSSSUNet(**tiny_kwargs(3, local_window=(4, 4)))
    with pytest.raises(ValueError, match="global_window.*>= 1"):
        RWKVSSSUNet(**tiny_kwargs(3, global_window=0, local_window=1))
    with pytest.raises(TypeError, match="window_size"):
        RWKVSSSUNet(**tiny_kwargs(3), window_size=4)
    with pytest.raises(ValueError, match="unknown scan 'zigzag'"):
        RWKVSSSUNet(**tiny_kwargs(3, scan="zigzag"))
    with pytest.raises(ValueError, match="unknown shift"):
        RWKVSSSUNet(**tiny_kwargs(3, shift="left"))
    with pytest.raises(ValueError, match="unknown upsample"):
        RWKVSSSUNet(**tiny_kwargs(3, upsample="nearest"))
    with pytest.raises(ValueError, match="wkv_pool must be a list"):
        RWKVSSSUNet(**tiny_kwargs(3, wkv_pool=2))
    with pytest.raises(ValueError, match="rwkv_depths needs one entry per stage"):
        RWKVSSSUNet(**tiny_kwargs(3, rwkv_depths=[1, 1]))
    with pytest.raises(ValueError, match="strides\\[1\\] must be an int or 3 ints"):
        RWKVSSSUNet(**tiny_kwargs(3, strides=[1, (2, 2), 2]))
    with pytest.raises(ValueError, match="conv_op must be"):
        RWKVSSSUNet(**tiny_kwargs(3, conv_op=nn.Conv1d))
    with pytest.raises(ValueError, match="hidden_ratio"):
        RWKVSSSUNet(**tiny_kwargs(3, hidden_ratio=0))


def test_full_res_wkv_changes_nothing_without_blocks_on_the_pooled_stage():
    """wkv_pool=(2,) pools stage 0 only: with rwkv_first_stage=1 (the protocol's setting) that
    stage has no blocks, so the fullResWKV ablation (wkv_pool=(1,)) trains the same network."""
    x = torch.randn(1, 1, 16, 16, 16)
    outputs = []
    for pool in ((2,), (1,)):
        torch.manual_seed(0)
        net = RWKVSSSUNet(**tiny_kwargs(3, rwkv_first_stage=1, wkv_pool=pool))
        net.apply(net.initialize)
        with torch.no_grad():
            outputs.append(net(x))
    for a, b in zip(*outputs):
        assert torch.equal(a, b)
    with_blocks = []  # where stage 0 has blocks, the pool does change the network
    for pool in ((2,), (1,)):
        torch.manual_seed(0)
        net = RWKVSSSUNet(**tiny_kwargs(3, rwkv_first_stage=0, wkv_pool=pool))
        net.apply(net.initialize)
        with torch.no_grad():
            with_blocks.append(net(x)[0])
    assert not torch.equal(*with_blocks)
