// Linear (bi-/trilinear) sampling of channels-last maps at one point per output voxel, with
// border clamping: what F.grid_sample(mode="bilinear", padding_mode="border") computes, but
// with the channels contiguous, so each corner is one vector load (PyTorch's CPU grid_sample
// in 3D walks the channels with a stride of a whole map, one scalar at a time). A plain C
// ABI, no torch headers; kernels/cpu_ext.py builds it, kernels/sampler.py calls it.
//
// x: (B, S_0..S_{D-1}, C) fp32, D = 1..3; coords: (B, P, D) fp32 in input voxel units (voxel
// i's centre at i); out, grad_out: (B, P, C). A NaN coordinate gives a NaN output row.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

constexpr int kMaxDims = 3;
constexpr int64_t kChannelBlock = 16;  // channels per backward task: grad x has no write races

struct Corners {
  int count;
  int64_t offset[1 << kMaxDims];  // row offset from the point's base row
  float weight[1 << kMaxDims];
  float dweight[kMaxDims][1 << kMaxDims];  // d weight / d coordinate (0 where clamped)
};

// The base row of a point and its corners' offsets, weights and weight derivatives.
inline int64_t corners(const float* c, int dims, const int64_t* size, const int64_t* stride,
                       bool derivatives, Corners& out) {
  float t[kMaxDims], inside[kMaxDims], nan = 1.0f;
  int64_t step[kMaxDims], base = 0;
  for (int a = 0; a < dims; ++a) {
    const float hi = static_cast<float>(size[a] - 1);
    float v = c[a];
    if (std::isnan(v)) {  // read a valid row, poison the weights
      nan = NAN;
      v = 0.0f;
    }
    inside[a] = (v > 0.0f && v < hi) ? 1.0f : 0.0f;  // grid_sample's border: no gradient where clamped
    const float clamped = std::min(std::max(v, 0.0f), hi);
    float lo = std::floor(clamped);
    lo = std::min(lo, std::max(hi - 1.0f, 0.0f));
    t[a] = clamped - lo;
    base += static_cast<int64_t>(lo) * stride[a];
    step[a] = size[a] > 1 ? stride[a] : 0;
  }
  out.count = 1 << dims;
  for (int k = 0; k < out.count; ++k) {
    int64_t off = 0;
    float w = nan;
    for (int a = 0; a < dims; ++a) {
      const bool upper = (k >> (dims - 1 - a)) & 1;
      off += upper ? step[a] : 0;
      w *= upper ? t[a] : 1.0f - t[a];
    }
    out.offset[k] = off;
    out.weight[k] = w;
    if (derivatives) {
      for (int a = 0; a < dims; ++a) {
        float d = inside[a] * nan;
        for (int b = 0; b < dims; ++b) {
          const bool upper = (k >> (dims - 1 - b)) & 1;
          d *= (b == a) ? (upper ? 1.0f : -1.0f) : (upper ? t[b] : 1.0f - t[b]);
        }
        out.dweight[a][k] = d;
      }
    }
  }
  return base;
}

// The map's geometry; `locate` finds point bp's corners (row index of corner 0, and the rest).
struct Map {
  int dims;
  const int64_t* size;
  int64_t points, stride[kMaxDims], voxels;

  Map(int dims_, const int64_t* size_, int64_t points_) : dims(dims_), size(size_), points(points_) {
    int64_t s = 1;
    for (int a = dims - 1; a >= 0; --a) {
      stride[a] = s;
      s *= size[a];
    }
    voxels = s;
  }

  int64_t locate(const float* coords, int64_t bp, bool derivatives, Corners& cn) const {
    return (bp / points) * voxels + corners(coords + bp * dims, dims, size, stride, derivatives, cn);
  }
};

}  // namespace

extern "C" {

void linear_sample_forward(const float* x, const float* coords, int64_t batch, int dims,
                           const int64_t* size, int64_t points, int64_t chans, float* out, int threads) {
  const Map map(dims, size, points);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t bp = 0; bp < batch * points; ++bp) {
    Corners cn;
    const int64_t base = map.locate(coords, bp, false, cn);
    float* o = out + bp * chans;
    std::fill(o, o + chans, 0.0f);
    for (int k = 0; k < cn.count; ++k) {
      const float* r = x + (base + cn.offset[k]) * chans;
      const float w = cn.weight[k];
#pragma omp simd
      for (int64_t c = 0; c < chans; ++c) o[c] += w * r[c];
    }
  }
}

// grad_x must be zeroed by the caller; grad_coords is written.
void linear_sample_backward(const float* grad_out, const float* x, const float* coords, int64_t batch,
                            int dims, const int64_t* size, int64_t points, int64_t chans,
                            float* grad_x, float* grad_coords, int threads) {
  const Map map(dims, size, points);
  // coordinates: dot products of each corner's row with the output gradient, parallel over points
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t bp = 0; bp < batch * points; ++bp) {
    Corners cn;
    const int64_t base = map.locate(coords, bp, true, cn);
    const float* g = grad_out + bp * chans;
    float gc[kMaxDims] = {0.0f, 0.0f, 0.0f};
    for (int k = 0; k < cn.count; ++k) {
      const float* r = x + (base + cn.offset[k]) * chans;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t c = 0; c < chans; ++c) dot += r[c] * g[c];
      for (int a = 0; a < dims; ++a) gc[a] += cn.dweight[a][k] * dot;
    }
    for (int a = 0; a < dims; ++a) grad_coords[bp * dims + a] = gc[a];
  }
  // the map: scatter-add, one task per (sample, block of channels), so no two tasks write one value
  const int64_t blocks = (chans + kChannelBlock - 1) / kChannelBlock;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (int64_t task = 0; task < batch * blocks; ++task) {
    const int64_t b = task / blocks, c0 = (task % blocks) * kChannelBlock;
    const int64_t c1 = std::min(chans, c0 + kChannelBlock);
    for (int64_t bp = b * points; bp < (b + 1) * points; ++bp) {
      Corners cn;
      const int64_t base = map.locate(coords, bp, false, cn);
      const float* g = grad_out + bp * chans;
      for (int k = 0; k < cn.count; ++k) {
        float* r = grad_x + (base + cn.offset[k]) * chans;
        const float w = cn.weight[k];
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) r[c] += w * g[c];
      }
    }
  }
}

}  // extern "C"
