"""The lean execution of the Stage-Scan block against a plain re-statement of the same maths.

The fast path (the one-op token shift, the scan's gathers and batched merge, the hand-written
mixes, the rebuild of checkpointed layers) must give the network's outputs and every gradient
of the plain path: the slice-by-slice shift, a gather per scan order, plain-autograd mixes (each
fused piece's `*_reference`), no checkpointing. Both in float64, on sizes whose windows leave
padding, isotropic and anisotropic strides, 2D and 3D, with each ablation and candidate switch.
"""
import contextlib

import pytest
import torch
from torch import nn

import nnunet_sss.network.fused as fused_module
import nnunet_sss.network.shift as shift_module
import nnunet_sss.network.spatial_mix as spatial_mix_module
from nnunet_sss import RWKVSSSUNet
from nnunet_sss.kernels import token_shift_reference
from network_cases import tiny_kwargs

ANISO_3D = dict(tiny_kwargs(3), n_stages=3, features_per_stage=[8, 12, 16], kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                strides=[[1, 1, 1], [1, 2, 2], [2, 2, 1]], n_conv_per_stage=[2, 2, 2], local_window=(2, 4, 4))
ANISO_2D = dict(tiny_kwargs(2), strides=[[1, 1], [2, 1], [2, 2]], local_window=(4, 2))


def _plain_scan(x, plan):
    batch, _, channels = x.shape
    return x.index_select(1, plan.index).view(batch * plan.n_orders * plan.n_windows, plan.seq_len, channels)


def _plain_unscan(y, plan, weights=None):
    channels = y.shape[-1]
    y = y.reshape(-1, plan.n_orders * plan.n_windows * plan.seq_len, channels)
    if weights is None:
        weights = y.new_full((plan.n_orders,), 1.0 / plan.n_orders)
    return sum(weights[k] * y.index_select(1, plan.inverse[k]) for k in range(plan.n_orders))


@contextlib.contextmanager
def plain_path(monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(fused_module, "_traced", lambda: True)  # each fused piece's plain-autograd reference
        patch.setattr(shift_module, "token_shift", lambda x, starts, reverse=False: token_shift_reference(
            x, tuple(tuple(a) for a in starts), reverse))
        patch.setattr(spatial_mix_module, "scan", _plain_scan)
        patch.setattr(spatial_mix_module, "unscan", _plain_unscan)
        yield


def _outputs_and_grads(net, x, seed):
    x = x.clone().requires_grad_(True)
    outputs = net(x)
    torch.manual_seed(seed)
    loss = sum((o * torch.randn_like(o)).sum() for o in outputs)
    names = [n for n, p in net.named_parameters()]
    grads = torch.autograd.grad(loss, [x, *net.parameters()])
    return outputs, dict(zip(["input", *names], grads))


CASES = {
    "2d": (tiny_kwargs(2), (12, 20)),
    "3d": (tiny_kwargs(3), (8, 12, 20)),
    "2d-anisotropic": (ANISO_2D, (12, 20)),
    "3d-anisotropic": (ANISO_3D, (6, 12, 20)),
}
SWITCHES = {
    "defaults": {},
    "raster": {"scan": "raster"},
    "global-shift": {"shift": "global"},
    "full-res-wkv": {"wkv_pool": (1,)},
    "mean-mixer": {"wkv_mixer": "mean"},
    "token-decay": {"wkv_decay": "token"},
    "layer-scale": {"layer_scale": 0.5},
    "blocks-after": {"block_placement": "after", "hidden_ratio": 1},
}


# every case with the defaults, every switch in 2D, the switches with a 3D side of their own in 3D
PAIRS = [(case, "defaults") for case in CASES] + [("2d", s) for s in SWITCHES if s != "defaults"] + \
    [("3d", s) for s in ("raster", "global-shift", "full-res-wkv")] + [("3d-anisotropic", "full-res-wkv")]


@pytest.mark.parametrize("case,switch", PAIRS)
def test_fast_path_equals_the_plain_path(case, switch, monkeypatch):
    kwargs, size = CASES[case]
    torch.manual_seed(0)
    fast = RWKVSSSUNet(**kwargs, **SWITCHES[switch], rwkv_checkpoint=True).double()
    plain = RWKVSSSUNet(**kwargs, **SWITCHES[switch], rwkv_checkpoint=False).double()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, kwargs["input_channels"], *size, dtype=torch.float64)
    out_fast, grads_fast = _outputs_and_grads(fast, x, seed=1)
    with plain_path(monkeypatch):
        out_plain, grads_plain = _outputs_and_grads(plain, x, seed=1)
    for a, b in zip(out_fast, out_plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    assert grads_fast.keys() == grads_plain.keys()
    for name in grads_fast:
        torch.testing.assert_close(grads_fast[name], grads_plain[name], rtol=1e-8, atol=1e-10, msg=name)
