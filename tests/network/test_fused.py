"""Hand-written forward/backward pieces against their plain-autograd references."""
import pytest
import torch

from nnunet_sss.network.fused import (gate_project, gate_project_reference, shift_mix_project,
                                      shift_mix_project_reference, squared_relu_gate, squared_relu_gate_reference)
from nnunet_sss.network.pool import avg_pool_tokens
from nnunet_sss.network.shift import shift_starts


def _compare(fast, ref, inputs):
    out_fast, out_ref = fast(*inputs), ref(*inputs)
    out_fast = out_fast if isinstance(out_fast, tuple) else (out_fast,)
    out_ref = out_ref if isinstance(out_ref, tuple) else (out_ref,)
    for a, b in zip(out_fast, out_ref):
        torch.testing.assert_close(a, b)
    grads = [torch.randn_like(o) for o in out_ref]
    g_fast = torch.autograd.grad(out_fast, inputs, grads)
    g_ref = torch.autograd.grad(out_ref, inputs, grads)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b)


def _t(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("size,window,pool", [((6, 4), (4, 2), (2, 2)), ((4, 6, 2), (2, 4, 2), (2, 2, 1)),
                                              ((5, 3, 4), (4, 2, 4), (1, 1, 1))])
def test_shift_mix_project(size, window, pool):
    z = _t(2, *size, 7)
    full = [(_t(5, 7), _t(7)), (_t(9, 7), _t(7))]
    low = [(_t(7, 7), _t(7)), (_t(6, 7), _t(7))]
    starts = shift_starts(size, window, pool)
    params = [t for pair in (*full, *low) for t in pair]

    def fast(z, *p):
        return shift_mix_project(z, starts, pool, full=[p[0:2], p[2:4]], low=[p[4:6], p[6:8]])

    def reference(z, *p):
        return shift_mix_project_reference(z, starts, pool, 2, *p)

    _compare(fast, reference, (z, *params))


@pytest.mark.parametrize("size,pool", [((6, 4), (2, 2)), ((4, 6, 2), (2, 3, 1)), ((5, 3), (1, 1))])
def test_gate_project(size, pool):
    pooled = tuple(s // p for s, p in zip(size, pool))
    r, y, w_o = _t(2, *size, 5), _t(2, *pooled, 5), _t(4, 5)
    _compare(lambda *a: gate_project(*a, pool), lambda *a: gate_project_reference(*a, pool), (r, y, w_o))


def test_squared_relu_gate():
    k, r, w_v = _t(2, 3, 5, 4, 10), _t(2, 3, 5, 4, 6), _t(6, 10)
    _compare(squared_relu_gate, squared_relu_gate_reference, (k, r, w_v))


def test_pooling_divisible_and_not():
    x = _t(2, 6, 4, 3)
    torch.testing.assert_close(avg_pool_tokens(x, (2, 2)),
                               torch.nn.functional.avg_pool2d(x.movedim(-1, 1), 2).movedim(1, -1))
    torch.autograd.gradcheck(lambda t: avg_pool_tokens(t, (2, 2)), (x,))
    odd = avg_pool_tokens(_t(1, 5, 3, 2), (2, 2))
    assert odd.shape == (1, 3, 2, 2)


def test_fused_pieces_under_fp16_autocast():
    z = torch.randn(2, 8, 4, 6, 16, requires_grad=True)
    w_r, w_k, w_o = (torch.randn(16, 16, requires_grad=True) for _ in range(3))
    mix = torch.rand(16, requires_grad=True)
    w_v = torch.randn(16, 24, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        r, k = shift_mix_project(z, shift_starts((8, 4, 6), (2, 1, 3), (2, 2, 2)), (2, 2, 2),
                                 full=[(w_r, mix)], low=[(w_k, mix)])
        out = gate_project(r, k.float(), w_o, (2, 2, 2))
        tail = squared_relu_gate(torch.cat([out, out[..., :8]], -1), r, w_v)
    assert r.dtype == torch.float16 and tail.dtype == torch.float16
    tail.float().sum().backward()
    for t in (z, w_r, w_k, w_o, w_v, mix):
        assert t.grad is not None and t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all()
