"""bench.measure.measure_network: the numbers it returns are the network's, for any network."""
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_sss import RWKVSSSUNet
from nnunet_sss.bench.measure import STEP_PARTS, count_ops, measure_network, step_breakdown

from network_cases import tiny_kwargs


def test_measure_network_on_both_networks():
    kwargs = tiny_kwargs(2)
    plain = PlainConvUNet(**{k: v for k, v in kwargs.items() if k not in ("local_window", "global_window")})
    net = RWKVSSSUNet(**kwargs)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    results = {}
    for name, network in (("plain", plain), ("rwkv", net)):
        m = measure_network(network, (1, 16, 16), 2, steps=2, warmup=1, memory=name == "rwkv")
        results[name] = m
        assert m.params == sum(p.numel() for p in network.parameters())
        assert 0 < m.flops_forward < m.flops_train
        assert len(m.step_times_s) == 2 and m.step_time_s > 0 and m.cpu_time_s > 0
    m = results["rwkv"]
    assert m.memory_method == "profiler_live_tensors" and m.peak_memory_bytes > 0
    assert m.rss_method.startswith("subprocess_") and m.peak_rss_bytes > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # weights left as they were
    # a plain conv net's forward FLOPs: 2 per multiply-add of every conv, counted by the flop counter
    conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
    assert measure_network(conv, (1, 8, 8), 3, memory=False, timing=False).flops_forward == 2 * 9 * 4 * 64 * 3
    assert results["rwkv"].as_dict()["params"] == m.params
    # the live-tensor peak of a conv's forward+backward holds at least its output and the output's gradient
    wide = torch.nn.Conv2d(1, 64, 3, padding=1)
    peak = measure_network(wide, (1, 32, 32), 4, flops=False, timing=False).peak_memory_bytes
    assert peak >= 2 * 4 * 64 * 32 * 32 * 4


def test_count_ops_counts_a_training_step():
    """More layers, more dispatched ops; set-up cached by the first step is not counted twice."""
    kwargs = tiny_kwargs(2)
    plain_kwargs = {k: v for k, v in kwargs.items() if k not in ("local_window", "global_window")}
    plain = count_ops(PlainConvUNet(**plain_kwargs), (1, 16, 16))
    ours = count_ops(RWKVSSSUNet(**kwargs), (1, 16, 16))
    assert 0 < plain < ours
    assert count_ops(RWKVSSSUNet(**kwargs), (1, 16, 16)) == ours


def test_step_breakdown_sorts_a_step_by_kind_of_op():
    """Every part is named, the parts add up to the total, and each network's own ops land where
    they belong: convs in both, the Bi-WKV and the blocks' matmuls only in RWKV-SSS."""
    kwargs = tiny_kwargs(2)
    plain_kwargs = {k: v for k, v in kwargs.items() if k not in ("local_window", "global_window")}
    plain = step_breakdown(PlainConvUNet(**plain_kwargs), (1, 16, 16), 2)
    ours = step_breakdown(RWKVSSSUNet(**kwargs), (1, 16, 16), 2)
    for parts in (plain, ours):
        assert list(parts) == [name for name, _ in STEP_PARTS] + ["total"]
        assert abs(sum(v for k, v in parts.items() if k != "total") - parts["total"]) < 1e-6
        assert parts["convolutions"] > 0
    assert plain["Bi-WKV"] == 0 and ours["Bi-WKV"] > 0
    assert ours["matmuls"] > plain["matmuls"]
