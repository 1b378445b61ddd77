// Bi-WKV on the CPU: fused O(T) scans, vectorised over the contiguous channel dimension and
// parallel (OpenMP) over (sequence, block of up to 64 channels). A plain C ABI, no torch
// headers (so the one-time build takes seconds); kernels/cpu_ext.py builds, loads and calls it.
// The maths is in docs/kernels.md.
//
// With lam = exp(-w/L), E_t = exp(k_t - max k) and v centred on the value at the key max:
//   forward : y_t = centre + (a_t + c_t + e^{u/L} E_t v_t) / (b_t + d_t + e^{u/L} E_t), where
//             a (b) is the prefix scan a_{t+1} = lam a_t + E_t v_t (+ E_t) and c (d) the suffix scan
//   backward: p = g / den, q = -p (y - centre); the same scans on p and q give grad v, grad k;
//             the distance-weighted scans P2_{t+1} = lam (P2_t + P_t) give grad w.
// Precision: each sequence is cut into chunks of kChunk steps. Inside a chunk the scans run in
// fp32 (at most kChunk roundings); the states carried from chunk to chunk, and the w/u
// reductions, are fp64 (a state carried in fp32 over T steps would lose ~T * 6e-8). Pass A
// walks the chunks forwards and keeps the prefix states at every chunk start; pass B walks them
// backwards, rebuilds each chunk's prefix states in a small cached buffer, and runs the suffix
// scans and the outputs. The forward parks E and E (v - centre) in the den/yc outputs between
// the passes (one exp per element); the backward parks p and q in grad v/grad k.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

// Channels per vector: one native register of fp32. Wider generic vectors than the ISA has
// (16 lanes on AVX2) compile to spills and scalar selects, several times slower.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#define NNUNET_SSS_HALVES 0, 1, 2, 3, 4, 5, 6, 7
#define NNUNET_SSS_UPPER 8, 9, 10, 11, 12, 13, 14, 15
#else
constexpr int kLanes = 8;
#define NNUNET_SSS_HALVES 0, 1, 2, 3
#define NNUNET_SSS_UPPER 4, 5, 6, 7
#endif
constexpr int kGroups = 64 / kLanes;  // vectors per task: 64 channels
constexpr int64_t kChunk = 16;   // steps per chunk

typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef float vh __attribute__((vector_size(kLanes / 2 * sizeof(float))));
typedef double vd __attribute__((vector_size(kLanes / 2 * sizeof(double))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf splat(float x) { return vf{} + x; }

// kLanes lanes in fp64, as two halves.
struct vd2 {
  vd lo, hi;
};
inline vd2 operator+(vd2 a, vd2 b) { return {a.lo + b.lo, a.hi + b.hi}; }
inline vd2 operator*(vd2 a, vd2 b) { return {a.lo * b.lo, a.hi * b.hi}; }
inline vd2 operator*(vd2 a, double b) { return {a.lo * b, a.hi * b}; }
inline vd2 widen(vf x) {
  const vh lo = __builtin_shufflevector(x, x, NNUNET_SSS_HALVES);
  const vh hi = __builtin_shufflevector(x, x, NNUNET_SSS_UPPER);
  return {__builtin_convertvector(lo, vd), __builtin_convertvector(hi, vd)};
}
inline vf narrow(vd2 x) {
  const vh lo = __builtin_convertvector(x.lo, vh), hi = __builtin_convertvector(x.hi, vh);
  return __builtin_shufflevector(lo, hi, NNUNET_SSS_HALVES, NNUNET_SSS_UPPER);
}

// Loads and stores of one group of lanes; the last group of a block may be partial (its
// spare lanes read 0 and are never written). kFull picks the plain version at compile time.
template <bool kFull>
struct Lanes {
  int valid;
  vf load(const float* p) const {
    vf x{};
    if constexpr (kFull) std::memcpy(&x, p, sizeof(x));
    else for (int i = 0; i < valid; ++i) x[i] = p[i];
    return x;
  }
  void store(float* p, vf x) const {
    if constexpr (kFull) std::memcpy(p, &x, sizeof(x));
    else for (int i = 0; i < valid; ++i) p[i] = x[i];
  }
};

// exp(x) for x <= 0: Cephes-style range reduction and polynomial, 2^n written into the
// exponent bits; exactly 0 below -87.3 (where fp32 underflows anyway).
inline vf exp_neg(vf x) {
  const vf clamped = x < -87.3f ? splat(-87.3f) : x;
  const vf shifter = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf n = (clamped * 1.44269504088896341f + shifter) - shifter;
  const vf r = clamped - n * 0.693359375f + n * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? splat(0.0f) : p * scale;
}

// exp(k - m) with the rounding of k - m compensated (TwoSum): |k - m| may reach ~2000, where
// that rounding alone would cost 1e-4 relative error.
inline vf exp_diff(vf k, vf m) {
  const vf s = k - m;
  const vf b_virtual = s - k;
  const vf err = (k - (s - b_virtual)) + (-m - b_virtual);
  return exp_neg(s) * (1.0f + err);
}

struct Task {
  int64_t length, t_max, chans, c0;
  int groups, tail;  // vectors in this block; valid lanes of the last one
  int valid(int g) const { return g == groups - 1 ? tail : kLanes; }
  int64_t chunks() const { return (length + kChunk - 1) / kChunk; }
  int64_t chunk_end(int64_t j) const { return std::min(length, (j + 1) * kChunk); }
};

// Runs fn(io, g) for every group of a task: io is Lanes<true> for the full groups,
// Lanes<false> for a partial last one. The passes call it once per row or chunk, so that all
// groups of a row are used while its cache lines are in L1: a row of 64 channels is 256 B, and
// walking one group through the whole sequence at a time would stream every line once per
// group (and the whole sequence's pages through the TLB again).
template <typename Fn>
inline void for_groups(const Task& b, Fn fn) {
  for (int g = 0; g < b.groups; ++g) {
    if (b.valid(g) == kLanes) fn(Lanes<true>{kLanes}, g);
    else fn(Lanes<false>{b.valid(g)}, g);
  }
}

// Per-group constants: key max, centre (value at the key max), lam = e^{-w/L} in fp32,
// lam^kChunk and lam^(length of the last chunk) in fp64, e^{u/L}.
struct Consts {
  vf m[kGroups], centre[kGroups], lam[kGroups], bonus[kGroups];
  vd2 lam_chunk[kGroups], lam_last[kGroups];
  double bonus_d[kGroups][kLanes];
  vd2 lam_steps(int g, int64_t n, const Task& b) const {
    return n == kChunk ? lam_chunk[g] : (n == b.length - (b.chunks() - 1) * kChunk ? lam_last[g] : vd2{});
  }
};

// The key max and centre come from a pass over the keys, or (backward) from the forward's.
void block_consts(const Task& b, const float* k, const float* v, const float* w, const float* u,
                  const float* saved_max, const float* saved_centre, Consts& s) {
  const int64_t C = b.chans, L = b.length;
  if (saved_max) {
    for_groups(b, [&](auto io, int g) {
      s.m[g] = io.load(saved_max + b.c0 + g * kLanes);
      s.centre[g] = io.load(saved_centre + b.c0 + g * kLanes);
    });
  } else {
    // The key max's position per lane; the centre is read from v afterwards, so this pass
    // streams the keys only.
    vi at[kGroups];
    for (int g = 0; g < b.groups; ++g) {
      s.m[g] = splat(-std::numeric_limits<float>::infinity());
      at[g] = vi{};
    }
    for (int64_t t = 0; t < L; ++t) {
      const vi here = vi{} + static_cast<int32_t>(t);
      for_groups(b, [&](auto io, int g) {
        const vf kk = io.load(k + t * C + g * kLanes);
        const auto larger = kk > s.m[g];
        s.m[g] = larger ? kk : s.m[g];
        at[g] = larger ? here : at[g];
      });
    }
    for (int g = 0; g < b.groups; ++g) {  // an empty sequence: max and centre 0
      s.centre[g] = splat(0.0f);
      if (L == 0) s.m[g] = splat(0.0f);
      else for (int i = 0; i < b.valid(g); ++i)
        s.centre[g][i] = v[static_cast<int64_t>(at[g][i]) * C + g * kLanes + i];
    }
  }
  const double inv_len = 1.0 / static_cast<double>(std::max<int64_t>(L, 1));
  const int64_t last = L - (b.chunks() - 1) * kChunk;
  for (int g = 0; g < b.groups; ++g) {
    double lam_chunk[kLanes], lam_last[kLanes];
    for (int i = 0; i < kLanes; ++i) {
      const int64_t c = b.c0 + g * kLanes + std::min(i, b.valid(g) - 1);
      const double wp = static_cast<double>(w[c]) * inv_len;
      s.lam[g][i] = static_cast<float>(std::exp(-wp));
      lam_chunk[i] = std::exp(-wp * kChunk);
      lam_last[i] = std::exp(-wp * static_cast<double>(last));
      s.bonus_d[g][i] = std::exp(static_cast<double>(u[c]) * inv_len);
      s.bonus[g][i] = static_cast<float>(s.bonus_d[g][i]);
    }
    std::memcpy(&s.lam_chunk[g], lam_chunk, sizeof(lam_chunk));
    std::memcpy(&s.lam_last[g], lam_last, sizeof(lam_last));
  }
}

void forward_task(const Task& b, const float* k, const float* v, const float* w, const float* u,
                  float* y, float* yc, float* den, float* k_max, float* centre) {
  const int64_t C = b.chans, n_chunks = b.chunks();
  const int G = b.groups;
  k += b.c0; v += b.c0; y += b.c0; yc += b.c0; den += b.c0;
  Consts s;
  block_consts(b, k, v, w, u, nullptr, nullptr, s);
  for_groups(b, [&](auto io, int g) {
    io.store(k_max + b.c0 + g * kLanes, s.m[g]);
    io.store(centre + b.c0 + g * kLanes, s.centre[g]);
  });
  std::vector<vd2> carry(static_cast<size_t>(n_chunks) * 2 * G);  // prefix (a, b) at chunk starts
  vd2 a[kGroups] = {}, d[kGroups] = {};
  for (int64_t j = 0; j < n_chunks; ++j) {  // pass A
    for_groups(b, [&](auto io, int g) {
      carry[(j * G + g) * 2] = a[g]; carry[(j * G + g) * 2 + 1] = d[g];
      const vf m = s.m[g], ctr = s.centre[g], lam = s.lam[g];
      vf la{}, ld{};
      for (int64_t t = j * kChunk; t < b.chunk_end(j); ++t) {
        const int64_t off = t * C + g * kLanes;
        const vf e = exp_diff(io.load(k + off), m);
        const vf ev = e * (io.load(v + off) - ctr);
        io.store(den + off, e);  // parked for pass B
        io.store(yc + off, ev);
        la = lam * la + ev;
        ld = lam * ld + e;
      }
      a[g] = s.lam_chunk[g] * a[g] + widen(la);
      d[g] = s.lam_chunk[g] * d[g] + widen(ld);
    });
  }
  vd2 sa[kGroups] = {}, sd[kGroups] = {};  // suffix states
  for (int64_t j = n_chunks - 1; j >= 0; --j) {  // pass B
    const int64_t t0 = j * kChunk, t1 = b.chunk_end(j);
    for_groups(b, [&](auto io, int g) {
      const vf ctr = s.centre[g], lam = s.lam[g], bonus = s.bonus[g];
      vf buf[kChunk * 2];
      vf pa = narrow(carry[(j * G + g) * 2]), pd = narrow(carry[(j * G + g) * 2 + 1]);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t off = t * C + g * kLanes;
        buf[2 * (t - t0)] = pa; buf[2 * (t - t0) + 1] = pd;
        pa = lam * pa + io.load(yc + off);
        pd = lam * pd + io.load(den + off);
      }
      vf xa = narrow(sa[g]), xd = narrow(sd[g]), la{}, ld{};
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const int64_t off = t * C + g * kLanes;
        const vf e = io.load(den + off), ev = io.load(yc + off);
        const vf num = buf[2 * (t - t0)] + xa + bonus * ev;
        const vf de = buf[2 * (t - t0) + 1] + xd + bonus * e;
        const vf ratio = num / de;
        io.store(yc + off, ratio);
        io.store(y + off, ratio + ctr);
        io.store(den + off, de);
        xa = lam * xa + ev; xd = lam * xd + e;
        la = lam * la + ev; ld = lam * ld + e;
      }
      const vd2 lam_n = s.lam_steps(g, t1 - t0, b);
      sa[g] = lam_n * sa[g] + widen(la);
      sd[g] = lam_n * sd[g] + widen(ld);
    });
  }
  for (int64_t t = b.length; t < b.t_max; ++t) {
    for_groups(b, [&](auto io, int g) {
      const int64_t off = t * C + g * kLanes;
      io.store(y + off, splat(0.0f));
      io.store(yc + off, splat(0.0f));
      io.store(den + off, splat(1.0f));
    });
  }
}

