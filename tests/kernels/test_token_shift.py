"""token_shift: each backend against the slice-by-slice reference on odd sizes, both directions,
leftover channels, the backward as the reverse shift, and the errors it names."""
import pytest
import torch

from nnunet_sss.kernels import token_shift, token_shift_reference
from nnunet_sss.kernels.token_shift import _cpp_library

BACKENDS = ["torch"] + (["cpp"] if _cpp_library() is not None else [])
CASES = [  # (shape, window starts per axis)
    ((2, 7, 9, 13), ((0, 4), (0, 5))),            # 2D, 4 groups of 3, one channel left over
    ((1, 5, 6, 7, 32), ((0, 2), (0, 3), (0, 4))),  # 3D, 6 groups of 5, two left over
    ((3, 11, 6), ((0, 3, 7),)),                    # 1D, uneven windows
    ((2, 4, 5, 3), ((0,), (0,))),                  # fewer channels than groups: nothing moves
    ((1, 1, 6, 8), ((0,), (0, 1, 2))),             # a one-token axis, one-token windows
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,starts", CASES)
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_the_reference(backend, shape, starts, reverse):
    x = torch.randn(*shape)
    got = token_shift(x, starts, reverse, backend=backend)
    torch.testing.assert_close(got, token_shift_reference(x, starts, reverse), rtol=0, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,starts", CASES[:3])
def test_backward_is_the_adjoint(backend, shape, starts):
    """<shift(x), g> == <x, shift_back(g)> for every x, g: the backward is the reverse shift."""
    x = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape)
    (grad,) = torch.autograd.grad(token_shift(x, starts, backend=backend), x, g)
    expected = torch.autograd.grad(token_shift_reference(x.double(), starts), x, g.double())[0]
    torch.testing.assert_close(grad, expected.float(), rtol=0, atol=0)
    torch.testing.assert_close(grad, token_shift_reference(g, starts, reverse=True), rtol=0, atol=0)


def test_float64_gradcheck_on_the_torch_backend():
    x = torch.randn(1, 3, 4, 9, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: token_shift(t, ((0, 2), (0, 1, 3))), (x,))


def test_keeps_low_precision_dtypes():
    x = torch.randn(2, 5, 6, 8).to(torch.bfloat16)
    out = token_shift(x, ((0,), (0, 3)))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, token_shift_reference(x, ((0,), (0, 3))))


@pytest.mark.parametrize("x,starts,match", [
    (torch.randn(2, 5, 4), ((0,), (0,)), "one tuple of window starts per spatial axis"),
    (torch.randn(2, 5, 4, 8), ((1,), (0,)), "must rise from 0"),
    (torch.randn(2, 5, 4, 8), ((0, 5), (0,)), "stay below its size 5"),
    (torch.randn(2, 5, 4, 8), ((0, 3, 2), (0,)), "must rise from 0"),
    (torch.randn(8, 5), ((0,),), "1 to 3 spatial axes"),
    (torch.arange(40).view(1, 5, 8), ((0,),), "floating"),
])
def test_bad_input_is_named(x, starts, match):
    with pytest.raises(ValueError, match=match):
        token_shift(x, starts)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown backend"):
        token_shift(torch.randn(1, 4, 4), ((0,),), backend="cuda")
