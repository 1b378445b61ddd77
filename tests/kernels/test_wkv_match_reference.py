"""Every backend (CPU; CUDA too where there is a GPU) against the float64 reference: outputs and all four gradients, in fp32.

Grid of the issue: T in {1, 2, 3, 7, 64, 257, 1000}, C in {1, 3, 32, 96}, N in {1, 5},
w in [-8, 8], u in [-4, 4], k in [-20, 20]; max relative error (wkv_testing.max_rel_err)
at most 1e-4 for y, grad k, grad v, grad w and grad u.
"""
import pytest
import torch

from nnunet_sss.kernels import bi_wkv
from wkv_testing import BACKENDS, FP32_BACKENDS, TOLERANCE, cached_case, device_of, errors, op_and_grads


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 5])
@pytest.mark.parametrize("c", [1, 3, 32, 96])
@pytest.mark.parametrize("t", [1, 2, 3, 7, 64, 257, 1000])
def test_matches_float64_reference(t, c, n, backend):
    (k, v, w, u, grad_y), reference = cached_case(n, t, c, seed=1000 * t + 10 * c + n)
    errs = errors(op_and_grads(k, v, w, u, grad_y, backend=backend), reference)
    assert max(errs.values()) <= TOLERANCE, errs


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_gradcheck(backend):
    """Autograd against finite differences. 'torch' computes in float64, so the check is tight;
    'cpp' and 'triton' compute in fp32, so finite differences take fp32-sized steps and bounds."""
    device, name = device_of(backend)
    gen = torch.Generator().manual_seed(3)
    n, t, c = 3, 6, 4
    k = (torch.rand(n, t, c, generator=gen, dtype=torch.float64) * 4 - 2).requires_grad_()
    v = torch.randn(n, t, c, generator=gen, dtype=torch.float64).requires_grad_()
    w = (torch.rand(c, generator=gen, dtype=torch.float64) * 4 - 2).requires_grad_()
    u = (torch.rand(c, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    lengths = torch.tensor([6, 4, 1])
    k, v, w, u = (x.detach().to(device).requires_grad_() for x in (k, v, w, u))

    def fn(k, v, w, u):
        return bi_wkv(k, v, w, u, lengths=lengths, backend=name)

    if name == "torch":
        assert torch.autograd.gradcheck(fn, (k, v, w, u))
    else:
        assert torch.autograd.gradcheck(fn, (k, v, w, u), eps=1e-3, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("backend", FP32_BACKENDS)
@pytest.mark.parametrize("c", [13, 77, 136])
def test_channel_blocks_with_a_partial_vector(c, backend):
    """Channel counts beyond the grid's: the C++ kernel works on blocks of 64 channels in
    vectors of 8 (AVX2) or 16 (AVX-512) lanes, the Triton kernel in blocks of its own; these
    end a block with a partial vector after full ones (77 = 64 + 8 + 5), a lone partial one
    (13) or full ones only (136 = 2 x 64 + 8), so every load and store path meets every other."""
    (k, v, w, u, grad_y), reference = cached_case(2, 50, c, seed=c)
    errs = errors(op_and_grads(k, v, w, u, grad_y, backend=backend), reference)
    assert max(errs.values()) <= TOLERANCE, errs