void backward_task(const Task& b, const float* gy, const float* k, const float* v, const float* w,
                   const float* u, const float* yc, const float* den, const float* k_max,
                   const float* centre, float* gk, float* gv, double* gw, double* gu) {
  const int64_t C = b.chans, n_chunks = b.chunks();
  const int G = b.groups;
  gy += b.c0; k += b.c0; v += b.c0; yc += b.c0; den += b.c0; gk += b.c0; gv += b.c0;
  Consts s;
  block_consts(b, k, v, w, u, k_max, centre, s);
  // prefix states at chunk starts: P, Q (scans of p, q) and P2, Q2 (distance-weighted)
  std::vector<vd2> carry(static_cast<size_t>(n_chunks) * 4 * G);
  const double inv_len = 1.0 / static_cast<double>(std::max<int64_t>(b.length, 1));
  vd2 P[kGroups] = {}, Q[kGroups] = {}, P2[kGroups] = {}, Q2[kGroups] = {};
  for (int64_t j = 0; j < n_chunks; ++j) {  // pass A
    for_groups(b, [&](auto io, int g) {
      const vf lam = s.lam[g];
      vd2* keep = &carry[(j * G + g) * 4];
      keep[0] = P[g]; keep[1] = Q[g]; keep[2] = P2[g]; keep[3] = Q2[g];
      vf lp{}, lq{}, lp2{}, lq2{};
      for (int64_t t = j * kChunk; t < b.chunk_end(j); ++t) {
        const int64_t off = t * C + g * kLanes;
        const vf p = io.load(gy + off) / io.load(den + off);
        const vf q = -p * io.load(yc + off);
        io.store(gv + off, p);  // parked for pass B
        io.store(gk + off, q);
        lp2 = lam * (lp2 + lp); lq2 = lam * (lq2 + lq);
        lp = lam * lp + p; lq = lam * lq + q;
      }
      const vd2 lam_n = s.lam_chunk[g];
      P2[g] = lam_n * (P2[g] + P[g] * static_cast<double>(kChunk)) + widen(lp2);
      Q2[g] = lam_n * (Q2[g] + Q[g] * static_cast<double>(kChunk)) + widen(lq2);
      P[g] = lam_n * P[g] + widen(lp);
      Q[g] = lam_n * Q[g] + widen(lq);
    });
  }
  vd2 S[kGroups] = {}, R[kGroups] = {}, S2[kGroups] = {}, R2[kGroups] = {};
  vd2 sum_w[kGroups] = {}, sum_u[kGroups] = {};
  for (int64_t j = n_chunks - 1; j >= 0; --j) {  // pass B
    const int64_t t0 = j * kChunk, t1 = b.chunk_end(j);
    for_groups(b, [&](auto io, int g) {
      const vf m = s.m[g], ctr = s.centre[g], lam = s.lam[g], bonus = s.bonus[g];
      vf buf[kChunk * 4];
      const vd2* keep = &carry[(j * G + g) * 4];
      vf pp = narrow(keep[0]), qq = narrow(keep[1]), pp2 = narrow(keep[2]), qq2 = narrow(keep[3]);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t off = t * C + g * kLanes;
        vf* row = buf + 4 * (t - t0);
        row[0] = pp; row[1] = qq; row[2] = pp2; row[3] = qq2;
        const vf p = io.load(gv + off), q = io.load(gk + off);
        pp2 = lam * (pp2 + pp); qq2 = lam * (qq2 + qq);
        pp = lam * pp + p; qq = lam * qq + q;
      }
      vf xs = narrow(S[g]), xr = narrow(R[g]), xs2 = narrow(S2[g]), xr2 = narrow(R2[g]);
      vf ls{}, lr{}, ls2{}, lr2{}, acc_w{}, acc_u{};
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const int64_t off = t * C + g * kLanes;
        const vf* row = buf + 4 * (t - t0);
        const vf p = io.load(gv + off), q = io.load(gk + off);
        const vf e = exp_diff(io.load(k + off), m);
        const vf vc = io.load(v + off) - ctr;
        const vf grad_v = e * (bonus * p + row[0] + xs);
        io.store(gv + off, grad_v);
        io.store(gk + off, vc * grad_v + e * (bonus * q + row[1] + xr));
        acc_w += e * (vc * (row[2] + xs2) + row[3] + xr2);
        acc_u += e * (p * vc + q);
        xs2 = lam * (xs2 + xs); xr2 = lam * (xr2 + xr);
        xs = lam * xs + p; xr = lam * xr + q;
        ls2 = lam * (ls2 + ls); lr2 = lam * (lr2 + lr);
        ls = lam * ls + p; lr = lam * lr + q;
      }
      const vd2 lam_n = s.lam_steps(g, t1 - t0, b);
      const double n = static_cast<double>(t1 - t0);
      S2[g] = lam_n * (S2[g] + S[g] * n) + widen(ls2);
      R2[g] = lam_n * (R2[g] + R[g] * n) + widen(lr2);
      S[g] = lam_n * S[g] + widen(ls);
      R[g] = lam_n * R[g] + widen(lr);
      sum_w[g] = sum_w[g] + widen(acc_w);
      sum_u[g] = sum_u[g] + widen(acc_u);
    });
  }
  for_groups(b, [&](auto io, int g) {
    double dw[kLanes], du[kLanes];  // chain rule through w' = w / L, u' = u / L
    std::memcpy(dw, &sum_w[g], sizeof(dw));
    std::memcpy(du, &sum_u[g], sizeof(du));
    for (int i = 0; i < io.valid; ++i) {
      gw[b.c0 + g * kLanes + i] = -dw[i] * inv_len;
      gu[b.c0 + g * kLanes + i] = s.bonus_d[g][i] * du[i] * inv_len;
    }
  });
  for (int64_t t = b.length; t < b.t_max; ++t) {
    for_groups(b, [&](auto io, int g) {
      io.store(gv + t * C + g * kLanes, splat(0.0f));
      io.store(gk + t * C + g * kLanes, splat(0.0f));
    });
  }
}

