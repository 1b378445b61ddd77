"""Run by test_wkv_triton.py in a subprocess with TRITON_INTERPRET=1 (which must be set before
Triton kernels are imported, and must not leak into the other tests).

Compares the raw Triton kernels (step loops and tiles), on CPU tensors, with the float64
PyTorch path: outputs and the four gradients. Prints one JSON object: case name -> {quantity: max relative error}.
"""
import json
import os
import sys
import time

assert os.environ.get("TRITON_INTERPRET") == "1", "run me with TRITON_INTERPRET=1"

import torch  # noqa: E402

from nnunet_sss.kernels import bi_wkv, torch_scan, triton_wkv  # noqa: E402
from wkv_testing import errors, op_and_grads, random_inputs  # noqa: E402

# (name, N, T, C, lengths, chunk, dtype): small chunks put several chunk carries into short
# sequences; C = 3, 5, 20 are not multiples of the channel block; the lengths include 0, 1,
# and ends on and off chunk edges. (The interpreter runs every program in Python: keep small.)
CASES = [
    ("one_chunk_default", 2, 7, 3, None, None, torch.float32),
    ("carries_and_lengths", 5, 11, 20, [11, 8, 4, 1, 0], 4, torch.float32),
    ("fp16", 1, 6, 5, None, 4, torch.float16),
    ("bf16", 1, 6, 5, None, 4, torch.bfloat16),
    ("extreme", 2, 9, 4, [9, 5], 4, torch.float32),
]


def kernel_results(k, v, w, u, grad_y, lengths, chunk, tile):
    cfg = triton_wkv.launch(k.shape[1], k.shape[2], chunk=chunk, tile=tile)
    out = triton_wkv.forward(k, v, w, u, lengths, cfg)
    grads = triton_wkv.backward(grad_y, k, v, w, u, lengths, *out[1:], cfg)
    return (out[0], *grads)


def torch_results(k, v, w, u, grad_y, lengths):
    y = torch_scan.forward(k, v, w, u, lengths)[0]
    return (y, *torch_scan.backward(grad_y, k, v, w, u, lengths))


def main():
    report, started = {}, time.time()
    for name, n, t, c, lengths, chunk, dtype in CASES:
        extreme = name == "extreme"
        k, v, w, u, grad_y = random_inputs(n, t, c, seed=t * c, k_range=1000.0 if extreme else 20.0,
                                           w_range=50.0 if extreme else 8.0, dtype=dtype)
        lengths = None if lengths is None else torch.tensor(lengths)
        expected = torch_results(k, v, w, u, grad_y, lengths)
        for tile in (False, True):  # the step-loop kernels and the tile kernels
            key = name + ("/tile" if tile else "")
            report[key] = errors(kernel_results(k, v, w, u, grad_y, lengths, chunk, tile), expected)
            print(f"{key}: {time.time() - started:.1f} s", file=sys.stderr)
    # the registered op with backend="triton" (allowed on CPU tensors under the interpreter)
    k, v, w, u, grad_y = random_inputs(2, 6, 3, seed=5)
    lengths = torch.tensor([6, 2])
    report["registered_op"] = errors(op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend="triton"),
                                     op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend="torch"))
    y = bi_wkv(k, v, w, u, lengths=lengths, backend="triton")
    report["registered_op"]["padding_is_zero"] = float(y[1, 2:].abs().max())
    # float64 inputs: the op saves float64 states for the backward, which reads them as fp32
    k, v, w, u, grad_y = random_inputs(2, 6, 3, seed=6, dtype=torch.float64)
    report["registered_op_fp64"] = errors(op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend="triton"),
                                          op_and_grads(k, v, w, u, grad_y, lengths=lengths, backend="torch"))
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
