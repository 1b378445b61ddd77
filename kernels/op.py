"""`bi_wkv`: the one entry point, a torch.library custom op with autograd and fake kernels.

torch.compile sees two opaque ops (forward, backward), so a module calling `bi_wkv` compiles
with no graph break. The backend is picked at run time inside the op, from the device:

    "cpp"     fused C++ scan (kernels/csrc), the CPU default; built on first use and cached
    "triton"  Triton kernels, the CUDA default
    "torch"   chain of PyTorch ops in float64 (kernels/torch_scan.py); any device; the
              fallback when the other two are unavailable (with one warning)

Inputs may be fp16/bf16/fp32 (mixed too); the scan runs in fp32, autocast cannot lower it
(nothing inside the op is autocast-dispatched), and the result has v's dtype. float64 inputs
get float64 results (exact on the 'torch' backend: gradcheck, references).
"""
import functools
import os
import warnings
from typing import Optional

import torch
from torch import Tensor

from . import torch_scan

BACKENDS = ("torch", "cpp", "triton")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@functools.lru_cache(maxsize=None)
def _cpp_module():
    """The compiled extension, or None (with one warning) where it cannot be built."""
    from . import cpu_ext

    try:
        return cpu_ext.load()
    except Exception as err:  # no compiler, broken toolchain: fall back, say so once
        warnings.warn(f"nnunet_sss.kernels: the C++ Bi-WKV extension could not be built ({err}); "
                      "using the slower PyTorch op chain (backend 'torch') on the CPU.", RuntimeWarning)
        return None


@functools.lru_cache(maxsize=None)
def _triton_module():
    """The Triton kernels module, or None (with one warning) where Triton is missing."""
    try:
        from . import triton_wkv
    except ImportError as err:
        warnings.warn(f"nnunet_sss.kernels: Triton is not available ({err}); "
                      "using the PyTorch op chain (backend 'torch') on CUDA.", RuntimeWarning)
        return None
    return triton_wkv


def _interpreting_triton():
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _resolve(backend: str, device: torch.device) -> str:
    """'auto' -> a backend for this device; an explicit name is checked, never replaced."""
    if backend == "auto":
        if device.type == "cuda":
            return "triton" if _triton_module() is not None else "torch"
        if device.type == "cpu":
            return "cpp" if _cpp_module() is not None else "torch"
        return "torch"
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(f"bi_wkv: backend 'cpp' runs on CPU tensors, got device {device}")
        if _cpp_module() is None:
            raise RuntimeError("bi_wkv: backend 'cpp' requested but the C++ extension could not be built "
                               "(see the warning above); use backend='torch'")
    if backend == "triton":
        if device.type != "cuda" and not _interpreting_triton():
            raise ValueError(f"bi_wkv: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1), "
                             f"got device {device}")
        if _triton_module() is None:
            raise RuntimeError("bi_wkv: backend 'triton' requested but Triton is not installed")
    return backend


def _compute_dtype(k: Tensor, v: Tensor) -> torch.dtype:
    """float64 only for float64 inputs (gradcheck, references); fp16/bf16/fp32 run in fp32."""
    return torch.float64 if torch.promote_types(k.dtype, v.dtype) == torch.float64 else torch.float32


def _check_lengths(lengths: Optional[Tensor], t_max: int):
    """Value checks (data-dependent, so they live inside the op, not in the traced wrapper), as
    an asynchronous assert: reading the lengths back to the host would stop a GPU step (and a
    CUDA graph) at every call; a bad length still fails the step, naming the bound."""
    if lengths is not None and lengths.numel():
        torch._assert_async(((lengths >= 0) & (lengths <= t_max)).all(),
                            f"bi_wkv: lengths must lie in [0, T={t_max}]")


@torch.library.custom_op("nnunet_sss::bi_wkv_forward", mutates_args=())
def _forward_op(k: Tensor, v: Tensor, w: Tensor, u: Tensor, lengths: Optional[Tensor],
                backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, y - centre, den, key max, centre): (N, T, C) x 3 and (N, C) x 2, in _compute_dtype.

    The centre is v at the key max of each (sequence, channel); the backward works with
    y - centre, which stays precise where one token dominates and y is close to its value.
    """
    _check_lengths(lengths, k.shape[1])
    name = _resolve(backend, k.device)
    with torch.autocast(k.device.type, enabled=False):
        if name == "cpp":
            out = _cpp_module().forward(k, v, w, u, lengths)
        elif name == "triton":
            out = _triton_module().forward(k, v, w, u, lengths)
        else:
            out = torch_scan.forward(k, v, w, u, lengths)
    dtype = _compute_dtype(k, v)
    return tuple(x.to(dtype) for x in out)


@_forward_op.register_fake
def _(k, v, w, u, lengths, backend):
    n_seq, t_max, chans = k.shape
    y = k.new_empty((n_seq, t_max, chans), dtype=_compute_dtype(k, v))
    k_max = k.new_empty((n_seq, chans), dtype=_compute_dtype(k, v))
    return y, torch.empty_like(y), torch.empty_like(y), k_max, torch.empty_like(k_max)


@torch.library.custom_op("nnunet_sss::bi_wkv_backward", mutates_args=())
def _backward_op(grad_y: Tensor, k: Tensor, v: Tensor, w: Tensor, u: Tensor, lengths: Optional[Tensor],
                 yc: Tensor, den: Tensor, k_max: Tensor, centre: Tensor, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients for k, v, w, u, in _compute_dtype."""
    name = _resolve(backend, k.device)
    with torch.autocast(k.device.type, enabled=False):
        if name == "cpp":
            grads = _cpp_module().backward(grad_y, k, v, w, u, lengths, yc, den, k_max, centre)
        elif name == "triton":
            grads = _triton_module().backward(grad_y, k, v, w, u, lengths, yc, den, k_max, centre)
        else:
            grads = torch_scan.backward(grad_y, k, v, w, u, lengths)
    dtype = _compute_dtype(k, v)
    return tuple(g.to(dtype) for g in grads)


