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


# Under fp16 autocast every value and gradient is within this fraction of its tensor's largest
# magnitude of the fp32 reference: about ten fp16 roundings (eps 9.8e-4) through the chain of
# projections; the worst seen over five seeds was 2.6e-3. A wrong value is off by O(1).
FP16_TOLERANCE = 1e-2


def _scale_error(x, reference):
    return ((x.float() - reference).abs().max() / reference.abs().max()).item()


def _chain(leaves, fused, autocast):
    """shift_mix_project -> gate_project -> squared_relu_gate (fused or reference), forward and
    backward with a fixed cotangent: (r, output, gradients of the leaves)."""
    z, w_r, w_k, w_o, mix, w_v = (t.detach().clone().requires_grad_() for t in leaves)
    starts, pool = shift_starts((8, 4, 6), (2, 1, 3), (2, 2, 2)), (2, 2, 2)
    with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
        if fused:
            r, k = shift_mix_project(z, starts, pool, full=[(w_r, mix)], low=[(w_k, mix)])
            out = gate_project(r, k.float(), w_o, pool)
            tail = squared_relu_gate(torch.cat([out, out[..., :8]], -1), r, w_v)
        else:
            r, k = shift_mix_project_reference(z, starts, pool, 1, w_r, mix, w_k, mix)
            out = gate_project_reference(r, k.float(), w_o, pool)
            tail = squared_relu_gate_reference(torch.cat([out, out[..., :8]], -1), r, w_v)
    cotangent = torch.randn(tail.shape, generator=torch.Generator().manual_seed(1))
    tail.float().backward(cotangent)
    return r, tail, [t.grad for t in (z, w_r, w_k, w_o, mix, w_v)]


def test_fused_pieces_under_fp16_autocast():
    """Matmuls in fp16, gradients back in each input's dtype, and the values those of the fp32 reference."""
    torch.manual_seed(0)
    leaves = (torch.randn(2, 8, 4, 6, 16), *(torch.randn(16, 16) for _ in range(3)), torch.rand(16),
              torch.randn(16, 24))
    r, tail, grads = _chain(leaves, fused=True, autocast=True)
    assert r.dtype == torch.float16 and tail.dtype == torch.float16
    assert all(g.dtype == torch.float32 for g in grads)
    _, ref_tail, ref_grads = _chain(leaves, fused=False, autocast=False)
    errors = {name: _scale_error(a, b) for name, a, b in
              zip(("out", "z", "w_r", "w_k", "w_o", "mix", "w_v"), (tail, *grads), (ref_tail, *ref_grads))}
    assert max(errors.values()) <= FP16_TOLERANCE, errors
