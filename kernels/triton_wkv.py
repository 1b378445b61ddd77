"""Bi-WKV in Triton (CUDA): forward and backward, any T (no T_MAX), any C, fp16/bf16/fp32 in.

The same chunked scan as the C++ kernel (kernels/csrc/bi_wkv.cpp), spread over the GPU:

    keys     grid (N, C blocks, chunks): per-chunk key max and the value there (the centre);
             torch reduces them over the chunks
    local    grid (N, C blocks, chunks): each chunk's scans started from zero, in fp32
    carries  grid (N, C blocks, 2): a short sequential scan over the chunk sums, in fp64, giving
             the prefix state at every chunk start and (second program) the suffix state at
             every chunk end
    outputs  grid (N, C blocks, chunks): each chunk re-runs its scans from its carries and
             writes the outputs

so long sequences are parallel over their chunks and only T / chunk steps are sequential
(`launch` sizes the chunks and the programs). The chunk kernels exist twice: the step loops
below, and the same maths in tile form (kernels/triton_tiles.py, `Launch(tile=True)`); the device
functions both forms call live in kernels/triton_common.py.
Inside a chunk the recurrences are plain fp32 loops over the steps (at most CHUNK roundings);
every load is a contiguous run of BLOCK_C channels. Inputs are read in their own dtype and
computed in fp32. Triton is imported here, and this module only when the backend is used.
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import triton_tiles
from .triton_common import _decay_bonus, _kernel, _keys_values, _p_q, _program, _sequence, _store4, _store_keys

CHUNK = 64  # steps per chunk (at least; shorter sequences use the next power of two >= T)
MAX_CHUNKS = 512  # longer sequences get longer chunks
UNROLL = 1  # step-loop unroll factor
# Tile kernels by default? No: timed on one H100 (N = 8, T = 64k, C = 256, forward+backward) the
# best tile launch took 9.5 ms against the step loops' 8.2 (docs/kernels.md, "Measured on a GPU").
TILE = False
MAX_TILE_CHUNK = 128  # longer tiles would not fit the registers: more chunks instead
_PARTS_FWD = 4  # local sums per chunk: prefix (num, den) at its end, suffix (num, den) at its start
_PARTS_BWD = 8  # prefix P, Q, P2, Q2 and suffix S, R, S2, R2


@triton.jit
def _scan_step(lam, x, y, x2, y2, dx, dy):
    """One step of the scans of p and q and of their distance-weighted sums:
    x2 <- lam (x2 + x), x <- lam x + dx (the same for y)."""
    return lam * x + dx, lam * y + dy, lam * (x2 + x), lam * (y2 + y)


@_kernel
def _keys_kernel(k_ptr, v_ptr, len_ptr, max_ptr, centre_ptr, T, C, n_chunks,
                 CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length = tl.load(len_ptr + n)
    best = tl.full([BLOCK_C], float("-inf"), tl.float32)
    centre = tl.zeros([BLOCK_C], tl.float32)
    for i in tl.range(CHUNK, loop_unroll_factor=UNROLL):
        t = j * CHUNK + i
        live = cmask & (t < length)
        kk = tl.load(k_ptr + (n * T + t) * C + cols, mask=live, other=float("-inf")).to(tl.float32)
        vv = tl.load(v_ptr + (n * T + t) * C + cols, mask=live, other=0.0).to(tl.float32)
        larger = kk > best
        best = tl.where(larger, kk, best)
        centre = tl.where(larger, vv, centre)
    _store_keys(max_ptr, centre_ptr, n, j, n_chunks, C, cols, cmask, best, centre)


@_kernel
def _fwd_local_kernel(k_ptr, v_ptr, w_ptr, u_ptr, len_ptr, max_ptr, centre_ptr, local_ptr, T, C, n_chunks,
                      CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length, lam, _, m, ctr = _sequence(len_ptr, w_ptr, u_ptr, max_ptr, centre_ptr, n, C, cols, cmask)
    pa = tl.zeros([BLOCK_C], tl.float32)
    pd = tl.zeros([BLOCK_C], tl.float32)
    sa = tl.zeros([BLOCK_C], tl.float32)
    sd = tl.zeros([BLOCK_C], tl.float32)
    for i in tl.range(CHUNK, loop_unroll_factor=UNROLL):
        t = j * CHUNK + i  # prefix, forwards; steps past the length neither add nor decay
        live = cmask & (t < length)
        e, vc = _keys_values(k_ptr, v_ptr, (n * T + t) * C + cols, live, m, ctr)
        step = tl.where(live, lam, 1.0)
        pa = step * pa + e * vc
        pd = step * pd + e
        t = j * CHUNK + CHUNK - 1 - i  # suffix, backwards
        e, vc = _keys_values(k_ptr, v_ptr, (n * T + t) * C + cols, cmask & (t < length), m, ctr)
        sa = lam * sa + e * vc
        sd = lam * sd + e
    _store4(local_ptr, (n * n_chunks + j) * 4 * C + cols, C, cmask, pa, pd, sa, sd)


@_kernel
def _carry_kernel(local_ptr, carry_ptr, w_ptr, len_ptr, C, n_chunks,
                  PAIRS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr):
    """fp64 scan over the chunk sums: the prefix states at every chunk start (program axis 2 = 0)
    and the suffix states at every chunk end (= 1), one direction per program so that the two
    sequential scans run side by side. PAIRS = 1: (num, den); PAIRS = 2: (P, Q, P2, Q2), backward."""
    n, reverse, cols, cmask = _program(C, BLOCK_C)
    length = tl.load(len_ptr + n)
    w_scaled = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float64) / tl.maximum(length, 1).to(tl.float64)
    parts = 4 * PAIRS
    first = reverse * 2 * PAIRS
    a = tl.zeros([BLOCK_C], tl.float64)
    b = tl.zeros([BLOCK_C], tl.float64)
    a2 = tl.zeros([BLOCK_C], tl.float64)
    b2 = tl.zeros([BLOCK_C], tl.float64)
    for jj in range(n_chunks):
        j = jj + reverse * (n_chunks - 1 - 2 * jj)  # forwards, or backwards for the suffix
        base = (n * n_chunks + j) * parts * C + first * C + cols
        tl.store(carry_ptr + base, a.to(tl.float32), mask=cmask)
        tl.store(carry_ptr + base + C, b.to(tl.float32), mask=cmask)
        steps = tl.minimum(tl.maximum(length - j * CHUNK, 0), CHUNK).to(tl.float64)
        decay = tl.exp(-w_scaled * steps)
        if PAIRS == 2:  # distance-weighted pair: x2 <- lam^n (x2 + n x) + local x2
            tl.store(carry_ptr + base + 2 * C, a2.to(tl.float32), mask=cmask)
            tl.store(carry_ptr + base + 3 * C, b2.to(tl.float32), mask=cmask)
            a2 = decay * (a2 + steps * a) + tl.load(local_ptr + base + 2 * C, mask=cmask, other=0.0).to(tl.float64)
            b2 = decay * (b2 + steps * b) + tl.load(local_ptr + base + 3 * C, mask=cmask, other=0.0).to(tl.float64)
        a = decay * a + tl.load(local_ptr + base, mask=cmask, other=0.0).to(tl.float64)
        b = decay * b + tl.load(local_ptr + base + C, mask=cmask, other=0.0).to(tl.float64)


@_kernel
def _fwd_out_kernel(k_ptr, v_ptr, w_ptr, u_ptr, len_ptr, max_ptr, centre_ptr, carry_ptr,
                    y_ptr, yc_ptr, den_ptr, T, C, n_chunks, CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length, lam, bonus, m, ctr = _sequence(len_ptr, w_ptr, u_ptr, max_ptr, centre_ptr, n, C, cols, cmask)
    base = (n * n_chunks + j) * 4 * C + cols
    pa = tl.load(carry_ptr + base, mask=cmask, other=0.0)
    pd = tl.load(carry_ptr + base + C, mask=cmask, other=0.0)
    for i in tl.range(CHUNK, loop_unroll_factor=UNROLL):  # prefix states, parked in yc and den
        t = j * CHUNK + i
        live = cmask & (t < length)
        at = (n * T + t) * C + cols
        tl.store(yc_ptr + at, pa, mask=live)
        tl.store(den_ptr + at, pd, mask=live)
        e, vc = _keys_values(k_ptr, v_ptr, at, live, m, ctr)
        step = tl.where(live, lam, 1.0)
        pa = step * pa + e * vc
        pd = step * pd + e
    sa = tl.load(carry_ptr + base + 2 * C, mask=cmask, other=0.0)
    sd = tl.load(carry_ptr + base + 3 * C, mask=cmask, other=0.0)
    for i in tl.range(CHUNK, loop_unroll_factor=UNROLL):  # suffix states and the outputs
        t = j * CHUNK + CHUNK - 1 - i
        live = cmask & (t < length)
        at = (n * T + t) * C + cols
        e, vc = _keys_values(k_ptr, v_ptr, at, live, m, ctr)
        num = tl.load(yc_ptr + at, mask=live, other=0.0) + sa + bonus * e * vc
        de = tl.load(den_ptr + at, mask=live, other=1.0) + sd + bonus * e
        ratio = tl.where(live, num / de, 0.0)
        inside = cmask & (t < T)
        tl.store(yc_ptr + at, ratio, mask=inside)
        tl.store(y_ptr + at, tl.where(live, ratio + ctr, 0.0), mask=inside)
        tl.store(den_ptr + at, tl.where(live, de, 1.0), mask=inside)
        sa = lam * sa + e * vc
        sd = lam * sd + e


@_kernel
def _bwd_local_kernel(g_ptr, yc_ptr, den_ptr, w_ptr, u_ptr, len_ptr, local_ptr, T, C, n_chunks,
                      CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length = tl.load(len_ptr + n)
    lam, _ = _decay_bonus(w_ptr, u_ptr, cols, cmask, length)
    pp = tl.zeros([BLOCK_C], tl.float32)
    qq = tl.zeros([BLOCK_C], tl.float32)
    pp2 = tl.zeros([BLOCK_C], tl.float32)
    qq2 = tl.zeros([BLOCK_C], tl.float32)
    ss = tl.zeros([BLOCK_C], tl.float32)
    rr = tl.zeros([BLOCK_C], tl.float32)
    ss2 = tl.zeros([BLOCK_C], tl.float32)
    rr2 = tl.zeros([BLOCK_C], tl.float32)
    for i in tl.range(CHUNK, loop_unroll_factor=UNROLL):
        t = j * CHUNK + i  # prefix, forwards
        live = cmask & (t < length)
        p, q = _p_q(g_ptr, den_ptr, yc_ptr, (n * T + t) * C + cols, live)
        step = tl.where(live, lam, 1.0)
        pp, qq, pp2, qq2 = _scan_step(step, pp, qq, pp2, qq2, p, q)
        t = j * CHUNK + CHUNK - 1 - i  # suffix, backwards
        p, q = _p_q(g_ptr, den_ptr, yc_ptr, (n * T + t) * C + cols, cmask & (t < length))
        ss, rr, ss2, rr2 = _scan_step(lam, ss, rr, ss2, rr2, p, q)
    out = (n * n_chunks + j) * 8 * C + cols
    _store4(local_ptr, out, C, cmask, pp, qq, pp2, qq2)
    _store4(local_ptr, out + 4 * C, C, cmask, ss, rr, ss2, rr2)


@_kernel
def _bwd_out_kernel(g_ptr, k_ptr, v_ptr, w_ptr, u_ptr, len_ptr, yc_ptr, den_ptr, max_ptr, centre_ptr,
                    carry_ptr, gk_ptr, gv_ptr, part_ptr, T, C, n_chunks,
                    CHUNK: tl.constexpr, BLOCK_C: tl.constexpr, UNROLL: tl.constexpr):
    n, j, cols, cmask = _program(C, BLOCK_C)
    length, lam, bonus, m, ctr = _sequence(len_ptr, w_ptr, u_ptr, max_ptr, centre_ptr, n, C, cols, cmask)
    base = (n * n_chunks + j) * 8 * C + cols
    pp = tl.load(carry_ptr + base, mask=cmask, other=0.0)
    qq = tl.load(carry_ptr + base + C, mask=cmask, other=0.0)
    pp2 = tl.load(carry_ptr + base + 2 * C, mask=cmask, other=0.0)
    qq2 = tl.load(carry_ptr + base + 3 * C, mask=cmask, other=0.0)
    acc_w = tl.zeros([BLOCK_C], tl.float32)
    acc_u = tl.zeros([BLOCK_C], tl.float32)
    for i in tl.range(CHUNK, loop_unroll_factor=UNROLL):  # prefix states: P, Q parked in grad v, grad k; prefix part of grad w
        t = j * CHUNK + i
        live = cmask & (t < length)
        at = (n * T + t) * C + cols
        p, q = _p_q(g_ptr, den_ptr, yc_ptr, at, live)
        e, vc = _keys_values(k_ptr, v_ptr, at, live, m, ctr)
        tl.store(gv_ptr + at, pp, mask=live)
        tl.store(gk_ptr + at, qq, mask=live)
        acc_w += e * (vc * pp2 + qq2)
        step = tl.where(live, lam, 1.0)
        pp, qq, pp2, qq2 = _scan_step(step, pp, qq, pp2, qq2, p, q)
    ss = tl.load(carry_ptr + base + 4 * C, mask=cmask, other=0.0)
    rr = tl.load(carry_ptr + base + 5 * C, mask=cmask, other=0.0)
    ss2 = tl.load(carry_ptr + base + 6 * C, mask=cmask, other=0.0)
    rr2 = tl.load(carry_ptr + base + 7 * C, mask=cmask, other=0.0)
    for i in tl.range(CHUNK, loop_unroll_factor=UNROLL):  # suffix states and the gradients
        t = j * CHUNK + CHUNK - 1 - i
        live = cmask & (t < length)
        at = (n * T + t) * C + cols
        p, q = _p_q(g_ptr, den_ptr, yc_ptr, at, live)
        e, vc = _keys_values(k_ptr, v_ptr, at, live, m, ctr)
        grad_v = e * (bonus * p + tl.load(gv_ptr + at, mask=live, other=0.0) + ss)
        grad_k = vc * grad_v + e * (bonus * q + tl.load(gk_ptr + at, mask=live, other=0.0) + rr)
        inside = cmask & (t < T)
        tl.store(gv_ptr + at, tl.where(live, grad_v, 0.0), mask=inside)
        tl.store(gk_ptr + at, tl.where(live, grad_k, 0.0), mask=inside)
        acc_w += e * (vc * ss2 + rr2)
        acc_u += e * (p * vc + q)
        ss, rr, ss2, rr2 = _scan_step(lam, ss, rr, ss2, rr2, p, q)
    out = (n * n_chunks + j) * 2 * C + cols
    tl.store(part_ptr + out, acc_w, mask=cmask)
    tl.store(part_ptr + out + C, acc_u, mask=cmask)


@dataclass(frozen=True)
class Launch:
    """How the kernels spread over the GPU; the result does not depend on it (up to rounding)."""
    chunk: int      # steps per chunk: T / chunk steps stay sequential, in the carry scan
    block_c: int    # channels per program: one contiguous load of this many per step
    num_warps: int
    unroll: int     # unroll factor of the step loops, so loads of later steps issue early
    tile: bool = False  # chunk kernels in tile form (kernels/triton_tiles.py) instead of step loops

    def meta(self):
        return dict(CHUNK=self.chunk, BLOCK_C=self.block_c, num_warps=self.num_warps, UNROLL=self.unroll)

    def kernels(self):
        """(keys, forward local, forward out, backward local, backward out) kernels."""
        if not self.tile:
            return _keys_kernel, _fwd_local_kernel, _fwd_out_kernel, _bwd_local_kernel, _bwd_out_kernel
        tt = triton_tiles
        return (tt._keys_tile_kernel, tt._fwd_local_tile_kernel, tt._fwd_out_tile_kernel,
                tt._bwd_local_tile_kernel, tt._bwd_out_tile_kernel)


def launch(t_max, chans, chunk=None, block_c=None, num_warps=None, unroll=None, tile=None) -> Launch:
    """The default launch for (T, C); any field may be given (tests, the benchmark's sweep).
    Chunks grow with T so that at most MAX_CHUNKS of them are scanned one after the other.
    A tile kernel holds a dozen chunk x block_c tiles: 8 values per thread keep them in
    registers on sm_90 (tests/kernels/test_wkv_triton_compile.py), so tiles get more warps and
    long chunks fewer channels (and chunks stop at MAX_TILE_CHUNK)."""
    tile = TILE if tile is None else bool(tile)
    if chunk is None:
        longest = max(CHUNK, triton.next_power_of_2(triton.cdiv(max(t_max, 1), MAX_CHUNKS)))
        chunk = min(longest, MAX_TILE_CHUNK if tile else longest, triton.next_power_of_2(max(t_max, 1)))
    if not tile:
        block_c = block_c or max(16, min(64, triton.next_power_of_2(chans)))
        return Launch(chunk, block_c, num_warps or max(1, block_c // 64), unroll or UNROLL)
    block_c = block_c or max(16, min(32, 2048 // chunk, triton.next_power_of_2(chans)))
    return Launch(chunk, block_c, num_warps or max(1, min(8, chunk * block_c // 256)), unroll or UNROLL, True)


def _lengths(lengths, n_seq, t_max, device):
    if lengths is None:
        return torch.full((n_seq,), t_max, dtype=torch.int32, device=device)
    return lengths.to(device=device, dtype=torch.int32).contiguous()


def _keys(kernel, k, v, lengths, n_chunks, grid, cfg):
    """Key max over the real tokens and v there (one such token), float32 (N, C)."""
    n_seq, t_max, chans = k.shape
    chunk_max = torch.empty((n_seq, n_chunks, chans), dtype=torch.float32, device=k.device)
    chunk_centre = torch.empty_like(chunk_max)
    kernel[grid](k, v, lengths, chunk_max, chunk_centre, t_max, chans, n_chunks, **cfg.meta())
    k_max, at = chunk_max.max(1, keepdim=True)
    centre = chunk_centre.gather(1, at).squeeze(1)
    k_max = k_max.squeeze(1)
    return torch.where(torch.isfinite(k_max), k_max, torch.zeros_like(k_max)), centre


def forward(k, v, w, u, lengths, cfg=None):
    """(y, y - centre, den, key max, centre), float32, as kernels/cpu_ext.py returns them.

    cfg: a Launch, None for `launch(T, C)` (tests use small chunks to cover the carries at
    small T)."""
    k, v, w, u = (x.contiguous() for x in (k, v, w, u))
    n_seq, t_max, chans = k.shape
    f32 = dict(dtype=torch.float32, device=k.device)
    y, yc, den = (torch.empty((n_seq, t_max, chans), **f32) for _ in range(3))
    if k.numel() == 0:
        zeros = torch.zeros((n_seq, chans), **f32)
        return y, yc, den, zeros, zeros.clone()
    lengths = _lengths(lengths, n_seq, t_max, k.device)
    cfg = cfg or launch(t_max, chans)
    n_chunks = triton.cdiv(t_max, cfg.chunk)
    grid = (n_seq, triton.cdiv(chans, cfg.block_c), n_chunks)
    keys_kernel, local_kernel, out_kernel, _, _ = cfg.kernels()
    k_max, centre = _keys(keys_kernel, k, v, lengths, n_chunks, grid, cfg)
    local = torch.empty((n_seq, n_chunks, _PARTS_FWD, chans), **f32)
    carry = torch.empty_like(local)
    meta = cfg.meta()
    local_kernel[grid](k, v, w, u, lengths, k_max, centre, local, t_max, chans, n_chunks, **meta)
    _carry_kernel[(*grid[:2], 2)](local, carry, w, lengths, chans, n_chunks, PAIRS=1, CHUNK=cfg.chunk,
                                  BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    out_kernel[grid](k, v, w, u, lengths, k_max, centre, carry, y, yc, den, t_max, chans, n_chunks, **meta)
    return y, yc, den, k_max, centre


def backward(grad_y, k, v, w, u, lengths, yc, den, k_max, centre, cfg=None):
    """Float32 gradients for k, v, w, u (cfg: as for `forward`)."""
    grad_y, k, v, w, u = (x.contiguous() for x in (grad_y, k, v, w, u))
    # the op hands back the forward's saved states in the inputs' compute dtype (float64 for
    # float64 inputs); the kernels read them as the fp32 they were computed in
    yc, den, k_max, centre = (x.to(torch.float32).contiguous() for x in (yc, den, k_max, centre))
    n_seq, t_max, chans = k.shape
    f32 = dict(dtype=torch.float32, device=k.device)
    grad_k, grad_v = torch.empty((n_seq, t_max, chans), **f32), torch.empty((n_seq, t_max, chans), **f32)
    if k.numel() == 0:
        return grad_k, grad_v, torch.zeros((chans,), **f32), torch.zeros((chans,), **f32)
    lengths = _lengths(lengths, n_seq, t_max, k.device)
    cfg = cfg or launch(t_max, chans)
    n_chunks = triton.cdiv(t_max, cfg.chunk)
    grid = (n_seq, triton.cdiv(chans, cfg.block_c), n_chunks)
    meta = cfg.meta()
    _, _, _, local_kernel, out_kernel = cfg.kernels()
    local = torch.empty((n_seq, n_chunks, _PARTS_BWD, chans), **f32)
    carry = torch.empty_like(local)
    parts = torch.empty((n_seq, n_chunks, 2, chans), **f32)
    local_kernel[grid](grad_y, yc, den, w, u, lengths, local, t_max, chans, n_chunks, **meta)
    _carry_kernel[(*grid[:2], 2)](local, carry, w, lengths, chans, n_chunks, PAIRS=2, CHUNK=cfg.chunk,
                                  BLOCK_C=cfg.block_c, num_warps=cfg.num_warps)
    out_kernel[grid](grad_y, k, v, w, u, lengths, yc, den, k_max, centre, carry, grad_k, grad_v,
                     parts, t_max, chans, n_chunks, **meta)
    # chain rule through w' = w / L and u' = u / L, summed over the sequences in float64
    per_seq = parts.to(torch.float64).sum(1) / lengths.clamp(min=1).to(torch.float64)[:, None, None]
    bonus = torch.exp(u.to(torch.float64)[None, :] / lengths.clamp(min=1).to(torch.float64)[:, None])
    grad_w = -per_seq[:, 0].sum(0)
    grad_u = (bonus * per_seq[:, 1]).sum(0)
    return grad_k, grad_v, grad_w.float(), grad_u.float()
