"""Variable lengths: a padded sequence behaves exactly as if it were passed alone."""
import pytest
import torch

from nnunet_sss.kernels import bi_wkv
from wkv_testing import BACKENDS, TOLERANCE, errors, max_rel_err, op_and_grads, random_inputs, reference_and_grads
T_MAX = 70
LENGTHS = [T_MAX, 0, 1, 2, T_MAX - 1, 37, 16]


def _padded_batch(seed=21):
    k, v, w, u, grad_y = random_inputs(len(LENGTHS), T_MAX, 19, seed=seed)
    lengths = torch.tensor(LENGTHS)
    pad = torch.arange(T_MAX)[None, :, None] >= lengths[:, None, None]
    # whatever sits in the padding must not matter: huge values, infinities and NaNs
    garbage = torch.full_like(k, float("nan"))
    garbage[:, ::3] = 1e30
    garbage[:, 1::3] = -float("inf")
    k, v = torch.where(pad, garbage, k), torch.where(pad, garbage.flip(1), v)
    return k, v, w, u, torch.where(pad, garbage, grad_y), lengths, pad


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_sequence_equals_itself_alone(backend):
    k, v, w, u, grad_y, lengths, pad = _padded_batch()
    y, grad_k, grad_v, grad_w, grad_u = op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend=backend)
    alone_w, alone_u = torch.zeros_like(w), torch.zeros_like(u)
    for n, length in enumerate(LENGTHS):
        seq = [x[n:n + 1, :length] for x in (k, v)]
        y1, gk1, gv1, gw1, gu1 = op_and_grads(*seq, w, u, grad_y[n:n + 1, :length], backend=backend)
        for batched, alone in ((y, y1), (grad_k, gk1), (grad_v, gv1)):
            assert max_rel_err(batched[n:n + 1, :length], alone) <= 1e-6
        alone_w += gw1
        alone_u += gu1
    assert max_rel_err(grad_w, alone_w) <= 1e-6
    assert max_rel_err(grad_u, alone_u) <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_gets_zero_output_and_zero_gradient(backend):
    k, v, w, u, grad_y, lengths, pad = _padded_batch()
    y, grad_k, grad_v, grad_w, grad_u = op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend=backend)
    for x in (y, grad_k, grad_v):
        assert torch.equal(x[pad.expand_as(x)], torch.zeros_like(x[pad.expand_as(x)]))
        assert torch.isfinite(x).all()
    assert torch.isfinite(grad_w).all() and torch.isfinite(grad_u).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_batch_matches_reference(backend):
    """The w/T, u/T scaling uses each sequence's own length."""
    k, v, w, u, grad_y = random_inputs(len(LENGTHS), T_MAX, 19, seed=22)
    lengths = torch.tensor(LENGTHS)
    errs = errors(op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend=backend),
                  reference_and_grads(k, v, w, u, grad_y, lengths))
    assert max(errs.values()) <= TOLERANCE, errs


def test_full_lengths_equal_no_lengths():
    k, v, w, u, _ = random_inputs(3, 20, 5, seed=2)
    assert torch.equal(bi_wkv(k, v, w, u), bi_wkv(k, v, w, u, lengths=torch.full((3,), 20, dtype=torch.int32)))
