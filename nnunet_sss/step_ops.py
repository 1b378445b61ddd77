"""What one train step dispatches: how many ops, which ones, and which of them would stop the host.

Both are read with a TorchDispatchMode over one forward + loss + backward (`measure._forward_backward`)
after an untimed step, so that cached set-up (scan plans) is not counted:

- `count_ops`: aten ops dispatched, views included. In eager mode on a GPU each non-view op is a
  kernel launch, so this is what bounds a small network's step there.
- `host_syncs`: ops that make the host wait for the device or give a result whose shape depends
  on the data (`.item()`, `nonzero`, boolean-mask indexing, ...). One of them in a step means a
  CUDA graph cannot capture it, and on a GPU an eager step stalls there.

A mode is switched off while its own handler runs, so it sees an op registered with
torch.library (`nnunet_sss::bi_wkv_forward`, ...) as one op whatever the op's implementation does.
`StepMode` goes inside: an op outside the aten namespace is observed, then run below the Python
dispatch key with the mode switched on again, so the aten ops its Python implementation dispatches
are observed too. An implementation that is one C++ or Triton kernel dispatches none, and the op
counts as one; one that chains aten ops from Python counts as 1 + its ops. autograd.Function
forwards and backwards are not ops: their aten ops reach the mode directly.
"""
from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .measure import _forward_backward

_BELOW_PYTHON = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.Python)
_NATIVE = ("aten", "prim", "prims")
_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd


class StepMode(TorchDispatchMode):
    """Calls `observe(func, args, kwargs)` for every op dispatched, inside custom ops too; `within`
    is the outermost custom op being run at that moment (None outside them)."""

    def __init__(self):
        super().__init__()
        self.within = None

    def observe(self, func, args, kwargs) -> None:
        raise NotImplementedError

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), _COMPOSITE):
            # reaches a mode only below autograd (inside a custom op): decompose it as autograd
            # would have, so that only what it dispatches counts (a no-op .to() nothing)
            with self:
                return func.decompose(*args, **kwargs)
        self.observe(func, args, kwargs)
        if func.namespace in _NATIVE:
            return func(*args, **kwargs)
        keys = None
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor):
                keys = torch._C._dispatch_keys(t) if keys is None else keys | torch._C._dispatch_keys(t)
        if keys is None:
            return func(*args, **kwargs)
        outer, self.within = self.within, self.within or func
        try:
            with self:
                return func.redispatch(keys & _BELOW_PYTHON, *args, **kwargs)
        finally:
            self.within = outer


def op_name(func) -> str:
    """'aten::add' for aten.add.Tensor and aten.add.Scalar alike."""
    return func._schema.name


@dataclass
class OpCount:
    """Ops of one forward+backward: `total`, of which `views` (ops whose output aliases an input:
    no kernel), per op name, and per custom op the ops its own implementation dispatched (also
    counted in `total` and `by_op`)."""

    total: int = 0
    views: int = 0
    by_op: Counter = field(default_factory=Counter)
    inside: Counter = field(default_factory=Counter)


class _OpCounter(StepMode):
    def __init__(self):
        super().__init__()
        self.count = OpCount()

    def observe(self, func, args, kwargs):
        self.count.total += 1
        self.count.views += func.is_view
        self.count.by_op[op_name(func)] += 1
        if self.within is not None:
            self.count.inside[op_name(self.within)] += 1


