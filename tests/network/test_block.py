"""Stage-Scan block pieces: a window gives what its tokens give alone; fp32 WKV under autocast."""
import pytest
import torch

import nnunet_sss.network.block as block_module
import nnunet_sss.network.spatial_mix as spatial_mix_module
from nnunet_sss.network.block import RWKVLayer, StageScanBlock, micro_batch_size

from test_shift import _windows


def _crop(x, starts, sizes):
    for axis, (a, n) in enumerate(zip(starts, sizes)):
        x = x.narrow(axis + 1, a, n)
    return x


def _layer(n_dims, window, pool, scan_mode="stage", channels=12):
    torch.manual_seed(0)
    layer = RWKVLayer(channels, n_dims, window, pool, hidden_ratio=2, scan_mode=scan_mode, shift_mode="window",
                      layer_id=1, n_layers=4)
    with torch.no_grad():  # break the init's symmetries so that a leak would show
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return layer.double()


@pytest.mark.parametrize("size,window,pool", [
    ((7, 6), (4, 4), (1, 1)),           # border windows of 3x4, 4x2, 3x2 tokens
    ((7, 12), (2, 4), (2, 2)),          # pooled WKV, map not divisible by the pool
    ((8, 12), (2, 2), (2, 2)),          # pooled WKV, fused path
    ((5, 6, 4), (4, 4, 2), (1, 1, 1)),
    ((6, 5, 8), (2, 2, 2), (2, 2, 2)),
    ((8, 4, 12), (2, 2, 4), (2, 2, 1)),
])
def test_each_window_equals_its_tokens_alone(size, window, pool):
    layer = _layer(len(size), window, pool)
    x = torch.randn(2, *size, 12, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    for origin, sizes in _windows(size, window, pool):
        alone_in = _crop(x.detach(), origin, sizes).contiguous().requires_grad_()
        alone = layer(alone_in)
        torch.testing.assert_close(_crop(out, origin, sizes), alone)
        # and the gradient of a loss on this window reaches only this window's tokens, as alone
        g = torch.randn_like(alone)
        (grad_full,) = torch.autograd.grad(_crop(out, origin, sizes), x, g, retain_graph=True)
        (grad_alone,) = torch.autograd.grad(alone, alone_in, g)
        torch.testing.assert_close(_crop(grad_full, origin, sizes), grad_alone)
        mask = torch.ones_like(grad_full, dtype=torch.bool)
        _crop(mask, origin, sizes).fill_(False)
        assert grad_full.masked_select(mask).abs().max() == 0


def test_global_shift_does_cross_windows():
    layer = _layer(2, (4, 4), (1, 1))
    layer.spatial_mix.shift_mode = "global"
    layer.channel_mix.shift_windows = (None, None)
    x = torch.randn(1, 8, 8, 12, dtype=torch.float64)
    out = layer(x)
    alone = layer(x[:, :4, :4].contiguous())
    assert not torch.allclose(out[:, :4, :4], alone)


@pytest.mark.parametrize("n_dims", [2, 3])
def test_scan_orders_merge_with_learned_weights(n_dims):
    layer = _layer(n_dims, (4,) * n_dims, (1,) * n_dims)
    mix = layer.spatial_mix
    assert mix.scan_logits.shape == (n_dims,)
    assert abs(mix.scan_weights().sum().item() - 1) < 1e-12
    layer(torch.randn(1, *(5,) * n_dims, 12, dtype=torch.float64)).square().sum().backward()
    assert mix.scan_logits.grad.abs().sum() > 0
    raster = _layer(n_dims, (4,) * n_dims, (1,) * n_dims, scan_mode="raster")
    assert raster.spatial_mix.scan_logits is None


def test_wkv_and_merge_run_in_fp32_under_fp16_autocast(monkeypatch):
    """Under fp16 autocast the WKV gets fp32 inputs, and the block computes what it computes in
    fp32: its contribution (output minus the residual input), the gradient that flows through it
    and every parameter's gradient within 1e-2 of the tensor's scale (fp16 matmuls; at most 2e-3
    seen over three seeds; a wrong value is off by O(1)). Inputs of magnitude 100 would overflow
    an fp16 WKV."""
    seen = []

    def spy(k, v, w, u, **kw):
        seen.append((k.dtype, v.dtype))
        return real(k, v, w, u, **kw)

    real = spatial_mix_module.bi_wkv
    monkeypatch.setattr(spatial_mix_module, "bi_wkv", spy)
    torch.manual_seed(0)
    block = StageScanBlock(16, 3, (8, 8, 8), (4, 4, 4), (2, 2, 2), 2, "stage", "window", 0, 2)
    x0 = 100 * torch.randn(2, 8, 8, 6, 16)
    cotangent = torch.randn(x0.shape)
    results = {}
    for autocast in (False, True):
        seen.clear()
        block.zero_grad()
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
            out = block(x)
        out.float().backward(cotangent)
        results[autocast] = [(out.float() - x0).detach(), x.grad - cotangent, *(p.grad for p in block.parameters())]
        assert seen and all(d == (torch.float32, torch.float32) for d in seen)
    errors = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(results[True], results[False])]
    assert all(b.abs().max() > 0 for b in results[False])
    assert max(errors) <= 1e-2, errors


