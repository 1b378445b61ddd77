"""The Triton kernels compile for a Hopper GPU (sm_90) on a machine without one, and their
default launches keep everything in registers.

The interpreter tests (test_wkv_triton.py) check the maths but never lower the kernels; this
compiles each kernel ahead of time with Triton's own LLVM and ptxas, as a GPU machine would on
the first call, and reads the register and stack use from the cubin. A lowering error, or a
launch whose tiles spill to local memory, fails here instead of on the first GPU session.
"""
import os
import re
import subprocess
import tempfile

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from nnunet_sss.kernels import triton_tiles, triton_wkv  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
INTS = {"T": "i32", "C": "i32", "n_chunks": "i32", "len_ptr": "*i32"}
# (T, C) of the GPU benchmark and of a network-sized call
SHAPES = [(65536, 256), (1000, 96)]


def _kernels(tile):
    if tile:
        t = triton_tiles
        return [t._keys_tile_kernel, t._fwd_local_tile_kernel, t._fwd_out_tile_kernel,
                t._bwd_local_tile_kernel, t._bwd_out_tile_kernel]
    t = triton_wkv
    return [t._keys_kernel, t._fwd_local_kernel, t._fwd_out_kernel, t._bwd_local_kernel, t._bwd_out_kernel]


def _compile(fn, consts, num_warps, input_dtype):
    names = fn.arg_names
    types = {n: ("constexpr" if n in consts else INTS.get(n, input_dtype if n in ("k_ptr", "v_ptr") else "*fp32"))
             for n in names}
    src = ASTSource(fn, types, constexprs={(names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=TARGET, options=dict(num_warps=num_warps))


def _resources(compiled):
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", text)}


@pytest.mark.parametrize("tile", [False, True], ids=["loops", "tiles"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"T{s[0]}_C{s[1]}")
def test_kernels_compile_for_sm90_without_spills(tile, shape):
    cfg = triton_wkv.launch(*shape, tile=tile)
    consts = dict(CHUNK=cfg.chunk, BLOCK_C=cfg.block_c, UNROLL=cfg.unroll)
    kernels = [(fn, consts, dtype) for fn in _kernels(tile) for dtype in ("*fp32", "*bf16")]
    kernels += [(triton_wkv._carry_kernel, dict(PAIRS=pairs, CHUNK=cfg.chunk, BLOCK_C=cfg.block_c), "*fp32")
                for pairs in (1, 2)]
    for fn, kernel_consts, dtype in kernels:
        used = _resources(_compile(fn, kernel_consts, cfg.num_warps, dtype))
        assert used.get("STACK", 0) == 0 and used.get("LOCAL", 0) == 0, (fn.__name__, cfg, used)
        assert 0 < used["REG"] <= 255, (fn.__name__, cfg, used)
