// Windowed multi-directional token shift of channels-last maps, in one pass: what
// kernels/token_shift.py's reference computes with slices. A plain C ABI, no torch headers;
// kernels/cpu_ext.py builds it, kernels/token_shift.py calls it.
//
// x, out: (B, S_0..S_{D-1}, C) fp32, D = 1..3. The channels are cut into 2D groups of
// g = C / (2D); group 2a takes each token's predecessor along axis a, group 2a + 1 its successor
// (`reverse` swaps the two: the adjoint); a token whose neighbour lies in another window, or
// outside the map, gets 0; channels past 2D g are copied. `first` holds, axis after axis, one
// flag per position: 1 where a window begins.
#include <cstdint>
#include <cstring>

namespace {

constexpr int kMaxDims = 3;

struct Geometry {
  int dims;
  int64_t size[kMaxDims];
  int64_t stride[kMaxDims];  // in tokens
  const uint8_t* first[kMaxDims];
};

// Whether the neighbour of coordinate i along an axis (previous or next) is in the same window.
inline bool inside(const Geometry& geo, int axis, int64_t i, bool previous) {
  if (previous) return !geo.first[axis][i];
  return i + 1 < geo.size[axis] && !geo.first[axis][i + 1];
}

}  // namespace

extern "C" void token_shift(const float* x, float* out, int64_t batch, int dims, const int64_t* size,
                            int64_t chans, const uint8_t* first, int reverse, int threads) {
  Geometry geo;
  geo.dims = dims;
  int64_t tokens = 1, offset = 0;
  for (int a = dims - 1; a >= 0; --a) {
    geo.size[a] = size[a];
    geo.stride[a] = tokens;
    tokens *= size[a];
  }
  for (int a = 0; a < dims; ++a) {
    geo.first[a] = first + offset;
    offset += size[a];
  }
  const int64_t group = chans / (2 * dims);
  const int64_t shifted = group * 2 * dims;
  const int64_t rows = batch * tokens;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t t = row % tokens;
    int64_t coord[kMaxDims];
    int64_t rest = t;
    for (int a = 0; a < dims; ++a) {
      coord[a] = rest / geo.stride[a];
      rest -= coord[a] * geo.stride[a];
    }
    float* dst = out + row * chans;
    const float* src = x + row * chans;
    for (int a = 0; a < dims; ++a) {
      for (int direction = 0; direction < 2; ++direction) {
        const bool previous = (direction == 0) != (reverse != 0);
        const int64_t c0 = (2 * a + direction) * group;
        if (group == 0) continue;
        if (inside(geo, a, coord[a], previous)) {
          const int64_t step = previous ? -geo.stride[a] : geo.stride[a];
          std::memcpy(dst + c0, src + step * chans + c0, sizeof(float) * group);
        } else {
          std::memset(dst + c0, 0, sizeof(float) * group);
        }
      }
    }
    if (shifted < chans) std::memcpy(dst + shifted, src + shifted, sizeof(float) * (chans - shifted));
  }
}