// Asks Linux to back the 2 MiB-aligned part of a fresh output with transparent huge pages
// (where THP is in `madvise` mode, the common default). The outputs are written once, page
// by page: with 4 KiB pages, faulting them in costs more than the scans themselves once the
// tensors outgrow the allocator's cache (tens of MiB), and the cost grows with T.
void advise_huge_pages(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  const uintptr_t huge = uintptr_t{1} << 21;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + huge - 1) & ~(huge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + static_cast<uintptr_t>(bytes)) & ~(huge - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // advice only
#endif
}

// Calls fn(n, task) for every (sequence, 64-channel block), in parallel where it pays.
template <typename Fn>
void for_tasks(int64_t N, int64_t T, int64_t C, const int64_t* lengths, int threads, Fn fn) {
  const int64_t width = kLanes * kGroups, blocks = (C + width - 1) / width;
  const bool parallel = threads > 1 && N * T * C >= 32768 && N * blocks > 1;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (parallel)
  for (int64_t i = 0; i < N * blocks; ++i) {
    const int64_t n = i / blocks, c0 = (i % blocks) * width, cw = std::min(width, C - c0);
    Task task{lengths ? lengths[n] : T, T, C, c0, static_cast<int>((cw + kLanes - 1) / kLanes),
              static_cast<int>(cw - ((cw - 1) / kLanes) * kLanes)};
    fn(n, task);
  }
}

}  // namespace

