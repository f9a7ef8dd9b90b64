#include "cache/latent_codec.h"

#include <algorithm>
#include <cmath>

namespace palu::cache {

QuantParams quant_params(const float* z, size_t n, int bits) {
  QuantParams p;
  if (n == 0) return p;
  float lo = z[0], hi = z[0];
  for (size_t i = 1; i < n; ++i) {
    lo = std::min(lo, z[i]);
    hi = std::max(hi, z[i]);
  }
  const float levels = (float)((1 << bits) - 1);
  p.zero = lo;
  p.scale = hi > lo ? (hi - lo) / levels : 0.f;
  return p;
}

void fake_quantize(float* z, size_t n, int bits) {
  const QuantParams p = quant_params(z, n, bits);
  if (p.scale == 0.f) {
    std::fill(z, z + n, p.zero);
    return;
  }
  const float levels = (float)((1 << bits) - 1);
  const float inv = 1.0f / p.scale;
  for (size_t i = 0; i < n; ++i) {
    const float q = std::min(levels, std::max(0.f, std::nearbyint((z[i] - p.zero) * inv)));
    z[i] = q * p.scale + p.zero;
  }
}

}  // namespace palu::cache
