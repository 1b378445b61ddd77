"""Device functions shared by the two forms of the Bi-WKV chunk kernels: the step loops
(triton_wkv.py) and the tiles (triton_tiles.py). Both import from here, never from each other
(triton_wkv.py picks the kernels, so it sits above triton_tiles.py).
"""
import triton
import triton.language as tl


# Lengths and chunk counts change with every input size: compiling a variant per value (Triton
# specialises integers equal to 1 or divisible by 16) would only add compile time.
_kernel = triton.jit(do_not_specialize=["T", "n_chunks"])


@triton.jit
def _exp_diff(k, m):
    """exp(k - m), compensating the rounding of k - m (TwoSum), as the C++ kernel does."""
    s = k - m
    b_virtual = s - k
    err = (k - (s - b_virtual)) + (-m - b_virtual)
    return tl.exp(s) * (1.0 + err)


@triton.jit
def _program(C, BLOCK_C: tl.constexpr):
    """(sequence, chunk, channel offsets, channel mask) of this program."""
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return tl.program_id(0).to(tl.int64), tl.program_id(2), cols, cols < C


@triton.jit
def _decay_bonus(w_ptr, u_ptr, cols, cmask, length):
    """lam = e^{-w/L} and e^{u/L} in fp32."""
    inv_len = 1.0 / tl.maximum(length, 1).to(tl.float32)
    lam = tl.exp(-tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32) * inv_len)
    return lam, tl.exp(tl.load(u_ptr + cols, mask=cmask, other=0.0).to(tl.float32) * inv_len)


@triton.jit
def _sequence(len_ptr, w_ptr, u_ptr, max_ptr, centre_ptr, n, C, cols, cmask):
    """Per-sequence constants: real length, lam, e^{u/L}, key max and centre."""
    length = tl.load(len_ptr + n)
    lam, bonus = _decay_bonus(w_ptr, u_ptr, cols, cmask, length)
    m = tl.load(max_ptr + n * C + cols, mask=cmask, other=0.0)
    ctr = tl.load(centre_ptr + n * C + cols, mask=cmask, other=0.0)
    return length, lam, bonus, m, ctr


@triton.jit
def _keys_values(k_ptr, v_ptr, at, live, m, ctr):
    """E = e^{k - max} and v - centre at one step (0 off the real tokens)."""
    kk = tl.load(k_ptr + at, mask=live, other=0.0).to(tl.float32)
    vc = tl.load(v_ptr + at, mask=live, other=0.0).to(tl.float32) - ctr
    return tl.where(live, _exp_diff(kk, m), 0.0), tl.where(live, vc, 0.0)


@triton.jit
def _p_q(g_ptr, den_ptr, yc_ptr, at, live):
    """p = dL/dnum = g / den and q = dL/dden = -p (y - centre) at one step (0 off the real tokens)."""
    p = tl.where(live, tl.load(g_ptr + at, mask=live, other=0.0).to(tl.float32)
                 / tl.load(den_ptr + at, mask=live, other=1.0), 0.0)
    return p, -p * tl.load(yc_ptr + at, mask=live, other=0.0)


@triton.jit
def _store4(ptr, at, C, cmask, a, b, c, d):
    """Four per-channel vectors of a chunk, C apart (the chunk sums and keys outputs)."""
    tl.store(ptr + at, a, mask=cmask)
    tl.store(ptr + at + C, b, mask=cmask)
    tl.store(ptr + at + 2 * C, c, mask=cmask)
    tl.store(ptr + at + 3 * C, d, mask=cmask)


@triton.jit
def _store_keys(max_ptr, centre_ptr, n, j, n_chunks, C, cols, cmask, best, centre):
    out = (n * n_chunks + j) * C + cols
    tl.store(max_ptr + out, best, mask=cmask)
    tl.store(centre_ptr + out, centre, mask=cmask)
