"""Bad input gets a ValueError that names the problem."""
import pytest
import torch

from nnunet_sss.kernels import bi_wkv, op


def _good(n=2, t=5, c=3):
    return torch.randn(n, t, c), torch.randn(n, t, c), torch.randn(c), torch.randn(c)


# case -> (the arguments that replace good ones, words the message must contain)
BAD_INPUTS = {
    "k_rank_2": (lambda k, v, w, u: dict(k=k[0]), ["k", "rank 3"]),
    "k_rank_4": (lambda k, v, w, u: dict(k=k[None]), ["k", "rank 3"]),
    "v_other_c": (lambda k, v, w, u: dict(v=torch.randn(2, 5, 4)), ["v", "mismatched C"]),
    "v_other_t": (lambda k, v, w, u: dict(v=torch.randn(2, 6, 3)), ["v", "shape"]),
    "w_too_long": (lambda k, v, w, u: dict(w=torch.randn(4)), ["w", "(C,)"]),
    "u_matrix": (lambda k, v, w, u: dict(u=u[None]), ["u", "(C,)"]),
    "w_scalar": (lambda k, v, w, u: dict(w=torch.tensor(1.0)), ["w", "(C,)"]),
    "k_int": (lambda k, v, w, u: dict(k=k.long()), ["k", "floating", "torch.int64"]),
    "v_bool": (lambda k, v, w, u: dict(v=v > 0), ["v", "floating", "torch.bool"]),
    "u_int": (lambda k, v, w, u: dict(u=u.int()), ["u", "floating", "torch.int32"]),
    "lengths_float": (lambda k, v, w, u: dict(lengths=torch.tensor([5.0, 2.0])), ["lengths", "integer"]),
    "lengths_shape": (lambda k, v, w, u: dict(lengths=torch.tensor([5, 2, 1])), ["lengths", "(N,)"]),
    "mixed_devices": (lambda k, v, w, u: dict(w=w.to("meta")), ["different devices", "w on meta"]),
    "unknown_backend": (lambda k, v, w, u: dict(backend="cuda"), ["backend", "'cuda'"]),
    "k_not_tensor": (lambda k, v, w, u: dict(k=k.tolist()), ["k", "torch.Tensor"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_it(case):
    k, v, w, u = _good()
    change, words = BAD_INPUTS[case]
    args = dict(k=k, v=v, w=w, u=u, lengths=None, backend=None)
    args.update(change(k, v, w, u))
    with pytest.raises(ValueError) as info:
        bi_wkv(args.pop("k"), args.pop("v"), args.pop("w"), args.pop("u"), **args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("lengths", [[6, 2], [-1, 2]])
def test_lengths_out_of_range_fail_naming_the_bound(lengths):
    """A value check, so an asynchronous assert inside the op (no read-back to the host): a
    RuntimeError, not a ValueError, but it names the problem all the same."""
    k, v, w, u = _good()
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[0, T=5\]"):
        bi_wkv(k, v, w, u, lengths=torch.tensor(lengths))


def test_triton_backend_on_cpu_tensors_is_refused():
    k, v, w, u = _good()
    with pytest.raises(ValueError, match="triton.*CUDA"):
        bi_wkv(k, v, w, u, backend="triton")


def test_cpp_backend_on_other_devices_is_refused():
    """(Checked on the resolver: this machine has no CUDA tensors to pass.)"""
    with pytest.raises(ValueError, match="cpp.*CPU.*cuda"):
        op._resolve("cpp", torch.device("cuda"))