@_backward_op.register_fake
def _(grad_y, k, v, w, u, lengths, yc, den, k_max, centre, backend):
    dtype = _compute_dtype(k, v)
    grad_k = k.new_empty(k.shape, dtype=dtype)
    return grad_k, torch.empty_like(grad_k), w.new_empty(w.shape, dtype=dtype), u.new_empty(u.shape, dtype=dtype)


def _setup_context(ctx, inputs, output):
    k, v, w, u, lengths, backend = inputs
    _, yc, den, k_max, centre = output
    ctx.set_materialize_grads(False)  # no zero-filled (N, T, C) gradients for yc and den
    ctx.backend = backend
    ctx.dtypes = (k.dtype, v.dtype, w.dtype, u.dtype)
    ctx.save_for_backward(k, v, w, u, lengths, yc, den, k_max, centre)


def _backward(ctx, grad_y, *unused_grads):
    k, v, w, u, lengths, yc, den, k_max, centre = ctx.saved_tensors
    if grad_y is None:  # only the internal outputs were used: they carry no gradient
        grad_y = torch.zeros_like(yc)
    grads = _backward_op(grad_y.contiguous(), k, v, w, u, lengths, yc, den, k_max, centre, ctx.backend)
    grads = tuple(g.to(dtype) for g, dtype in zip(grads, ctx.dtypes))
    return (*grads, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _validate(k, v, w, u, lengths, backend):
    for name, x in (("k", k), ("v", v), ("w", w), ("u", u)):
        if not isinstance(x, Tensor):
            raise ValueError(f"bi_wkv: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in _FLOATS:
            raise ValueError(f"bi_wkv: {name} must be a floating tensor (fp16/bf16/fp32/fp64), got {x.dtype}")
    if k.dim() != 3:
        raise ValueError(f"bi_wkv: k must have rank 3 (N, T, C), got shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"bi_wkv: v must have k's shape {tuple(k.shape)}, got {tuple(v.shape)}"
                         + (" (mismatched C)" if v.dim() == 3 and v.shape[:2] == k.shape[:2] else ""))
    chans = k.shape[2]
    for name, x in (("w", w), ("u", u)):
        if x.shape != (chans,):
            raise ValueError(f"bi_wkv: {name} must have shape (C,) = ({chans},), got {tuple(x.shape)}")
    tensors = [("k", k), ("v", v), ("w", w), ("u", u)]
    if lengths is not None:
        if not isinstance(lengths, Tensor):
            raise ValueError(f"bi_wkv: lengths must be an integer tensor of shape (N,), got {type(lengths).__name__}")
        if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
            raise ValueError(f"bi_wkv: lengths must be an integer tensor, got {lengths.dtype}")
        if lengths.shape != (k.shape[0],):
            raise ValueError(f"bi_wkv: lengths must have shape (N,) = ({k.shape[0]},), got {tuple(lengths.shape)}")
        if lengths.device != k.device and lengths.device.type != "cpu":
            tensors.append(("lengths", lengths))  # CPU lengths are moved to k's device
    devices = {x.device for _, x in tensors}
    if len(devices) > 1:
        raise ValueError("bi_wkv: inputs on different devices: "
                         + ", ".join(f"{name} on {x.device}" for name, x in tensors))
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"bi_wkv: unknown backend {backend!r}; choose one of {BACKENDS} or None")


def bi_wkv(k, v, w, u, *, lengths=None, backend=None):
    """Bidirectional WKV of Vision-RWKV over (N, T, C) sequences, w/T and u/T scaled per sequence.

    lengths: optional int (N,) real tokens per sequence (padding trailing; output 0 there), on
        k's device or on the CPU.
    backend: None picks from the device; "torch", "cpp" or "triton" force one (tests, benches).
    Returns (N, T, C) in v's dtype; differentiable in k, v, w, u.
    """
    _validate(k, v, w, u, lengths, backend)
    if lengths is not None:
        lengths = lengths.to(device=k.device, dtype=torch.int64).contiguous()
    y = _forward_op(k.contiguous(), v.contiguous(), w.contiguous(), u.contiguous(), lengths,
                          backend or "auto")[0]
    return y.to(v.dtype)
