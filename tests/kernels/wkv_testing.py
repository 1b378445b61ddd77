"""Helpers shared by the Bi-WKV tests: inputs, the error measure, reference and op gradients."""
import functools

import torch

from nnunet_sss.kernels import bi_wkv, bi_wkv_reference

# Backends under test: the CPU ones everywhere, and on a machine with a GPU the same tests again
# for the CUDA ones ("device:backend"; inputs are made on the CPU, moved there, results moved back).
CPU_BACKENDS = ("torch", "cpp")
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
CUDA_BACKENDS = ("cuda:triton", "cuda:torch") if "cuda" in DEVICES else ()
BACKENDS = CPU_BACKENDS + CUDA_BACKENDS
FP32_BACKENDS = tuple(b for b in BACKENDS if not b.endswith("torch"))  # compute in fp32 (not float64)

TOLERANCE = 1e-4  # the bound on the max relative error in fp32
SCALE_FLOOR = 1e-10  # below this a reference tensor is zero up to its own float64 rounding


def max_rel_err(x, ref):
    """max |x - ref| / max(max |ref|, SCALE_FLOOR), over the whole tensor.

    Elementwise relative error means nothing where ref ~ 0 (outputs and gradients cross zero),
    so the error is measured against the tensor's scale. The tests' inputs and cotangents are
    O(1) (or scaled so), so the float64 reference resolves a gradient only down to ~1e-14:
    where the definition makes it vanish (T = 1: y = v, so k, w, u get no gradient; T = 2: no
    w dependence) the reference holds rounding noise, and the floor turns the measure into an
    absolute error there.
    """
    x, ref = x.detach().to(torch.float64), ref.detach().to(torch.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    if x.numel() == 0:
        return 0.0
    err = (x - ref).abs().max().item()
    return err / max(ref.abs().max().item(), SCALE_FLOOR)


def random_inputs(n, t, c, seed, k_range=20.0, w_range=8.0, u_range=4.0, dtype=torch.float32):
    """k uniform in [-k_range, k_range], v standard normal, w and u uniform, grad_y normal."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(shape, bound):
        return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound

    k = uniform((n, t, c), k_range)
    v = torch.randn((n, t, c), generator=gen, dtype=torch.float64)
    w = uniform((c,), w_range)
    u = uniform((c,), u_range)
    grad_y = torch.randn((n, t, c), generator=gen, dtype=torch.float64)
    return tuple(x.to(dtype) for x in (k, v, w, u, grad_y))


def reference_and_grads(k, v, w, u, grad_y, lengths=None):
    """(y, grad k, grad v, grad w, grad u) of the float64 reference, by autograd."""
    leaves = [x.detach().to(torch.float64).requires_grad_() for x in (k, v, w, u)]
    y = bi_wkv_reference(*leaves, lengths)
    grads = torch.autograd.grad(y, leaves, grad_y.to(torch.float64), allow_unused=True)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)]
    return (y.detach(), *grads)


def device_of(backend):
    """"cuda:triton" -> (cuda, "triton"); a plain backend name runs on the CPU."""
    if backend is None:
        return torch.device("cpu"), None
    device, _, name = backend.rpartition(":")
    return torch.device(device or "cpu"), name


def op_and_grads(k, v, w, u, grad_y, lengths=None, backend=None):
    """(y, grad k, grad v, grad w, grad u) of bi_wkv through autograd, in the inputs' dtypes,
    computed on the backend's device and returned on the CPU. Inputs already there (such as
    non-contiguous views made on that device) are used as they are."""
    device, backend = device_of(backend)
    leaves = [x.detach().to(device).clone(memory_format=torch.preserve_format).requires_grad_()
              for x in (k, v, w, u)]
    y = bi_wkv(*leaves, lengths=lengths, backend=backend)
    grads = torch.autograd.grad(y, leaves, grad_y.to(device, y.dtype))
    return tuple(x.detach().cpu() for x in (y, *grads))


@functools.lru_cache(maxsize=None)
def cached_case(n, t, c, seed, k_range=20.0, w_range=8.0):
    """fp32 inputs and their float64 reference results, computed once per test session."""
    k, v, w, u, grad_y = random_inputs(n, t, c, seed, k_range=k_range, w_range=w_range)
    return (k, v, w, u, grad_y), reference_and_grads(k, v, w, u, grad_y)


NAMES = ("y", "grad_k", "grad_v", "grad_w", "grad_u")


def errors(result, reference):
    return {name: max_rel_err(x, ref) for name, x, ref in zip(NAMES, result, reference)}
