"""nnunet_sss.measure.measure_network: the numbers it returns are the network's, for any network."""
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_sss import RWKVSSSUNet
import nnunet_sss.network.block as block_module
from nnunet_sss.bench.network import _plain_kwargs, saved_bytes_table
from nnunet_sss.measure import (FORWARD_TIME, GFLOP, OPS, OPS_TIME, STEP_PARTS, forward_breakdown, measure_network,
                                saved_bytes, step_breakdown, whole_batch)

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


# What autograd saves for the step of a bias-free Linear(4, 8) -> ReLU -> Linear(8, 3) on a (5, 4)
# batch that needs no gradient, fp32, then cross-entropy (measure._loss):
X_BYTES = 5 * 4 * 4        # the first matmul keeps its input for its weight's gradient
RELU_BYTES = 5 * 8 * 4     # ReLU keeps its output, which the second matmul keeps too: one storage
W2_BYTES = 8 * 3 * 4       # the second matmul keeps its weight for the input's gradient: a parameter
LOSS_BYTES = 5 * 3 * 4 + 5 * 8 + 4  # log-softmax output, int64 targets, nll's total weight


class _Chain(nn.Module):
    def __init__(self, checkpointed=False):
        super().__init__()
        self.first, self.second = nn.Linear(4, 8, bias=False), nn.Linear(8, 3, bias=False)
        self.rest = nn.Sequential(nn.ReLU(), self.second)
        self.checkpointed = checkpointed

    def forward(self, x):
        h = self.first(x)
        return checkpoint(self.rest, h, use_reentrant=False) if self.checkpointed else self.rest(h)


def test_saved_bytes_of_a_linear_relu_chain():
    saved = saved_bytes(_Chain(), torch.randn(5, 4))
    assert saved.forward == saved.peak == X_BYTES + RELU_BYTES + LOSS_BYTES
    assert saved.parameters == W2_BYTES


def test_saved_bytes_see_checkpoint_recomputation():
    """Checkpointed, the forward keeps the region's input (the first matmul's output) instead of the
    ReLU output; in backward the recomputed ReLU output is held while that input still is."""
    saved = saved_bytes(_Chain(checkpointed=True), torch.randn(5, 4))
    h_bytes = 5 * 8 * 4
    assert saved.forward == X_BYTES + h_bytes + LOSS_BYTES
    assert saved.peak == X_BYTES + h_bytes + RELU_BYTES
    assert saved.parameters == W2_BYTES


class _TwoViews(nn.Module):
    """e = exp(x * w) is saved by exp, and twice more, as two overlapping slices, by the product."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x):
        e = (x * self.w).exp()
        return e[:, :3] * e[:, 1:]


def test_saved_bytes_count_a_storage_once():
    saved = saved_bytes(_TwoViews(), torch.randn(5, 4))
    assert saved.forward == X_BYTES + 5 * 4 * 4 + LOSS_BYTES  # x for w's gradient, e once, the loss
    assert saved.parameters == 0


def test_whole_batch_rebuilds_the_whole_batch_on_the_cpu():
    x = torch.empty(1).expand(8, 64, 64, 64, 4)  # 2^20 elements per sample: the CPU splits the rebuild
    assert block_module.micro_batch_size(x) < 8
    with whole_batch():
        assert block_module.micro_batch_size(x) == 8
    assert block_module.micro_batch_size(x) < 8


def test_saved_bytes_table_compares_both_networks():
    """PlainConvUNet keeps everything in its forward; RWKV-SSS's checkpointed layers add their
    recomputation in backward, so its peak exceeds what its forward holds."""
    plan = _plain_kwargs(2, [8, 16], [1, 2], 2, (16, 16))
    rows = saved_bytes_table("tiny", plan, dict(local_window=4, global_window=8), "cpu")
    forward, peak = rows["saved for backward, end of forward"], rows["saved for backward, peak (with recomputation)"]
    assert forward["PlainConvUNet"] == peak["PlainConvUNet"] > 0
    assert peak["RWKV-SSS"] > forward["RWKV-SSS"] > 0
    assert rows["live tensors, peak"]["RWKV-SSS"] > 0 and rows["parameters saved (apart)"]["PlainConvUNet"] > 0


def test_forward_breakdown_sorts_an_inference_forward_by_kind_of_op():
    """An eval forward (a predictor's tile): named parts adding up to the ops' time, each network's
    ops where they belong, the forward timed on its own, the ops dispatched counted."""
    kwargs = tiny_kwargs(2)
    plain_kwargs = {k: v for k, v in kwargs.items() if k not in ("local_window", "global_window")}
    plain = forward_breakdown(PlainConvUNet(**plain_kwargs), (1, 16, 16), 1, repeats=3)
    net = RWKVSSSUNet(**kwargs).train()
    ours = forward_breakdown(net, (1, 16, 16), 1, repeats=3)
    assert not net.training  # measured as the predictor runs it
    for parts in (plain, ours):
        assert list(parts) == [name for name, _ in STEP_PARTS] + [OPS_TIME, FORWARD_TIME, OPS, GFLOP]
        assert abs(sum(parts[name] for name, _ in STEP_PARTS) - parts[OPS_TIME]) < 1e-6
        assert parts["convolutions"] > 0 and parts[FORWARD_TIME] > 0
    assert plain["Bi-WKV"] == 0 and ours["Bi-WKV"] > 0 and ours["matmuls"] > plain["matmuls"]
    assert 0 < plain[OPS] < ours[OPS]
    reference = PlainConvUNet(**plain_kwargs).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        reference(torch.randn(1, 1, 16, 16))
    assert plain[GFLOP] == pytest.approx(counter.get_total_flops() / 1e9) and plain[GFLOP] > 0
    assert ours[GFLOP] > 0
