#include "tools/compress/fake_quant.h"

#include <string>

namespace palu::compress {
namespace {

Status check_bits(int bits) {
  if (!cache::valid_latent_bits(bits)) {
    return invalid_argument("latent quantization: bits must be one of 2, 3, 4, 8, got " +
                            std::to_string(bits));
  }
  return Status::ok();
}

}  // namespace

Result<LatentQuantParams> fake_quantize_group(float* z, int n, int bits) {
  PALU_RETURN_IF_ERROR(check_bits(bits));
  if (n < 1)
    return invalid_argument("fake_quantize_group: n must be >= 1, got " + std::to_string(n));
  if (z == nullptr) return invalid_argument("fake_quantize_group: z is null");
  const LatentQuantParams p = cache::quant_params(z, static_cast<size_t>(n), bits);
  cache::fake_quantize(z, static_cast<size_t>(n), bits);
  return p;
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
      cache::fake_quantize(row, static_cast<size_t>(r), bits);
      row += r;
    }
  }
  return Status::ok();
}

}  // namespace palu::compress
