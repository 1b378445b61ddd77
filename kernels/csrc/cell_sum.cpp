// Sum over the cells of a channels-last map, in one pass: what kernels/cell_sum.py's
// reference computes with a strided reduction. A plain C ABI, no torch headers;
// kernels/cpu_ext.py builds it, kernels/cell_sum.py calls it.
//
// x: (B, S_0..S_{D-1}, C) fp32, D = 1..3; out: (B, S_0/p_0, .., C) fp32, each token the sum of
// the p_0 x .. x p_{D-1} tokens of its cell, times `scale`. The pool divides every axis.
#include <cstdint>

namespace {
constexpr int kMaxDims = 3;
}

extern "C" void cell_sum(const float* x, float* out, int64_t batch, int dims, const int64_t* size,
                         const int64_t* pool, int64_t chans, float scale, int threads) {
  int64_t in_size[kMaxDims] = {1, 1, 1}, cells[kMaxDims] = {1, 1, 1}, p[kMaxDims] = {1, 1, 1};
  const int pad = kMaxDims - dims;  // fewer axes: leading axes of size 1
  for (int a = 0; a < dims; ++a) {
    in_size[pad + a] = size[a];
    p[pad + a] = pool[a];
    cells[pad + a] = size[a] / pool[a];
  }
  const int64_t out_tokens = cells[0] * cells[1] * cells[2];
  const int64_t in_tokens = in_size[0] * in_size[1] * in_size[2];
  const int64_t rows = batch * out_tokens;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / out_tokens;
    int64_t rest = row % out_tokens;
    const int64_t o2 = rest % cells[2];
    rest /= cells[2];
    const int64_t o1 = rest % cells[1];
    const int64_t o0 = rest / cells[1];
    float* dst = out + row * chans;
    for (int64_t c = 0; c < chans; ++c) dst[c] = 0.0f;
    for (int64_t i0 = o0 * p[0]; i0 < (o0 + 1) * p[0]; ++i0) {
      for (int64_t i1 = o1 * p[1]; i1 < (o1 + 1) * p[1]; ++i1) {
        const float* src = x + ((b * in_tokens) + (i0 * in_size[1] + i1) * in_size[2] + o2 * p[2]) * chans;
        for (int64_t i2 = 0; i2 < p[2]; ++i2, src += chans) {
#pragma omp simd
          for (int64_t c = 0; c < chans; ++c) dst[c] += src[c];
        }
      }
    }
    if (scale != 1.0f) {
#pragma omp simd
      for (int64_t c = 0; c < chans; ++c) dst[c] *= scale;
    }
  }
}
