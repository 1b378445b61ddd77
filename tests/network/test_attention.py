"""The WKV weight maps (nnunet_sss.network.attention) against brute force.

Brute force: the weight token j gets in the layer's output at the query is what the layer's own
pipeline gives at the query for the value map that is 1 at j and 0 elsewhere: pooled as the
layer pools, scanned, through the float64 reference operator with the captured keys, merged with
the scan weights and repeated back to full resolution. Then the maps against the real layer:
weights x the layer's full-resolution values = its merged WKV output at the query.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from nnunet_sss.kernels.reference import bi_wkv_reference
from nnunet_sss.network.attention import WKVProbe, attention_maps, layer_weights, spatial_mixes, to_input_grid
from nnunet_sss.network.pool import avg_pool_tokens, repeat_tokens
from nnunet_sss.network.scan import scan, sequence_lengths, unscan
from nnunet_sss.network.shift import shift_starts, window_shift
from nnunet_sss.network.unet import RWKVSSSUNet

from network_cases import tiny_kwargs

# (dims, input size, options): windows that do not divide the maps (padded sequences), pools that
# divide (stage 0) and do not (stage 1: a 3-pool of 10 x 14 tokens leaves partial cells)
CASES = {
    "2d": (2, (20, 28), dict(local_window=3, global_window=5, wkv_pool=(2, 3))),
    "2d-no-pool": (2, (12, 20), dict(local_window=3, global_window=5, wkv_pool=(1,))),
    "3d": (3, (8, 16, 12), dict(local_window=2, global_window=3, wkv_pool=(2, 3))),
    # the per-token decay: the operator gets w' T and u T (T the longest window), divides by the real length
    "2d-token-decay": (2, (12, 20), dict(local_window=3, global_window=5, wkv_pool=(1,), wkv_decay="token")),
}


def _network(case):
    n_dims, size, options = CASES[case]
    torch.manual_seed(0)
    net = RWKVSSSUNet(**tiny_kwargs(n_dims, deep_supervision=False, **options))
    with torch.no_grad():  # spread the WKV parameters so that decay, bonus and order weights all matter
        for _, mix in spatial_mixes(net):
            mix.decay.normal_(0, 3)
            mix.bonus.normal_(0, 3)
            mix.scan_logits.normal_(0, 1)
    x = torch.randn(1, 1, *size)
    return net.eval(), x


def _probe_all(net, x):
    probes = [WKVProbe(mix) for _, mix in spatial_mixes(net)]
    with torch.no_grad():
        net(x)
    for probe in probes:
        probe.close()
    return [(probe.module, probe.inputs) for probe in probes]


def brute_force(inputs):
    """(*size, C, *size): weight of each full-resolution token (last axes) at each token (first
    axes), per channel, from one-hot values."""
    size, pool, plan = inputs.size, inputs.pool, inputs.plan
    channels, n_tokens = inputs.keys.shape[-1], math.prod(size)
    values = torch.eye(n_tokens, dtype=torch.float64).view(n_tokens, *size, 1).expand(
        n_tokens, *size, channels).contiguous()
    if math.prod(pool) > 1:
        values = avg_pool_tokens(values, pool)
    values = scan(values.reshape(n_tokens, -1, channels), plan)
    keys = inputs.keys.repeat(n_tokens, 1, 1)
    y = bi_wkv_reference(keys, values, inputs.decay, inputs.bonus, lengths=sequence_lengths(plan, n_tokens))
    weights = None if plan.n_orders == 1 else inputs.scan_weights
    merged = unscan(y, plan, weights).view(n_tokens, *plan.map_size, channels)
    if math.prod(pool) > 1:
        merged = repeat_tokens(merged, pool, size)
    return merged.movedim(0, -1).reshape(*size, channels, *size)


def _queries(size):
    """The first, the last and a middle token of the map."""
    return [tuple(0 for _ in size), tuple(s - 1 for s in size), tuple(s // 2 for s in size)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_maps_equal_brute_force_and_are_partitions(case):
    net, x = _network(case)
    checked = 0
    for mix, inputs in _probe_all(net, x):
        expected = brute_force(inputs)
        for token in _queries(inputs.size):
            got = layer_weights(inputs, token)
            torch.testing.assert_close(got.weights, expected[token], rtol=1e-9, atol=1e-12)
            # a distribution over the partition, per channel (the layer's scan weights are a float32
            # softmax: they sum to 1 within its rounding), exactly 0 outside it
            torch.testing.assert_close(got.weights.sum(tuple(range(1, got.weights.dim()))),
                                       torch.ones(got.weights.shape[0], dtype=torch.float64), rtol=0, atol=1e-6)
            assert torch.all(got.weights[:, ~got.partition] == 0)
            assert torch.all(got.weights[:, got.partition] > 0)
            assert got.partition[token]
            checked += 1
    assert checked == 3 * 2 * 3  # three queries, two layers per stage, three stages


def test_partition_is_the_window_at_full_resolution():
    """2d, stage 0: 20 x 28 tokens, WKV on 10 x 14 (pool 2), global windows 5 x (5, 5, 4): the
    query (0, 0)'s partition is the first 10 x 10 voxels; (19, 27)'s the last 10 x 8."""
    net, x = _network("2d")
    (_, inputs), _ = _probe_all(net, x)[:2]
    assert inputs.size == (20, 28) and inputs.pool == (2, 2)
    first = layer_weights(inputs, (0, 0)).partition
    last = layer_weights(inputs, (19, 27)).partition
    expected_first, expected_last = torch.zeros(20, 28, dtype=torch.bool), torch.zeros(20, 28, dtype=torch.bool)
    expected_first[:10, :10] = True
    expected_last[10:, 20:] = True
    assert torch.equal(first, expected_first) and torch.equal(last, expected_last)


@pytest.mark.parametrize("case", sorted(CASES))
def test_maps_reproduce_the_layers_wkv_output(case):
    """Weights x the layer's full-resolution values (token shift, mix, value projection) = the
    merged WKV output the layer normalises next, at the query's (pooled) token."""
    net, x = _network(case)
    mixes = [mix for _, mix in spatial_mixes(net)]
    seen = {}
    hooks = []
    for i, mix in enumerate(mixes):
        hooks.append(mix.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("in", i), a[0].clone())))
        hooks.append(mix.norm.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(("wkv", i), a[0].clone())))
    probed = _probe_all(net, x)
    for h in hooks:
        h.remove()
    for i, (mix, inputs) in enumerate(probed):
        z = seen[("in", i)]
        shifted = window_shift(z, shift_starts(inputs.size, *mix.shift_windows()))
        values = F.linear(mix.mix_v * z + (1 - mix.mix_v) * shifted, mix.value.weight)[0]  # (*size, C)
        for token in _queries(inputs.size):
            weights = layer_weights(inputs, token).weights.float()
            got = (weights * values.movedim(-1, 0)).sum(tuple(range(1, weights.dim())))
            low = tuple(t // p for t, p in zip(token, inputs.pool))
            torch.testing.assert_close(got, seen[("wkv", i)][(0, *low)], rtol=1e-4, atol=1e-5)


def test_attention_maps_cover_every_layer_and_map_back_to_the_input():
    net, x = _network("2d")
    voxel = (13, 22)
    maps = attention_maps(net, x, voxel)
    assert [(m.stage, m.block, m.layer) for m in maps] == [(s, 0, kind) for s in range(3) for kind in ("global", "local")]
    assert all(mix.wkv_probe is None and not mix._forward_pre_hooks for _, mix in spatial_mixes(net))
    assert not net.training
    for m in maps:
        assert m.map.token == tuple(v // s for v, s in zip(voxel, m.stride))
        image = to_input_grid(m.map.weights.mean(0), m.stride)
        assert image.shape == x.shape[2:]
        assert image[voxel] == m.map.weights.mean(0)[m.map.token]
        assert to_input_grid(m.map.partition, m.stride)[voxel]
    assert maps[2].stride == (2, 2) and maps[4].stride == (4, 4)


def test_attention_maps_name_bad_input():
    net, x = _network("2d")
    with pytest.raises(ValueError, match="outside the input"):
        attention_maps(net, x, (20, 0))
    for options in (dict(use_rwkv=False), dict(wkv_mixer="mean")):
        with pytest.raises(ValueError, match="no Bi-WKV layer"):
            attention_maps(RWKVSSSUNet(**tiny_kwargs(2, **options)), x, (0, 0))
