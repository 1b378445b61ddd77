"""Backend choice, fallbacks with one clear warning, and torch.compile with no graph break."""
import sys
import warnings

import pytest
import torch

import nnunet_sss.kernels
from nnunet_sss.kernels import bi_wkv, cpu_ext, op
from wkv_testing import DEVICES, random_inputs


@pytest.fixture
def fresh_backend_caches():
    """Forget which backends loaded, before and after the test (the real ones come back)."""
    op._cpp_module.cache_clear()
    op._triton_module.cache_clear()
    yield
    op._cpp_module.cache_clear()
    op._triton_module.cache_clear()


def test_cpu_tensors_use_the_fused_scan():
    assert op._resolve("auto", torch.device("cpu")) == "cpp"
    k, v, w, u, _ = random_inputs(2, 33, 7, seed=0)
    assert torch.equal(bi_wkv(k, v, w, u), bi_wkv(k, v, w, u, backend="cpp"))


def test_missing_compiler_falls_back_to_torch_with_one_warning(monkeypatch, fresh_backend_caches):
    def no_compiler():
        raise RuntimeError("c++: command not found")

    monkeypatch.setattr(cpu_ext, "load", no_compiler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert op._resolve("auto", torch.device("cpu")) == "torch"
        assert op._resolve("auto", torch.device("cpu")) == "torch"
        k, v, w, u, _ = random_inputs(2, 9, 3, seed=1)
        y = bi_wkv(k, v, w, u)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "C++" in messages[0] and "command not found" in messages[0]
    assert torch.allclose(y, bi_wkv(k, v, w, u, backend="torch"))
    with pytest.raises(RuntimeError, match="backend 'cpp'"):
        op._resolve("cpp", torch.device("cpu"))


def test_missing_triton_on_cuda_falls_back_to_torch_with_one_warning(monkeypatch, fresh_backend_caches):
    """(Resolved for a CUDA device without tensors: this machine has no GPU.)"""
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail
    for name in ("triton_wkv", "triton_tiles", "triton_common"):  # as if never imported (other tests import them)
        monkeypatch.delitem(sys.modules, f"nnunet_sss.kernels.{name}", raising=False)
        monkeypatch.delattr(nnunet_sss.kernels, name, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert op._resolve("auto", torch.device("cuda")) == "torch"
        assert op._resolve("auto", torch.device("cuda")) == "torch"
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "Triton" in messages[0]
    with pytest.raises(RuntimeError, match="Triton is not installed"):
        op._resolve("triton", torch.device("cuda"))


class _TinyWKV(torch.nn.Module):
    """Learned decay and bonus around the operator. (No other op: every extra pointwise op
    costs inductor a C++ kernel build, ~30 s cold on this machine; the graph break and the
    fake/autograd registration are what is under test.)"""

    def __init__(self, chans):
        super().__init__()
        self.decay = torch.nn.Parameter(torch.linspace(-2.0, 3.0, chans))
        self.bonus = torch.nn.Parameter(torch.linspace(1.0, -1.0, chans))

    def forward(self, k, v, lengths):
        return bi_wkv(k, v, self.decay, self.bonus, lengths=lengths)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_matches_eager(device):
    """fullgraph=True turns any graph break into an error; inductor on the CPU (and on CUDA,
    where the op dispatches to Triton, on a machine with a GPU)."""
    model = _TinyWKV(6).to(device)
    k, v, _, _, grad_y = (x.to(device) for x in random_inputs(3, 11, 6, seed=8))
    lengths = torch.tensor([11, 4, 0], device=device)
    inputs = [x.clone().requires_grad_() for x in (k, v)]
    compiled = torch.compile(model, fullgraph=True, backend="inductor")
    results = []
    for fn in (model, compiled):
        out = fn(*inputs, lengths)
        results.append((out, *torch.autograd.grad(out, inputs + list(model.parameters()), grad_y)))
    for eager, traced in zip(*results):
        assert torch.allclose(traced, eager, rtol=1e-5, atol=1e-6)
