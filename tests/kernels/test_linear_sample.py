"""linear_sample: the C++ sampler and the grid_sample path against the float64 definition, on odd
sizes, every gradient, points outside the map, fp16/bf16, empty inputs; errors; fallback; compile."""
import math
import warnings

import pytest
import torch

from nnunet_sss.kernels import cpu_ext, linear_sample, linear_sample_reference
from nnunet_sss.kernels import sampler as sample_module


def random_case(batch, chans, size, out_size, spread, seed, dtype=torch.float32):
    """A map and sampling points: the upsampling's regular grid over the map, moved by 0.01 so
    that no point sits on a voxel centre (where the coordinate gradient jumps and either side
    is right), plus noise of `spread` voxels (large spreads put many points outside the map,
    where the border clamps)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, chans, *size, generator=gen).to(dtype)
    axes = [(torch.arange(m) + 0.5) * n / m - 0.49 for n, m in zip(size, out_size)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    coords = grid + spread * torch.randn(batch, *out_size, len(size), generator=gen)
    return x, coords.to(dtype)


def values_and_grads(fn, x, coords, grad_seed=7):
    x, coords = x.detach().requires_grad_(), coords.detach().requires_grad_()
    out = fn(x, coords)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
    return (out, *torch.autograd.grad(out, (x, coords), grad))


def assert_matches_reference(fn, x, coords, tol):
    got = values_and_grads(fn, x, coords)
    want = values_and_grads(linear_sample_reference, x.double(), coords.double())
    for name, a, b in zip(("output", "grad x", "grad coords"), got, want):
        assert a.dtype == x.dtype, name
        err = (a.double() - b).abs().max().item() if a.numel() else 0.0
        assert err <= tol * max(1.0, b.abs().max().item() if b.numel() else 0.0), f"{name}: max error {err}"


CASES = [  # batch, chans, size, out_size
    (2, 3, (7,), (15,)),
    (1, 1, (5, 6), (10, 12)),
    (3, 17, (4, 7), (8, 7)),
    (2, 40, (3, 4, 5), (6, 8, 10)),
    (1, 5, (1, 5, 3), (1, 10, 6)),  # an axis of size 1
    (2, 16, (2, 3, 2), (5, 5, 5)),  # scales that are not integers
]


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("spread", [0.0, 0.3, 3.0])
@pytest.mark.parametrize("batch,chans,size,out_size", CASES)
def test_matches_the_float64_definition(backend, spread, batch, chans, size, out_size):
    x, coords = random_case(batch, chans, size, out_size, spread, seed=sum(out_size) + chans)
    assert_matches_reference(lambda a, b: linear_sample(a, b, backend=backend), x, coords, tol=2e-5)


def test_cpu_float32_uses_the_cpp_kernel_and_float64_the_definition():
    x, coords = random_case(2, 4, (3, 4, 5), (6, 8, 10), 0.5, seed=1)
    assert sample_module._resolve("auto", x) == "cpp"
    assert sample_module._resolve("auto", x.double()) == "torch"
    assert torch.equal(linear_sample(x, coords), linear_sample(x, coords, backend="cpp"))
    assert torch.equal(linear_sample(x.double(), coords.double()), linear_sample_reference(x, coords))


def test_gradcheck_float64():
    x, coords = random_case(2, 3, (3, 4, 2), (4, 5, 3), 0.4, seed=2, dtype=torch.float64)
    torch.autograd.gradcheck(lambda a, b: linear_sample(a, b), (x.requires_grad_(), coords.requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32(dtype):
    x, coords = random_case(2, 8, (4, 5, 6), (8, 10, 12), 0.5, seed=3, dtype=dtype)
    out = linear_sample(x, coords)
    assert out.dtype == dtype
    want = linear_sample_reference(x.float(), coords.float())
    torch.testing.assert_close(out.double(), want, atol=2e-2, rtol=2e-2)


def test_points_outside_the_map_take_the_border_and_no_coordinate_gradient():
    x = torch.arange(5.0).view(1, 1, 5)
    coords = torch.tensor([[[-3.0], [0.5], [9.0]]], requires_grad=True)
    out = linear_sample(x, coords, backend="cpp")
    assert out.flatten().tolist() == [0.0, 0.5, 4.0]
    out.sum().backward()
    assert coords.grad.flatten().tolist() == [0.0, 1.0, 0.0]


def test_nan_coordinates_give_nan_rows_not_other_values():
    x, coords = random_case(1, 3, (4, 5), (4, 5), 0.2, seed=4)
    expected = linear_sample(x, coords, backend="cpp")
    coords[0, 1, 2, 0] = float("nan")
    out = linear_sample(x, coords, backend="cpp")
    assert out[0, :, 1, 2].isnan().all()
    out[0, :, 1, 2] = expected[0, :, 1, 2]
    assert torch.equal(out, expected)  # every other point as without the NaN


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_empty_inputs(backend):
    x, coords = random_case(2, 3, (3, 4), (5, 6), 0.2, seed=5)
    out, gx, gc = values_and_grads(lambda a, b: linear_sample(a, b, backend=backend), x[:0], coords[:0])
    assert out.shape == (0, 3, 5, 6) and gx.shape == (0, 3, 3, 4) and gc.shape == (0, 5, 6, 2)
    out = linear_sample(x, coords[:, :0], backend=backend)
    assert out.shape == (2, 3, 0, 6)


def test_non_contiguous_inputs():
    x, coords = random_case(2, 6, (5, 4, 3), (5, 4, 3), 0.5, seed=6)
    x_nc = x.transpose(2, 4).contiguous().transpose(2, 4)
    coords_nc = coords.movedim(-1, 1).contiguous().movedim(1, -1)
    assert not x_nc.is_contiguous() and not coords_nc.is_contiguous()
    assert torch.equal(linear_sample(x_nc, coords_nc), linear_sample(x, coords))


@pytest.mark.parametrize("args,match", [
    ((torch.zeros(2, 3), torch.zeros(2, 4, 1)), "1 to 3 spatial axes"),
    ((torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 5, 3)), r"coords must be \(B, \*O, 2\)"),
    ((torch.zeros(2, 3, 4, 5), torch.zeros(3, 4, 5, 2)), r"coords must be"),
    ((torch.zeros(2, 3, 4, 5), torch.zeros(2, 4, 2)), r"coords must be"),
    ((torch.zeros(2, 3, 4, dtype=torch.int64), torch.zeros(2, 4, 1)), "floating"),
    ((torch.zeros(2, 3, 4), torch.zeros(2, 4, 1, dtype=torch.int32)), "coords must be a floating"),
    ((torch.zeros(2, 3, 4), torch.zeros(2, 4, 1, device="meta")), "x on cpu but coords on meta"),
])
def test_bad_input_names_the_problem(args, match):
    with pytest.raises(ValueError, match=match):
        linear_sample(*args)


def test_unknown_or_impossible_backend():
    x, coords = random_case(1, 2, (3,), (4,), 0.0, seed=0)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        linear_sample(x, coords, backend="cuda")
    with pytest.raises(ValueError, match="backend 'cpp' runs on CPU tensors"):
        linear_sample(x.to("meta"), coords.to("meta"), backend="cpp")


def test_missing_compiler_falls_back_to_grid_sample_with_one_warning(monkeypatch):
    def no_compiler(stem):
        raise RuntimeError("c++: command not found")

    sample_module._cpp_library.cache_clear()
    monkeypatch.setattr(cpu_ext, "build", no_compiler)
    try:
        x, coords = random_case(2, 3, (4, 5), (8, 10), 0.3, seed=8)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, second = linear_sample(x, coords), linear_sample(x, coords)
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert len(messages) == 1 and "C++ sampler" in messages[0] and "command not found" in messages[0]
        assert torch.equal(first, second) and torch.equal(first, linear_sample(x, coords, backend="torch"))
        with pytest.raises(RuntimeError, match="backend 'cpp'"):
            linear_sample(x, coords, backend="cpp")
    finally:
        sample_module._cpp_library.cache_clear()


def test_compiles_with_no_graph_break():
    x, coords = random_case(2, 4, (3, 4, 5), (6, 8, 10), 0.5, seed=9)
    fn = torch.compile(lambda a, b: linear_sample(a * 2, b).square().sum(), backend="aot_eager", fullgraph=True)
    eager = values_and_grads(lambda a, b: linear_sample(a * 2, b).square().sum(), x, coords)
    compiled = values_and_grads(fn, x, coords)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b)
    assert math.isfinite(compiled[0].item())


def test_torch_backend_builds_no_tensor_from_host_data_once_warm():
    """On a GPU a tensor made from Python numbers inside the step is a host-to-device copy: it
    stalls an eager step and breaks CUDA-graph capture. The grid scale is made once per size."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(func._schema.name)
            return func(*args, **(kwargs or {}))

    x, coords = torch.randn(2, 3, 5, 7), torch.rand(2, 4, 6, 2) * 4
    first = linear_sample(x, coords, backend="torch")
    with Ops() as ops:
        again = linear_sample(x, coords, backend="torch")
    assert "aten::lift_fresh" not in ops.names and "aten::_to_copy" not in ops.names
    torch.testing.assert_close(again, first)
    other = torch.randn(1, 2, 9, 4)  # a size met first in inference: its scale serves training too
    with torch.inference_mode():
        linear_sample(other, torch.rand(1, 3, 3, 2), backend="torch")
    coords = torch.rand(1, 3, 3, 2, requires_grad=True)
    linear_sample(other, coords, backend="torch").sum().backward()
    assert coords.grad is not None
