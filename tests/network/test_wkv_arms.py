"""The switches that isolate what the WKV adds, and the candidate changes to the block: each does
what its name says (values against a brute-force re-statement, not just shapes)."""
import math

import pytest
import torch

from nnunet_sss import RWKVSSSUNet
from nnunet_sss.kernels import bi_wkv
from nnunet_sss.network.block import RWKVLayer, StageScanBlock
from nnunet_sss.network.scan import clip_window, partition, window_starts
from nnunet_sss.network.spatial_mix import TOKEN_RATE_CAP, SpatialMix
from nnunet_sss.network.unet import equal_window_stages
from network_cases import tiny_kwargs


def _window_ids(size, window):
    """Window index of every token of a map (row-major), from the balanced partition."""
    parts = partition(size, clip_window(window, size))
    per_axis = []
    for n, lengths in zip(size, parts):
        ids = torch.zeros(n, dtype=torch.long)
        for i, start in enumerate(window_starts(lengths)):
            ids[start:] = i
        per_axis.append(ids)
    grids = torch.meshgrid(*per_axis, indexing="ij")
    counts = [len(p) for p in parts]
    flat = torch.zeros_like(grids[0])
    for g, c in zip(grids, counts):
        flat = flat * c + g
    return flat.reshape(-1)


@pytest.mark.parametrize("size,window", [((7, 10), (4, 4)), ((5, 6, 7), (2, 4, 3)), ((6, 9), (None, 8))])
def test_mean_mixer_is_the_window_mean_of_v(size, window):
    mix = SpatialMix(5, len(size), window, (1,) * len(size), mixer="mean")
    v = torch.randn(2, math.prod(size), 5, dtype=torch.float64)
    got = mix.mix_tokens(None, v, size)
    ids = _window_ids(size, window)
    expected = torch.empty_like(v)
    for w in ids.unique():
        expected[:, ids == w] = v[:, ids == w].mean(1, keepdim=True)
    torch.testing.assert_close(got, expected)
    assert mix.key is None and mix.decay is None and mix.scan_logits is None  # nothing unused is left


def test_identity_mixer_returns_v_and_no_wkv_parameters():
    mix = SpatialMix(6, 2, (4, 4), (2, 2), mixer="identity")
    v = torch.randn(1, 12, 6)
    assert mix.mix_tokens(None, v, (3, 4)) is v
    names = {n for n, _ in mix.named_parameters()}
    assert names == {"receptance.weight", "value.weight", "output.weight", "norm.weight", "norm.bias",
                     "mix_v", "mix_r"}


def _brute_force_wkv(k, v, w_token, u_token):
    """The design's formula with a per-token decay w' and bonus u' (no division by T), float64."""
    n, t, c = k.shape
    dist = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).abs().to(torch.float64)
    expo = -(dist - 1)[None, :, :, None] * w_token + k[:, None, :, :]
    expo = torch.where(dist[None, :, :, None] == 0, (u_token + k)[:, None, :, :].expand_as(expo), expo)
    weight = torch.softmax(expo, dim=2)
    return (weight * v[:, None, :, :]).sum(2)


@pytest.mark.parametrize("seq_len", [9, 40])
def test_token_decay_acts_per_token_whatever_the_window_length(seq_len):
    mix = SpatialMix(6, 1, (seq_len,), (1,), decay="token").double()
    w, u = mix.wkv_parameters(seq_len)
    torch.manual_seed(0)
    k, v = torch.randn(2, seq_len, 6, dtype=torch.float64), torch.randn(2, seq_len, 6, dtype=torch.float64)
    got = bi_wkv(k, v, w, u)
    expected = _brute_force_wkv(k, v, torch.exp(mix.decay).detach(), mix.bonus.detach())
    torch.testing.assert_close(got, expected, rtol=2e-5, atol=2e-6)  # the CPU kernel sums in fp32
    # graded at init: the first channel decays by e^-1 per token, the last is nearly flat
    rate = torch.exp(mix.decay.detach())
    assert rate[0] == pytest.approx(1.0) and rate[-1] == pytest.approx(1 / 1024)
    assert bool((rate[1:] < rate[:-1]).all())


def test_token_decay_keeps_its_rate_in_long_windows_and_is_capped_per_token():
    """A window of 11,200 tokens (3d stage 0 at the Hippocampus patch) keeps the channels that
    decay by e per token local; a rate pushed past the cap is held there."""
    mix = SpatialMix(4, 1, (None,), (1,), decay="token")
    w, u = mix.wkv_parameters(11_200)
    torch.testing.assert_close(w / 11_200, torch.exp(mix.decay.detach()))
    torch.testing.assert_close(u / 11_200, mix.bonus.detach())
    with torch.no_grad():
        mix.decay[0] = 5.0  # e^5 = 148 per token
    w, _ = mix.wkv_parameters(100)
    assert float(w[0]) == pytest.approx(TOKEN_RATE_CAP * 100) and float(w[1]) < TOKEN_RATE_CAP * 100


