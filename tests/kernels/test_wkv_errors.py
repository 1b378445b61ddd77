"""Bad input gets a ValueError that names the problem."""
import pytest
import torch

from nnunet_sss.kernels import bi_wkv, op


def _good(n=2, t=5, c=3):
    return torch.randn(n, t, c), torch.randn(n, t, c), torch.randn(c), torch.randn(c)


@pytest.mark.parametrize("case, words", [
    ("k_rank_2", ["k", "rank 3"]),
    ("k_rank_4", ["k", "rank 3"]),
    ("v_other_c", ["v", "mismatched C"]),
    ("v_other_t", ["v", "shape"]),
    ("w_too_long", ["w", "(C,)"]),
    ("u_matrix", ["u", "(C,)"]),
    ("w_scalar", ["w", "(C,)"]),
    ("k_int", ["k", "floating", "torch.int64"]),
    ("v_bool", ["v", "floating", "torch.bool"]),
    ("u_int", ["u", "floating", "torch.int32"]),
    ("lengths_float", ["lengths", "integer"]),
    ("lengths_shape", ["lengths", "(N,)"]),
    ("lengths_too_long", ["lengths", "[0, T=5]"]),
    ("lengths_negative", ["lengths", "[0, T=5]"]),
    ("mixed_devices", ["different devices", "w on meta"]),
    ("unknown_backend", ["backend", "'cuda'"]),
    ("k_not_tensor", ["k", "torch.Tensor"]),
])
def test_bad_input_raises_value_error_naming_it(case, words):
    k, v, w, u = _good()
    kwargs = {}
    if case == "k_rank_2":
        k = k[0]
    elif case == "k_rank_4":
        k = k[None]
    elif case == "v_other_c":
        v = torch.randn(2, 5, 4)
    elif case == "v_other_t":
        v = torch.randn(2, 6, 3)
    elif case == "w_too_long":
        w = torch.randn(4)
    elif case == "u_matrix":
        u = torch.randn(1, 3)
    elif case == "w_scalar":
        w = torch.tensor(1.0)
    elif case == "k_int":
        k = torch.ones(2, 5, 3, dtype=torch.int64)
    elif case == "v_bool":
        v = torch.ones(2, 5, 3, dtype=torch.bool)
    elif case == "u_int":
        u = torch.ones(3, dtype=torch.int32)
    elif case == "lengths_float":
        kwargs["lengths"] = torch.tensor([5.0, 2.0])
    elif case == "lengths_shape":
        kwargs["lengths"] = torch.tensor([5, 2, 1])
    elif case == "lengths_too_long":
        kwargs["lengths"] = torch.tensor([6, 2])
    elif case == "lengths_negative":
        kwargs["lengths"] = torch.tensor([-1, 2])
    elif case == "mixed_devices":
        w = torch.empty(3, device="meta")
    elif case == "unknown_backend":
        kwargs["backend"] = "cuda"
    elif case == "k_not_tensor":
        k = k.tolist()
    with pytest.raises(ValueError) as info:
        bi_wkv(k, v, w, u, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_triton_backend_on_cpu_tensors_is_refused():
    k, v, w, u = _good()
    with pytest.raises(ValueError, match="triton.*CUDA"):
        bi_wkv(k, v, w, u, backend="triton")


def test_cpp_backend_on_other_devices_is_refused():
    """(Checked on the resolver: this machine has no CUDA tensors to pass.)"""
    with pytest.raises(ValueError, match="cpp.*CPU.*cuda"):
        op._resolve("cpp", torch.device("cuda"))
