// Quantized latent codec (the math): asymmetric per-vector quantization of a latent vector
// (one token's latent of one head group) to B bits, B ∈ {2, 3, 4, 8}:
//   scale = (max − min) / (2^B − 1), zero = min, q = clamp(round((z − min)/scale), 0, 2^B − 1),
//   z' = q·scale + min.  A constant vector (max == min) has scale 0 and decodes exactly.
// The packed storage of the codes (issue "Latent KV cache") builds on these functions; the
// accuracy simulation (palu-perplexity on compressed models) uses fake_quantize directly.
//
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace palu::cache {

struct QuantParams {
  float scale = 0.f;
  float zero = 0.f;  // = min
};

// Computes scale/zero for `n` values.
QuantParams quant_params(const float* z, size_t n, int bits);
// Replaces z by its quantize→dequantize image (in place).
void fake_quantize(float* z, size_t n, int bits);
// True for the supported bit widths.
inline bool valid_latent_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

}  // namespace palu::cache