def test_layer_scale_scales_each_branch():
    torch.manual_seed(0)
    layer = RWKVLayer(8, 2, (4, 4), (1, 1), 1, "stage", "window", 0, 2, layer_scale=1e-2)
    x = torch.randn(2, 6, 5, 8)
    assert torch.equal(layer.scale1, torch.full((8,), 1e-2))
    with torch.no_grad():
        layer.scale1.zero_()
        layer.scale2.zero_()
        torch.testing.assert_close(layer(x), x)  # silent branches: the layer is the identity
        layer.scale1.fill_(0.5)
        branch = layer.spatial_mix(layer.norm1(x))
        torch.testing.assert_close(layer(x), x + 0.5 * branch)
    x.requires_grad_(True)
    layer(x).sum().backward()
    assert layer.scale2.grad is not None and layer.scale2.grad.abs().sum() > 0


def test_blocks_after_the_convs_keep_every_plans_conv():
    net = RWKVSSSUNet(**tiny_kwargs(2, n_conv_per_stage=[2, 3, 2]), block_placement="after")
    assert [len(stage[0].convs) for stage in net.encoder.stages] == [2, 3, 2]
    replace = RWKVSSSUNet(**tiny_kwargs(2, n_conv_per_stage=[2, 3, 2]))
    assert [len(stage[0].convs) for stage in replace.encoder.stages] == [1, 1, 1]
    assert net(torch.randn(1, 1, 16, 12))[0].shape == (1, 3, 16, 12)


def test_merged_windows_give_one_layer_exactly_where_the_windows_coincide():
    # stages of a 16x16 patch (strides 1, 2, 2): 16x16 (WKV pooled to 8x8), 8x8, 4x4; local 4,
    # global 8: 2x2 windows against one on 8x8, one window each on 4x4; a 4x6 map would give
    # 4x3 local windows against one 4x6 global one
    kwargs = tiny_kwargs(2)
    assert equal_window_stages((16, 16), [(1, 1), (2, 2), (2, 2)], [(2, 2), (1, 1), (1, 1)], (8, 8), (4, 4)) == (2,)
    assert equal_window_stages((16, 24), [(1, 1), (2, 2), (2, 2)], [(2, 2), (1, 1), (1, 1)], (8, 8), (4, 4)) == ()
    net = RWKVSSSUNet(**kwargs, merge_equal_windows=True, patch_size=(16, 16))
    blocks = [m for m in net.modules() if isinstance(m, StageScanBlock)]
    assert [b.local_layer is None for b in blocks] == [False, False, True]
    # a whole-map global window: coincides where the local window covers the map too
    assert equal_window_stages((8, 8), [(1, 1), (2, 2)], [(1, 1), (1, 1)], (None, None), (4, 4)) == (1,)
    outputs = net(torch.randn(2, 1, 16, 16))
    sum(o.square().mean() for o in outputs).backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="patch_size"):
        RWKVSSSUNet(**kwargs, merge_equal_windows=True)


@pytest.mark.parametrize("option,value,match", [("wkv_mixer", "max", "wkv_mixer"), ("wkv_decay", "fast", "wkv_decay"),
                                                ("layer_scale", 0, "layer_scale"), ("layer_scale", True, "layer_scale"),
                                                ("block_placement", "before", "block_placement"),
                                                ("merge_equal_windows", "yes", "merge_equal_windows")])
def test_bad_values_are_named(option, value, match):
    with pytest.raises(ValueError, match=match):
        RWKVSSSUNet(**tiny_kwargs(2), **{option: value})


@pytest.mark.parametrize("n_dims", [2, 3])
def test_no_shift_leaves_each_token_to_itself(n_dims):
    """shift="none" removes the token shift and its mixes: with the identity mixer (no WKV) a whole
    RWKV layer then maps each token by itself; with the shift, neighbours move it."""
    size = (6, 5, 4)[:n_dims]
    x = torch.randn(2, *size, 8, dtype=torch.float64)
    probe = x.clone()
    probe[(0,) + (2,) * n_dims] += 1.0  # one token changed
    changed = {}
    for shift in ("window", "none"):
        torch.manual_seed(0)
        layer = RWKVLayer(8, n_dims, (None,) * n_dims, (1,) * n_dims, 1, "stage", shift, 0, 2,
                          mixer="identity").double()
        assert (layer.spatial_mix.mix_r is None) == (shift == "none") == (layer.channel_mix.mix_k is None)
        with torch.no_grad():
            moved = (layer(probe) - layer(x)).abs().amax(-1) > 0
        changed[shift] = int(moved.sum())
    assert changed["none"] == 1 and changed["window"] > 1
