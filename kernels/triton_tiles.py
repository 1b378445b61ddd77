"""Bi-WKV chunk kernels in tile form: each program loads its whole chunk (CHUNK steps x BLOCK_C
channels) at once and runs the chunk's recurrences as `tl.associative_scan`s in registers,
instead of one step of BLOCK_C channels per loop iteration (triton_wkv.py's step loops).

Why: a step loop issues one small dependent load per step, so a program waits on memory latency
CHUNK times; a tile load puts the whole chunk in flight at once. The maths, the chunk layout,
the carries (triton_wkv._carry_kernel, launched for both forms) and the saved states are the step loops' own, so
`Launch(tile=True)` swaps these kernels in without changing anything else.

Scans in tile form:
- A chunk's local sums (from a zero state) are weighted sums, lam^i = exp(-i w / L), no scan.
- The state before step t, starting from the carry, is an inclusive scan over the chunk with
  the carry injected at the first row and step t - 1's input at row t (a second load of the
  tile shifted by one step, which comes from the cache). The suffix scan is the same, reversed.
- The backward's distance-weighted pair (x, x2) <- (lam x + d, lam (x2 + x)) is an affine map
  with matrix [[a, 0], [c, a]]; `_pair` composes two of them.
"""
import triton
import triton.language as tl

from .triton_common import _kernel, _keys_values, _p_q, _program, _sequence, _store4, _store_keys


@triton.jit
def _linear(a1, x1, y1, a2, x2, y2):
    """Compose h -> a1 h + x1 then h -> a2 h + x2, for two states sharing the decay."""
    return a1 * a2, a2 * x1 + x2, a2 * y1 + y2


@triton.jit
def _pair(a1, c1, x1, x21, y1, y21, a2, c2, x2, x22, y2, y22):
    """Compose (x, x2) -> (a x + ox, c x + a x2 + ox2), first 1 then 2; two pairs (P and Q)
    share a and c."""
    return (a1 * a2, c2 * a1 + a2 * c1, a2 * x1 + x2, c2 * x1 + a2 * x21 + x22,
            a2 * y1 + y2, c2 * y1 + a2 * y21 + y22)


@triton.jit
def _tile(n, j, T, C, cols, cmask, length, CHUNK: tl.constexpr):
    """Rows, offsets and masks of a chunk tile: live = real token, first/last row of the chunk,
    prev/next = the neighbouring step is a real token inside the chunk."""
    rows = tl.arange(0, CHUNK)
    t = j * CHUNK + rows
    cm = cmask[None, :]
    at = (n * T + t)[:, None] * C + cols[None, :]
    live = cm & (t < length)[:, None]
    first = (rows == 0)[:, None]
    last = (rows == CHUNK - 1)[:, None]
    prev = cm & ((t - 1) < length)[:, None] & (rows > 0)[:, None]
    nxt = cm & ((t + 1) < length)[:, None] & (rows < CHUNK - 1)[:, None]
    return rows, t, at, live, first, last, prev, nxt


@triton.jit
def _powers(w_ptr, cols, cmask, length, exponent, live):
    """lam^exponent = exp(-exponent w / L) on the live entries, 0 elsewhere (no inf * 0)."""
    w_scaled = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32) / tl.maximum(length, 1).to(tl.float32)
    e = tl.where(live, exponent, 0).to(tl.float32)
    return tl.where(live, tl.exp(-w_scaled[None, :] * e), 0.0), e


