"""Extreme inputs, degenerate sizes, strided inputs, half precision and autocast."""
import pytest
import torch

from nnunet_sss.kernels import bi_wkv
from wkv_testing import (BACKENDS, FP32_BACKENDS, TOLERANCE, device_of, errors, max_rel_err, op_and_grads,
                         random_inputs, reference_and_grads)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("w_mode", ["+50", "-50", "uniform"])
@pytest.mark.parametrize("t", [2, 7, 100])
def test_extreme_keys_and_decay(t, w_mode, backend):
    """k in [-1000, 1000], |w| up to 50: finite outputs equal to the stably computed reference
    (max relative error 1e-4), finite gradients within 1e-3 of it.

    Here one or two tokens dominate each weighted average and the k, w, u gradients are
    covariances under those weights, i.e. differences of nearly equal terms: evaluating the
    definition itself by autograd in fp32 errs by up to ~1e-4 on them, so fp32 kernels get a
    looser bound on the gradients (the outputs keep the strict one).
    """
    k, v, w, u, grad_y = random_inputs(3, t, 8, seed=t, k_range=1000.0, w_range=50.0)
    if w_mode != "uniform":
        w = torch.full_like(w, float(w_mode))
    lengths = torch.tensor([t, max(1, t // 2), 1])
    result = op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend=backend)
    assert all(torch.isfinite(x).all() for x in result)
    errs = errors(result, reference_and_grads(k, v, w, u, grad_y, lengths))
    assert errs.pop("y") <= TOLERANCE
    assert max(errs.values()) <= 10 * TOLERANCE, errs


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_decay_of_several_per_token_over_long_sequences(backend):
    """The per-token decay of the spatial mix's "token" mode hands the operator w' T with w' up to
    TOKEN_RATE_CAP: |w| far above 700 over sequences longer than the O(T) path's re-weighting
    blocks, padded ones among them. Outputs and gradients match the reference, none overflow."""
    t = 150
    k, v, _, u, grad_y = random_inputs(3, t, 6, seed=5, k_range=4.0)
    w = torch.tensor([0.01, 0.5, 1.0, 3.0, 8.0, 8.0]) * t  # per token 0.01 .. 8 on a full sequence
    lengths = torch.tensor([t, 70, 1])
    result = op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend=backend)
    assert all(torch.isfinite(x).all() for x in result)
    errs = errors(result, reference_and_grads(k, v, w, u, grad_y, lengths))
    assert errs.pop("y") <= TOLERANCE
    assert max(errs.values()) <= 10 * TOLERANCE, errs


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_token_returns_v(backend):
    """T = 1: the only weight is the bonus term, so y = v whatever k, w, u are."""
    k, v, w, u, grad_y = random_inputs(4, 1, 5, seed=1, k_range=1000.0, w_range=50.0)
    y, grad_k, grad_v, grad_w, grad_u = op_and_grads(k, v, w, u, grad_y, backend=backend)
    assert torch.allclose(y, v, rtol=1e-6, atol=0)
    assert torch.allclose(grad_v, grad_y, rtol=1e-6, atol=0)
    for g in (grad_k, grad_w, grad_u):
        assert g.abs().max() <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 7, 3), (2, 0, 3), (2, 5, 0)])
def test_empty_batch_shapes(shape, backend):
    """N = 0 (and empty T or C): the right shapes, zero gradients, no error."""
    device, backend = device_of(backend)
    k = torch.randn(shape, requires_grad=True, device=device)
    v = torch.randn(shape, requires_grad=True, device=device)
    w = torch.randn(shape[2], requires_grad=True, device=device)
    u = torch.randn(shape[2], requires_grad=True, device=device)
    y = bi_wkv(k, v, w, u, backend=backend)
    assert y.shape == shape
    y.sum().backward()
    assert k.grad.shape == shape and v.grad.shape == shape
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(u.grad, torch.zeros_like(u))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """Transposed, sliced and expanded views give the same result as contiguous copies."""
    device = device_of(backend)[0]
    gen = torch.Generator().manual_seed(5)
    k = torch.randn(6, 40, 9, generator=gen).to(device).transpose(0, 2)[:, ::2]  # (9, 20, 6), strided
    v = torch.randn(9, 6, 20, generator=gen).to(device).transpose(1, 2)           # (9, 20, 6)
    w = torch.randn(12, generator=gen).to(device)[::2]
    u = torch.randn(1, generator=gen).to(device).expand(6)
    grad_y = torch.randn(9, 20, 6, generator=gen)
    assert not (k.is_contiguous() or v.is_contiguous() or w.is_contiguous() or u.is_contiguous())
    strided = op_and_grads(k, v, w, u, grad_y, backend=backend)
    dense = op_and_grads(k.contiguous(), v.contiguous(), w.contiguous(), u.contiguous(), grad_y, backend=backend)
    for a, b in zip(strided, dense):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype, backend):
    """fp16/bf16 in, fp32 inside, input dtype out: the result is the reference on the rounded
    inputs, rounded once to the dtype (so the error is at the dtype's resolution)."""
    k, v, w, u, grad_y = (x.to(dtype) for x in random_inputs(3, 50, 12, seed=9, k_range=5.0))
    result = op_and_grads(k, v, w, u, grad_y, backend=backend)
    for x, like in zip(result, (v, k, v, w, u)):
        assert x.dtype == like.dtype
    resolution = torch.finfo(dtype).eps
    errs = errors(result, reference_and_grads(k, v, w, u, grad_y))
    assert max(errs.values()) <= 2 * resolution, errs


@pytest.mark.parametrize("backend", BACKENDS)
def test_autocast_does_not_lower_the_scan(backend):
    """Under autocast (CPU: bf16, CUDA: fp16, as nnU-Net) the operator still runs in fp32 on fp32 inputs."""
    device, backend = device_of(backend)
    k, v, w, u, _ = (x.to(device) for x in random_inputs(2, 30, 8, seed=4, k_range=5.0))
    plain = bi_wkv(k, v, w, u, backend=backend)
    with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16):
        under_autocast = bi_wkv(k, v, w, u, backend=backend)
    assert under_autocast.dtype == torch.float32
    assert torch.equal(plain, under_autocast)


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_backends_agree_on_long_sequences(backend):
    """T well past any chunk size (and w near 0, where the decay is slowest): the fused fp32
    scans keep fp32 precision against the float64 op chain."""
    k, v, w, u, grad_y = random_inputs(2, 20000, 16, seed=11, k_range=3.0, w_range=0.5)
    fused = op_and_grads(k, v, w, u, grad_y, backend=backend)
    exact = op_and_grads(*(x.double() for x in (k, v, w, u, grad_y)), backend="torch")
    errs = {name: max_rel_err(a, b) for name, a, b in zip(("y", "k", "v", "w", "u"), fused, exact)}
    assert max(errs.values()) <= TOLERANCE, errs