@pytest.mark.parametrize("batch,min_elements,chunks", [(1, 2 ** 20, 1), (3, 1, 3), (6, 1, 3)])
def test_checkpoint_changes_nothing_but_memory(batch, min_elements, chunks, monkeypatch):
    """Whole or in micro-batches (3 of 1 sample, 3 of 2), the recomputation gives the same values
    and gradients as the layer without checkpointing."""
    monkeypatch.setattr(block_module, "MICRO_BATCH_MIN_ELEMENTS", min_elements)
    layer = _layer(3, (4, 4, 4), (2, 2, 2))
    x = torch.randn(batch, 6, 8, 4, 12, dtype=torch.float64, requires_grad=True)
    assert -(-batch // micro_batch_size(x)) == chunks
    out = layer(x)
    grads = torch.autograd.grad(out.square().sum(), [x, *layer.parameters()])
    layer.checkpoint = True
    out_ckpt = layer(x)
    grads_ckpt = torch.autograd.grad(out_ckpt.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(out_ckpt, out)
    # the operator sums the decay and bonus gradients over its sequences in fp32 chunks: split
    # into several calls, those sums round differently (~1e-7), nothing else does
    for a, b in zip(grads_ckpt, grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_micro_batches_stay_whole_kernels_and_few():
    def size(*shape):
        return micro_batch_size(torch.empty(shape, device="meta"))

    assert size(9, 40, 56, 40, 32) == 3      # Hippocampus 3d stage 0 at batch 9: 3 micro-batches of 3
    assert size(9, 10, 14, 10, 128) == 6     # stage 2: 179k elements a sample, 2 micro-batches
    assert size(2, 20, 28, 20, 64) == 2      # 717k elements a sample at batch 2: not split
    assert size(366, 56, 40, 32) == 92       # at most 4 micro-batches
    assert len(torch.empty(0, 4, 4, 8).split(size(0, 4, 4, 8))) == 1


def test_gpu_rebuilds_the_whole_batch(monkeypatch):
    """Where launches bound the step (CUDA), the rebuild is not split: one micro-batch per layer."""
    monkeypatch.setattr(block_module, "WHOLE_BATCH_DEVICES", ("meta",))
    assert micro_batch_size(torch.empty(9, 40, 56, 40, 32, device="meta")) == 9
    assert micro_batch_size(torch.empty(0, 4, 4, 8, device="meta")) == 1
    assert micro_batch_size(torch.empty(9, 40, 56, 40, 32)) == 3  # the CPU still splits
