"""Windows and scan orders: every token once per order, snake steps, exact round trips."""
import itertools
import math

import pytest
import torch

from nnunet_sss.network.scan import axis_orders, scan, scan_plan, sequence_lengths, unscan, visit_order

# (map size, window): windows that divide the map and windows that do not, 2D and 3D
CASES = [((8, 6), (4, 3)), ((7, 5), (4, 4)), ((5, 9), (8, 2)),
         ((4, 6, 4), (2, 3, 2)), ((5, 7, 3), (4, 4, 2)), ((3, 2, 5), (8, 8, 8))]


@pytest.mark.parametrize("size", [(3, 4), (4, 3, 5), (2, 2, 3)])
def test_snake_steps_are_neighbours(size):
    for order in itertools.permutations(range(len(size))):
        flat = visit_order(size, order, snake=True)
        assert sorted(flat.tolist()) == list(range(math.prod(size)))
        coords = torch.stack(torch.unravel_index(flat, size), 1)
        steps = (coords[1:] - coords[:-1]).abs().sum(1)
        assert steps.eq(1).all(), f"order {order}: a jump in the snake"


def test_raster_is_row_major_and_orders_are_cyclic():
    assert visit_order((3, 4), (0, 1), snake=False).tolist() == list(range(12))
    assert axis_orders(2, "stage") == ((0, 1), (1, 0))
    assert axis_orders(3, "stage") == ((0, 1, 2), (1, 2, 0), (2, 0, 1))
    assert axis_orders(3, "raster") == ((0, 1, 2),)
    with pytest.raises(ValueError, match="unknown scan"):
        axis_orders(2, "zigzag")


@pytest.mark.parametrize("size,window", CASES)
@pytest.mark.parametrize("scan_mode", ["stage", "raster"])
def test_scan_then_unscan_is_identity(size, window, scan_mode):
    orders = axis_orders(len(size), scan_mode)
    plan = scan_plan(size, window, orders, snake=scan_mode == "stage")
    x = torch.randn(2, math.prod(size), 5, dtype=torch.float64)
    seq = scan(x, plan)
    assert seq.shape == (2 * plan.n_orders * plan.n_windows, plan.seq_len, 5)
    # every order holds every token exactly once, inside the real part of its window
    lengths = sequence_lengths(plan, 2)
    real = (torch.arange(plan.seq_len)[None, :] < (lengths if lengths is not None else
                                                     torch.full((seq.shape[0],), plan.seq_len))[:, None])
    per_order = seq.view(2, plan.n_orders, -1, 5)
    per_real = real.view(2, plan.n_orders, -1)
    for b in range(2):
        for k in range(plan.n_orders):
            got = per_order[b, k][per_real[b, k]]
            assert torch.equal(got[torch.argsort(got[:, 0])], x[b][torch.argsort(x[b, :, 0])])
    # equal or learned weights that sum to one: the merge of identical orders is the identity
    torch.testing.assert_close(unscan(seq, plan), x)
    weights = torch.softmax(torch.randn(plan.n_orders, dtype=torch.float64), 0)
    torch.testing.assert_close(unscan(seq, plan, weights), x)
    # each order on its own is the inverse of its own scan
    for k in range(plan.n_orders):
        one_hot = torch.zeros(plan.n_orders, dtype=torch.float64)
        one_hot[k] = 1
        torch.testing.assert_close(unscan(seq, plan, one_hot), x)


@pytest.mark.parametrize("size,window", [((7, 5), (4, 4)), ((5, 7, 3), (4, 4, 2))])
def test_window_lengths_and_clipping(size, window):
    plan = scan_plan(size, window, axis_orders(len(size), "stage"), snake=True)
    counts = [math.ceil(s / w) for s, w in zip(size, window)]
    assert plan.n_windows == math.prod(counts)
    assert int(plan.lengths.sum()) == math.prod(size)
    assert int(plan.lengths.max()) == plan.seq_len <= math.prod(min(w, s) for w, s in zip(window, size))
    whole = scan_plan(size, (64,) * len(size), axis_orders(len(size), "stage"), snake=True)
    assert whole.n_windows == 1 and whole.lengths is None and whole.seq_len == math.prod(size)


def test_scan_and_unscan_gradients():
    size, window = (5, 3, 4), (2, 2, 3)
    plan = scan_plan(size, window, axis_orders(3, "stage"), snake=True)
    lengths = sequence_lengths(plan, 2)
    real = (torch.arange(plan.seq_len)[None, :, None] < lengths[:, None, None]).double()
    # padding slots hold no map token (the operator ignores them): compare real slots only
    x = torch.randn(2, math.prod(size), 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: scan(t, plan) * real, (x,))
    y = (torch.randn(2 * plan.n_orders * plan.n_windows, plan.seq_len, 3, dtype=torch.float64) * real)
    y.requires_grad_()
    logits = torch.randn(plan.n_orders, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t, l: unscan(t, plan, torch.softmax(l, 0)), (y, logits))
    out = unscan(y, plan, torch.softmax(logits, 0))
    (grad_y,) = torch.autograd.grad(out.sum(), y)
    assert grad_y.masked_select(real == 0).eq(0).all()


def test_bad_window():
    with pytest.raises(ValueError, match="window"):
        scan_plan((4, 4), (0, 2), axis_orders(2, "stage"), snake=True)


def test_plan_first_met_in_inference_serves_training():
    """Plans are cached: one built under torch.inference_mode (prediction, the attention tool)
    must not hand inference tensors to a later training step (autograd refuses to save them)."""
    size, window = (5, 11, 3), (3, 4, 2)  # a size no other test uses: the plan is built here
    orders = axis_orders(3, "stage")
    with torch.inference_mode():
        plan = scan_plan(size, window, orders, snake=True)
        unscan(scan(torch.randn(1, math.prod(size), 2), plan), plan, torch.full((plan.n_orders,), 1 / 3))
    assert scan_plan(size, window, orders, snake=True) is plan
    x = torch.randn(1, math.prod(size), 2, requires_grad=True)
    weights = torch.softmax(torch.zeros(plan.n_orders, requires_grad=True), 0)
    unscan(scan(x, plan), plan, weights).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