def count_ops(network: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> OpCount:
    """Ops dispatched by one forward+backward of `network` on a random batch (fp32, CPU)."""
    x = torch.randn((batch_size, *input_shape))
    _forward_backward(network, x, amp=False)
    network.zero_grad(set_to_none=True)
    counter = _OpCounter()
    with counter:
        _forward_backward(network, x, amp=False)
    network.zero_grad(set_to_none=True)
    return counter.count


# Ops that read device memory back to the host (the host waits) or whose output shape depends on
# the data (the host must learn it). Boolean-mask indexing and cross-device copies are checked
# by their arguments (`_host_sync_reason`).
HOST_SYNC_OPS = {
    "aten::_local_scalar_dense": ".item() / int() / float() / bool() of a tensor",
    "aten::item": ".item()",
    "aten::is_nonzero": "bool() of a tensor",
    "aten::equal": "torch.equal returns a Python bool",
    "aten::allclose": "torch.allclose returns a Python bool",
    "aten::nonzero": "output shape depends on the data",
    "aten::nonzero_numpy": "output shape depends on the data",
    "aten::argwhere": "output shape depends on the data",
    "aten::masked_select": "output shape depends on the data",
    "aten::_unique": "output shape depends on the data",
    "aten::_unique2": "output shape depends on the data",
    "aten::unique_dim": "output shape depends on the data",
    "aten::unique_consecutive": "output shape depends on the data",
    "aten::unique_dim_consecutive": "output shape depends on the data",
    "aten::bincount": "output shape depends on the data (its maximum)",
}
# Python-level reads of a whole tensor into the host, invisible to a dispatch mode.
_HOST_READS = {torch.Tensor.tolist: "Tensor.tolist()", torch.Tensor.numpy: "Tensor.numpy()",
               torch.Tensor.__array__: "numpy.asarray(tensor)"}


def _is_mask(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


def _host_sync_reason(func, args, kwargs):
    """Why `func` on these arguments stops the host, or None."""
    name = op_name(func)
    if name in HOST_SYNC_OPS:
        return HOST_SYNC_OPS[name]
    if name == "aten::repeat_interleave" and func._overloadname in ("Tensor", "self_Tensor") \
            and kwargs.get("output_size") is None:
        return "repeat_interleave by a tensor without output_size: output shape depends on the data"
    if name == "aten::histc":
        low, high = (args[i] if len(args) > i else kwargs.get(key, 0) for i, key in ((2, "min"), (3, "max")))
        if low == high:
            return "histc without a range: the range is read from the data"
    if name in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_") \
            and len(args) > 1 and any(_is_mask(i) for i in (args[1] or ())):
        return "boolean-mask indexing: output shape depends on the data"
    if name in ("aten::_to_copy", "aten::copy_", "aten::to"):
        devices = {t.device.type for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        target = kwargs.get("device")
        if target is not None:
            devices.add(torch.device(target).type)
        if len(devices) > 1:
            return "copy between host and device"
    return None


@dataclass
class HostSync:
    op: str
    reason: str
    where: str          # innermost frame of this project's code: "path:line in function"
    within: str = ""    # the custom op whose implementation ran it, if any


_ROOT = Path(__file__).resolve().parents[1]
_HERE, _STEP = Path(__file__).resolve(), (Path(__file__).parent / "measure.py").resolve()


def _where() -> str:
    """The innermost stack frame of this project's code inside the step (called by
    measure._forward_backward), else the autograd node running (a backward formula has no
    Python frame)."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename).resolve()
        if path == _STEP and frame.name == "_forward_backward":
            break
        if _ROOT in path.parents and path != _HERE and "torch" not in path.parts:
            return f"{path.relative_to(_ROOT)}:{frame.lineno} in {frame.name}"
    node = torch._C._current_autograd_node()
    return "?" if node is None else f"backward node {node.name()}"


class _SyncFinder(StepMode):
    def __init__(self):
        super().__init__()
        self.found: List[HostSync] = []

    def observe(self, func, args, kwargs):
        reason = _host_sync_reason(func, args, kwargs)
        if reason:
            self.found.append(HostSync(str(func), reason, _where(),
                                       "" if self.within is None else op_name(self.within)))


class _HostReadFinder(TorchFunctionMode):
    def __init__(self, found: List[HostSync]):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            self.found.append(HostSync(_HOST_READS[func], "reads the whole tensor into the host", _where()))
        return func(*args, **(kwargs or {}))


def host_syncs(network: nn.Module, input_shape: Sequence[int], batch_size: int = 1) -> List[HostSync]:
    """Every op of one forward + loss + backward that stops the host (see HOST_SYNC_OPS), with
    where in this project's code it was called. Empty = a CUDA graph could capture the step."""
    x = torch.randn((batch_size, *input_shape))
    _forward_backward(network, x, amp=False)
    network.zero_grad(set_to_none=True)
    finder = _SyncFinder()
    with _HostReadFinder(finder.found), finder:
        _forward_backward(network, x, amp=False)
    network.zero_grad(set_to_none=True)
    return finder.found
