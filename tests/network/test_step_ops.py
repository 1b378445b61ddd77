"""nnunet_sss.step_ops: the ops one train step dispatches, and those that stop the host."""
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_sss import RWKVSSSUNet
from nnunet_sss.step_ops import count_ops, host_syncs

from network_cases import tiny_kwargs


@torch.library.custom_op("nnunet_sss_tests::three_ops", mutates_args=())
def three_ops(x: torch.Tensor) -> torch.Tensor:
    """A custom op whose Python implementation dispatches three aten ops (the .to() is a no-op)."""
    return (x.to(x.dtype) * 2 + 1).sin()


@three_ops.register_fake
def _(x):
    return torch.empty_like(x)


class _Scaled(nn.Module):
    """w * f(x): x needs no gradient, so forward and backward differ only in how f is dispatched."""

    def __init__(self, f):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3, 1, 1))
        self.f = f

    def forward(self, x):
        return self.w * self.f(x)


def test_custom_ops_count_with_the_ops_they_run():
    """A Python chain wrapped in a custom op counts as the op plus its chain, never as 1."""
    inline = count_ops(_Scaled(lambda x: (x * 2 + 1).sin()), (3, 4, 4))
    wrapped = count_ops(_Scaled(three_ops), (3, 4, 4))
    assert wrapped.total == inline.total + 1
    assert wrapped.by_op["nnunet_sss_tests::three_ops"] == 1
    assert wrapped.inside == {"nnunet_sss_tests::three_ops": 3}
    assert all(wrapped.by_op[op] == inline.by_op[op] for op in ("aten::mul", "aten::add", "aten::sin"))


class _SinCosBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (grad * x).sin().cos()


def test_autograd_function_backward_ops_count():
    counted = count_ops(_Scaled(lambda x: _SinCosBackward.apply(x.clone().requires_grad_())), (3, 4, 4))
    assert counted.by_op["aten::sin"] == counted.by_op["aten::cos"] == 1  # only its backward runs them
    assert not counted.inside


def test_count_ops_counts_a_training_step():
    """More layers, more dispatched ops; set-up cached by the first step is not counted twice."""
    kwargs = tiny_kwargs(2)
    plain_kwargs = {k: v for k, v in kwargs.items() if k not in ("local_window", "global_window")}
    plain = count_ops(PlainConvUNet(**plain_kwargs), (1, 16, 16))
    ours = count_ops(RWKVSSSUNet(**kwargs), (1, 16, 16))
    assert 0 < plain.total < ours.total
    assert sum(plain.by_op.values()) == plain.total and not plain.inside
    assert ours.by_op["nnunet_sss::bi_wkv_forward"] > 0 and ours.inside["nnunet_sss::bi_wkv_forward"] > 0
    assert count_ops(RWKVSSSUNet(**kwargs), (1, 16, 16)).total == ours.total


class _Syncing(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        self.how = how

    def forward(self, x):
        y = self.conv(x)
        if self.how == "item":
            return y * y.mean().item()
        if self.how == "mask":
            return y.masked_fill(~(y > 0), 0) + y[y > 0].sum()
        if self.how == "tolist":
            return y * len(y.flatten().tolist())
        if self.how == "custom op":
            return y * three_ops(torch.tensor(float(y.detach().max())))
        return y


@pytest.mark.parametrize("how,ops", [("item", ["aten._local_scalar_dense.default"]),
                                     ("mask", ["aten.index.Tensor", "aten.index_put.default"]),
                                     ("tolist", ["Tensor.tolist()"]),
                                     ("custom op", ["aten._local_scalar_dense.default"])])
def test_host_syncs_names_the_op_and_the_line(how, ops):
    found = host_syncs(_Syncing(how), (1, 4, 4))
    assert [sync.op for sync in found] == ops
    assert found[0].where.startswith("tests/network/test_step_ops.py:") and found[0].where.endswith("in forward")
    if how == "mask":  # the mask's gradient is a masked write, in backward
        assert found[1].where == "backward node IndexBackward0"


def test_host_syncs_finds_none_in_a_clean_step():
    assert host_syncs(_Syncing("none"), (1, 4, 4)) == []


@pytest.mark.parametrize("n_dims,shape", [(2, (1, 16, 16)), (2, (1, 20, 12)), (3, (1, 12, 20, 8))],
                         ids=["2d", "2d-uneven-windows", "3d-uneven-windows"])
def test_train_step_does_not_stop_the_host(n_dims, shape):
    """Forward, loss and backward of RWKV-SSS, batch 2, with no op a CUDA graph could not capture.
    The uneven sizes cut maps into windows of different lengths (the operator gets `lengths`)."""
    torch.manual_seed(0)
    found = host_syncs(RWKVSSSUNet(**tiny_kwargs(n_dims)), shape, 2)
    assert not found, "\n".join(sorted({f"{s.op} at {s.where} inside {s.within or '-'}: {s.reason}" for s in found}))