@_kernel
def _keys_tile_kernel(k_ptr, v_ptr, len_ptr, max_ptr, centre_ptr, T, C, n_chunks,
                      CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length = tl.load(len_ptr + n)
    rows, t, at, live, first, last, prev, nxt = _tile(n, j, T, C, cols, cmask, length, CHUNK)
    kk = tl.load(k_ptr + at, mask=live, other=float("-inf")).to(tl.float32)
    vv = tl.load(v_ptr + at, mask=live, other=0.0).to(tl.float32)
    best = tl.max(kk, 0)
    where = tl.argmax(kk, 0)
    centre = tl.sum(tl.where(rows[:, None] == where[None, :], vv, 0.0), 0)
    _store_keys(max_ptr, centre_ptr, n, j, n_chunks, C, cols, cmask, best, centre)


@_kernel
def _fwd_local_tile_kernel(k_ptr, v_ptr, w_ptr, u_ptr, len_ptr, max_ptr, centre_ptr, local_ptr, T, C, n_chunks,
                           CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length, lam, _, m, ctr = _sequence(len_ptr, w_ptr, u_ptr, max_ptr, centre_ptr, n, C, cols, cmask)
    rows, t, at, live, first, last, prev, nxt = _tile(n, j, T, C, cols, cmask, length, CHUNK)
    e, vc = _keys_values(k_ptr, v_ptr, at, live, m[None, :], ctr[None, :])
    count = tl.minimum(tl.maximum(length - j * CHUNK, 0), CHUNK)
    to_end, _ = _powers(w_ptr, cols, cmask, length, (count - 1 - rows)[:, None], live)  # prefix at the chunk end
    from_start, _ = _powers(w_ptr, cols, cmask, length, rows[:, None], live)           # suffix at its start
    _store4(local_ptr, (n * n_chunks + j) * 4 * C + cols, C, cmask, tl.sum(to_end * e * vc, 0),
            tl.sum(to_end * e, 0), tl.sum(from_start * e * vc, 0), tl.sum(from_start * e, 0))


@_kernel
def _fwd_out_tile_kernel(k_ptr, v_ptr, w_ptr, u_ptr, len_ptr, max_ptr, centre_ptr, carry_ptr,
                         y_ptr, yc_ptr, den_ptr, T, C, n_chunks,
                         CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length, lam, bonus, m, ctr = _sequence(len_ptr, w_ptr, u_ptr, max_ptr, centre_ptr, n, C, cols, cmask)
    rows, t, at, live, first, last, prev, nxt = _tile(n, j, T, C, cols, cmask, length, CHUNK)
    m2, ctr2 = m[None, :], ctr[None, :]
    decay = tl.zeros([CHUNK, BLOCK_C], tl.float32) + lam[None, :]
    base = (n * n_chunks + j) * 4 * C + cols
    e, vc = _keys_values(k_ptr, v_ptr, at, live, m2, ctr2)
    # prefix: the state before step t = scan of (carry, input of t - 1)
    e_in, vc_in = _keys_values(k_ptr, v_ptr, at - C, prev, m2, ctr2)
    num = tl.where(first, tl.load(carry_ptr + base, mask=cmask, other=0.0)[None, :], e_in * vc_in)
    de = tl.where(first, tl.load(carry_ptr + base + C, mask=cmask, other=0.0)[None, :], e_in)
    _, pa, pd = tl.associative_scan((decay, num, de), 0, _linear)
    # suffix: the state after step t = reversed scan of (carry, input of t + 1)
    e_in, vc_in = _keys_values(k_ptr, v_ptr, at + C, nxt, m2, ctr2)
    num = tl.where(last, tl.load(carry_ptr + base + 2 * C, mask=cmask, other=0.0)[None, :], e_in * vc_in)
    de = tl.where(last, tl.load(carry_ptr + base + 3 * C, mask=cmask, other=0.0)[None, :], e_in)
    _, sa, sd = tl.associative_scan((decay, num, de), 0, _linear, reverse=True)
    num = pa + sa + bonus[None, :] * e * vc
    de = pd + sd + bonus[None, :] * e
    ratio = tl.where(live, num / tl.where(live, de, 1.0), 0.0)
    inside = cmask[None, :] & (t < T)[:, None]
    tl.store(yc_ptr + at, ratio, mask=inside)
    tl.store(y_ptr + at, tl.where(live, ratio + ctr2, 0.0), mask=inside)
    tl.store(den_ptr + at, tl.where(live, de, 1.0), mask=inside)


@_kernel
def _bwd_local_tile_kernel(g_ptr, yc_ptr, den_ptr, w_ptr, u_ptr, len_ptr, local_ptr, T, C, n_chunks,
                           CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length = tl.load(len_ptr + n)
    rows, t, at, live, first, last, prev, nxt = _tile(n, j, T, C, cols, cmask, length, CHUNK)
    p, q = _p_q(g_ptr, den_ptr, yc_ptr, at, live)
    count = tl.minimum(tl.maximum(length - j * CHUNK, 0), CHUNK)
    to_end, dist = _powers(w_ptr, cols, cmask, length, (count - 1 - rows)[:, None], live)
    from_start, dist_s = _powers(w_ptr, cols, cmask, length, rows[:, None], live)
    out = (n * n_chunks + j) * 8 * C + cols
    _store4(local_ptr, out, C, cmask, tl.sum(to_end * p, 0), tl.sum(to_end * q, 0),
            tl.sum(dist * to_end * p, 0), tl.sum(dist * to_end * q, 0))
    _store4(local_ptr, out + 4 * C, C, cmask, tl.sum(from_start * p, 0), tl.sum(from_start * q, 0),
            tl.sum(dist_s * from_start * p, 0), tl.sum(dist_s * from_start * q, 0))


@_kernel
def _bwd_out_tile_kernel(g_ptr, k_ptr, v_ptr, w_ptr, u_ptr, len_ptr, yc_ptr, den_ptr, max_ptr, centre_ptr,
                         carry_ptr, gk_ptr, gv_ptr, part_ptr, T, C, n_chunks,
                         CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length, lam, bonus, m, ctr = _sequence(len_ptr, w_ptr, u_ptr, max_ptr, centre_ptr, n, C, cols, cmask)
    rows, t, at, live, first, last, prev, nxt = _tile(n, j, T, C, cols, cmask, length, CHUNK)
    decay = tl.zeros([CHUNK, BLOCK_C], tl.float32) + lam[None, :]
    zero = tl.zeros([CHUNK, BLOCK_C], tl.float32)
    base = (n * n_chunks + j) * 8 * C + cols
    p, q = _p_q(g_ptr, den_ptr, yc_ptr, at, live)
    e, vc = _keys_values(k_ptr, v_ptr, at, live, m[None, :], ctr[None, :])
    # prefix states before step t: pair scan of (carry, input of t - 1)
    p_in, q_in = _p_q(g_ptr, den_ptr, yc_ptr, at - C, prev)
    _, _, pp, pp2, qq, qq2 = tl.associative_scan(
        (decay, decay,
         tl.where(first, tl.load(carry_ptr + base, mask=cmask, other=0.0)[None, :], p_in),
         tl.where(first, tl.load(carry_ptr + base + 2 * C, mask=cmask, other=0.0)[None, :], zero),
         tl.where(first, tl.load(carry_ptr + base + C, mask=cmask, other=0.0)[None, :], q_in),
         tl.where(first, tl.load(carry_ptr + base + 3 * C, mask=cmask, other=0.0)[None, :], zero)),
        0, _pair)
    # suffix states after step t: the same, reversed, from the input of t + 1
    p_in, q_in = _p_q(g_ptr, den_ptr, yc_ptr, at + C, nxt)
    _, _, ss, ss2, rr, rr2 = tl.associative_scan(
        (decay, decay,
         tl.where(last, tl.load(carry_ptr + base + 4 * C, mask=cmask, other=0.0)[None, :], p_in),
         tl.where(last, tl.load(carry_ptr + base + 6 * C, mask=cmask, other=0.0)[None, :], zero),
         tl.where(last, tl.load(carry_ptr + base + 5 * C, mask=cmask, other=0.0)[None, :], q_in),
         tl.where(last, tl.load(carry_ptr + base + 7 * C, mask=cmask, other=0.0)[None, :], zero)),
        0, _pair, reverse=True)
    b = bonus[None, :]
    grad_v = e * (b * p + pp + ss)
    grad_k = vc * grad_v + e * (b * q + qq + rr)
    inside = cmask[None, :] & (t < T)[:, None]
    tl.store(gv_ptr + at, tl.where(live, grad_v, 0.0), mask=inside)
    tl.store(gk_ptr + at, tl.where(live, grad_k, 0.0), mask=inside)
    out = (n * n_chunks + j) * 2 * C + cols
    tl.store(part_ptr + out, tl.sum(e * (vc * (pp2 + ss2) + qq2 + rr2), 0), mask=cmask)
    tl.store(part_ptr + out + C, tl.sum(e * (p * vc + q), 0), mask=cmask)
