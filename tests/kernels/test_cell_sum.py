"""cell_sum: each backend against the reduction that defines it on odd sizes and pools, its
gradient (the output gradient repeated over each cell), the one-op C++ path, and the errors it names."""
import pytest
import torch

from nnunet_sss.kernels import cell_sum, cell_sum_reference
from nnunet_sss.kernels.cell_sum import _cpp_library
from nnunet_sss.step_ops import StepMode, op_name

BACKENDS = ["torch"] + (["cpp"] if _cpp_library() is not None else [])
CASES = [  # (shape, pool)
    ((2, 6, 9, 7), (2, 3)),          # 2D, odd channels
    ((1, 4, 6, 10, 5), (2, 3, 5)),   # 3D, a different factor per axis
    ((3, 9, 4), (3,)),               # 1D
    ((2, 4, 6, 2, 3), (1, 2, 2)),    # 3D, one axis not pooled
    ((1, 2, 2, 2, 1), (2, 2, 2)),    # the whole map one cell, one channel
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,pool", CASES)
@pytest.mark.parametrize("scale", [1.0, 0.125])
def test_matches_the_reference(backend, shape, pool, scale):
    x = torch.randn(*shape)
    got = cell_sum(x, pool, scale, backend=backend)
    torch.testing.assert_close(got, cell_sum_reference(x.double(), pool, scale).float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,pool", CASES[:3])
def test_gradient_repeats_over_each_cell(backend, shape, pool):
    x = torch.randn(*shape, requires_grad=True)
    out = cell_sum(x, pool, 0.5, backend=backend)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, g)
    (expected,) = torch.autograd.grad(cell_sum_reference(x, pool, 0.5), x, g)
    torch.testing.assert_close(grad, expected, rtol=0, atol=0)


def test_float64_gradcheck_on_the_torch_backend():
    x = torch.randn(2, 4, 6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: cell_sum(t, (2, 3), 0.25, backend="torch"), (x,))


def test_cpp_backend_is_one_op_where_slices_are_many():
    assert _cpp_library() is not None, "the C++ cell sum did not build (the venv's compiler; see the warning)"
    seen = []

    class Ops(StepMode):
        def observe(self, func, args, kwargs):
            seen.append(op_name(func))

    x = torch.randn(1, 8, 8, 8, 16)
    for backend in ("cpp", "torch"):
        cell_sum(x, (2, 2, 2), backend=backend)  # cached set-up (the sizes handed to C) outside the count
        seen.clear()
        with Ops():
            cell_sum(x, (2, 2, 2), backend=backend)
        if backend == "cpp":
            assert seen.count("nnunet_sss::cell_sum") == 1 and len(seen) <= 3, seen
        else:
            assert len(seen) > 6, seen


@pytest.mark.parametrize("args,kwargs,message", [
    ((torch.randn(2, 6, 5, 3), (2, 2)), {}, "must be positive and divide the map"),
    ((torch.randn(2, 6, 4, 3), (2,)), {}, "one factor per spatial axis"),
    ((torch.randn(6, 3), (2,)), {}, "1 to 3 spatial axes"),
    ((torch.ones(2, 4, 3, dtype=torch.int64), (2,)), {}, "floating"),
    ((torch.randn(2, 4, 3), (0,)), {}, "must be positive"),
    ((torch.randn(2, 4, 3), (2,)), {"backend": "cuda"}, "unknown backend"),
    ((torch.randn(2, 4, 3, device="meta"), (2,)), {"backend": "cpp"}, "runs on CPU tensors"),
])
def test_bad_input_is_named(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cell_sum(*args, **kwargs)
