"""Windowed token shift: nothing crosses a window border; the backward is the exact adjoint."""
import pytest
import torch

from nnunet_sss.network.scan import partition, window_starts
from nnunet_sss.kernels.token_shift import _gather_shift
from nnunet_sss.network.shift import shift_starts, window_shift


def _crop(x, starts, sizes):
    for axis, (a, n) in enumerate(zip(starts, sizes)):
        x = x.narrow(axis + 1, a, n)
    return x


def _windows(size, window, pool=None):
    """(origin, extent) of every window, in voxels of the full map."""
    pool = pool or (1,) * len(size)
    starts = shift_starts(size, window, pool)
    ends = [tuple(st[1:]) + (s,) for st, s in zip(starts, size)]
    for corner in torch.cartesian_prod(*[torch.arange(len(st)) for st in starts]).view(-1, len(size)).tolist():
        origin = [starts[a][i] for a, i in enumerate(corner)]
        yield origin, [ends[a][i] - origin[a] for a, i in enumerate(corner)]


@pytest.mark.parametrize("size,window,pool", [((7, 5), (4, 2), None), ((8, 6), (4, 3), None),
                                              ((5, 6, 3), (2, 4, 2), None), ((9, 12), (2, 4), (2, 2))])
def test_shift_is_per_window(size, window, pool):
    x = torch.randn(2, *size, 14)
    out = window_shift(x, shift_starts(size, window, pool))
    # each window shifted alone, as if it were the whole map, gives the same tokens
    for origin, sizes in _windows(size, window, pool):
        alone = _crop(x, origin, sizes).contiguous()
        torch.testing.assert_close(_crop(out, origin, sizes), window_shift(alone, shift_starts(sizes)))


def test_windows_are_balanced_and_pooled_borders_scale():
    assert partition((10, 20, 56), (8, 8, 8)) == ((5, 5), (7, 7, 6), (8,) * 7)
    assert window_starts((7, 7, 6)) == (0, 7, 14)
    assert shift_starts((20, 9), (4, 2), (2, 2)) == ((0, 8, 14), (0, 4, 8))  # pooled 10 -> 4+3+3, 5 -> 2+2+1
    assert shift_starts((9, 12)) == ((0,), (0,))


def test_directions_and_leftover_channels():
    x = torch.arange(2 * 5 * 4 * 10, dtype=torch.float32).view(2, 5, 4, 10)
    out = window_shift(x, shift_starts((5, 4)))  # 2D: four groups of 10 // 4 = 2 channels, 2 left over
    torch.testing.assert_close(out[:, 1:, :, 0:2], x[:, :-1, :, 0:2])  # from the predecessor on axis 0
    torch.testing.assert_close(out[:, :-1, :, 2:4], x[:, 1:, :, 2:4])  # from the successor on axis 0
    torch.testing.assert_close(out[:, :, 1:, 4:6], x[:, :, :-1, 4:6])
    torch.testing.assert_close(out[:, :, :-1, 6:8], x[:, :, 1:, 6:8])
    torch.testing.assert_close(out[..., 8:], x[..., 8:])
    assert out[:, 0, :, 0:2].eq(0).all() and out[:, -1, :, 2:4].eq(0).all()


@pytest.mark.parametrize("size,window", [((5, 4), (2, 3)), ((3, 4, 5), (2, 2, 4))])
def test_backward_is_adjoint(size, window):
    x = torch.randn(1, *size, 13, dtype=torch.float64, requires_grad=True)
    starts = shift_starts(size, window)
    torch.autograd.gradcheck(lambda t: window_shift(t, starts), (x,))


def test_global_shift_crosses_windows():
    x = torch.randn(1, 8, 8, 8)
    assert not torch.equal(window_shift(x, shift_starts((8, 8))), window_shift(x, shift_starts((8, 8), (4, 4))))
    torch.testing.assert_close(window_shift(x, shift_starts((8, 8))), window_shift(x, shift_starts((8, 8), (8, 8))))
    with pytest.raises(ValueError, match="window starts"):
        window_shift(x, ((0,),))


@pytest.mark.parametrize("size,window,chans", [((5, 4), (2, 3), 10), ((3, 4, 5), (2, 2, 4), 13), ((1, 6), None, 4)])
def test_traced_shift_equals_the_eager_one(size, window, chans):
    """What torch.compile traces (the gather, autograd's own backward) gives the eager shift's
    values and gradients (the C++ pass and its reverse pass)."""
    starts = shift_starts(size, window)
    x = torch.randn(2, *size, chans, requires_grad=True)
    grad = torch.randn(2, *size, chans)
    eager = window_shift(x, starts)
    traced = _gather_shift(x, starts, False)
    torch.testing.assert_close(traced, eager, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(traced, x, grad)[0], torch.autograd.grad(eager, x, grad)[0],
                               rtol=0, atol=1e-6)
