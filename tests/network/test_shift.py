"""Windowed token shift: nothing crosses a window border; the backward is the exact adjoint."""
import math

import pytest
import torch

from nnunet_sss.network.shift import shift_concat, window_shift


def _crop(x, starts, sizes):
    for axis, (a, n) in enumerate(zip(starts, sizes)):
        x = x.narrow(axis + 1, a, n)
    return x


@pytest.mark.parametrize("size,window", [((7, 5), (4, 2)), ((8, 6), (4, 3)), ((5, 6, 3), (2, 4, 2))])
def test_shift_is_per_window(size, window):
    x = torch.randn(2, *size, 14)
    out = window_shift(x, window)
    # each window shifted alone, as if it were the whole map, gives the same tokens
    for origin in torch.cartesian_prod(*[torch.arange(0, s, w) for s, w in zip(size, window)]).view(-1, len(size)):
        starts = origin.tolist()
        sizes = [min(w, s - a) for a, w, s in zip(starts, window, size)]
        alone = window_shift(_crop(x, starts, sizes).contiguous(), None)
        torch.testing.assert_close(_crop(out, starts, sizes), alone)


def test_directions_and_leftover_channels():
    x = torch.arange(2 * 5 * 4 * 10, dtype=torch.float32).view(2, 5, 4, 10)
    out = window_shift(x, None)  # 2D: four groups of 10 // 4 = 2 channels, 2 left over
    torch.testing.assert_close(out[:, 1:, :, 0:2], x[:, :-1, :, 0:2])  # from the predecessor on axis 0
    torch.testing.assert_close(out[:, :-1, :, 2:4], x[:, 1:, :, 2:4])  # from the successor on axis 0
    torch.testing.assert_close(out[:, :, 1:, 4:6], x[:, :, :-1, 4:6])
    torch.testing.assert_close(out[:, :, :-1, 6:8], x[:, :, 1:, 6:8])
    torch.testing.assert_close(out[..., 8:], x[..., 8:])
    assert out[:, 0, :, 0:2].eq(0).all() and out[:, -1, :, 2:4].eq(0).all()


@pytest.mark.parametrize("size,window", [((5, 4), (2, 3)), ((3, 4, 5), (2, 2, 4))])
def test_backward_is_adjoint(size, window):
    x = torch.randn(1, *size, 13, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: window_shift(t, window), (x,))
    torch.autograd.gradcheck(lambda t: shift_concat(t, window), (x,))


def test_concat_halves():
    x = torch.randn(2, 6, 5, 3, 12)
    both = shift_concat(x, (4, 4, 2))
    assert both.shape == (2, 6, 5, 3, 24)
    torch.testing.assert_close(both[..., :12], x)
    torch.testing.assert_close(both[..., 12:], window_shift(x, (4, 4, 2)))


def test_global_shift_crosses_windows():
    x = torch.randn(1, 8, 8, 8)
    assert not torch.equal(window_shift(x, None), window_shift(x, (4, 4)))
    torch.testing.assert_close(window_shift(x, None), window_shift(x, (8, 8)))
