#include "tools/compress/fake_quant.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace palu::compress {
namespace {

Status check_bits(int bits) {
  if (bits < kMinLatentBits || bits > kMaxLatentBits) {
    return invalid_argument("latent quantization: bits must be in [" +
                            std::to_string(kMinLatentBits) + ", " + std::to_string(kMaxLatentBits) +
                            "], got " + std::to_string(bits));
  }
  return Status::ok();
}

LatentQuantParams quantize(float* z, int n, int bits) {
  float lo = z[0], hi = z[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, z[i]);
    hi = std::max(hi, z[i]);
  }
  const float levels = static_cast<float>((1 << bits) - 1);
  LatentQuantParams p;
  p.zero = lo;
  p.scale = (hi - lo) / levels;
  if (!(p.scale > 0.0f)) return p;  // constant group (or non-finite): leave as is
  for (int i = 0; i < n; ++i) {
    const float q = std::clamp(std::nearbyint((z[i] - lo) / p.scale), 0.0f, levels);
    z[i] = q * p.scale + lo;
  }
  return p;
}

}  // namespace

Result<LatentQuantParams> fake_quantize_group(float* z, int n, int bits) {
  PALU_RETURN_IF_ERROR(check_bits(bits));
  if (n < 1)
    return invalid_argument("fake_quantize_group: n must be >= 1, got " + std::to_string(n));
  if (z == nullptr) return invalid_argument("fake_quantize_group: z is null");
  return quantize(z, n, bits);
}

Status fake_quantize_latents(float* z, int64_t tokens, std::span<const int> group_ranks, int bits) {
  PALU_RETURN_IF_ERROR(check_bits(bits));
  if (tokens < 0) {
    return invalid_argument("fake_quantize_latents: tokens must be >= 0, got " +
                            std::to_string(tokens));
  }
  int64_t width = 0;
  for (size_t g = 0; g < group_ranks.size(); ++g) {
    if (group_ranks[g] < 1) {
      return invalid_argument("fake_quantize_latents: group " + std::to_string(g) +
                              " rank must be >= 1, got " + std::to_string(group_ranks[g]));
    }
    width += group_ranks[g];
  }
  if (tokens == 0 || width == 0) return Status::ok();
  if (z == nullptr) return invalid_argument("fake_quantize_latents: z is null");
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = z + t * width;
    for (int r : group_ranks) {
      quantize(row, r, bits);
      row += r;
    }
  }
  return Status::ok();
}

}  // namespace palu::compress