extern "C" {

// k, v, y, yc, den: (N, T, C) contiguous fp32; w, u: (C,); lengths: (N,) int64 or null;
// k_max, centre: (N, C). y is the output; yc = y - centre, den, k_max and centre are kept
// for the backward.
void bi_wkv_forward(const float* k, const float* v, const float* w, const float* u,
                    const int64_t* lengths, int64_t N, int64_t T, int64_t C, float* y, float* yc,
                    float* den, float* k_max, float* centre, int threads) {
  for (float* out : {y, yc, den}) advise_huge_pages(out, N * T * C * sizeof(float));
  for_tasks(N, T, C, lengths, threads, [&](int64_t n, const Task& b) {
    const int64_t off = n * T * C;
    forward_task(b, k + off, v + off, w, u, y + off, yc + off, den + off, k_max + n * C, centre + n * C);
  });
}

// grad_w_seq, grad_u_seq: (N, C) fp64, per-sequence parts (already divided by the length).
void bi_wkv_backward(const float* gy, const float* k, const float* v, const float* w, const float* u,
                     const int64_t* lengths, int64_t N, int64_t T, int64_t C, const float* yc,
                     const float* den, const float* k_max, const float* centre, float* gk, float* gv,
                     double* grad_w_seq, double* grad_u_seq, int threads) {
  for (float* out : {gk, gv}) advise_huge_pages(out, N * T * C * sizeof(float));
  for_tasks(N, T, C, lengths, threads, [&](int64_t n, const Task& b) {
    const int64_t off = n * T * C;
    backward_task(b, gy + off, k + off, v + off, w, u, yc + off, den + off, k_max + n * C,
                  centre + n * C, gk + off, gv + off, grad_w_seq + n * C, grad_u_seq + n * C);
  });
}

}  // extern "C"
