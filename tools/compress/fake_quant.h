// Latent fake-quantization: the accuracy simulation of Palu's quantized latent cache.
//
// Per token, per head group (each group's latent z_g, [r_g] values), asymmetric B bits:
//   min = min_i z_i, max = max_i z_i, L = 2^B − 1
//   scale = (max − min) / L, zero = min
//   q_i = clamp(round((z_i − min) / scale), 0, L)      round = to nearest, ties to even
//   z'_i = q_i · scale + min
// so |z'_i − z_i| ≤ scale / 2 (plus float32 rounding). A constant vector (scale 0) is kept as
// is, with no division. Arithmetic is float32, as in the runtime's cache codec, which must
// use the same formula (division by scale, not multiplication by 1/scale, and
// round-half-to-even) to match this simulation bit for bit.
//
// Ownership: works in place on caller memory. Thread-safety: pure functions on disjoint data.
// Errors: Status values naming the argument, the expected and the found value. Values must
// be finite (NaN or Inf in a group yields NaN/Inf output for that group, not an error).
#pragma once

#include <cstdint>
#include <span>

#include "backends/base/status.h"

namespace palu::compress {

inline constexpr int kMinLatentBits = 2;
inline constexpr int kMaxLatentBits = 8;

// Quantization parameters of one group of one token.
struct LatentQuantParams {
  float scale = 0.0f;  // (max − min) / (2^B − 1); 0 for a constant group
  float zero = 0.0f;   // min
};

// Fake-quantizes one group in place: z [n] float32, bits ∈ [2, 8]. Returns its parameters.
Result<LatentQuantParams> fake_quantize_group(float* z, int n, int bits);

// z: [tokens, Σ_g r_g] row-major float32, each row the concatenated latents of all groups of
// one token (group g at columns Σ_{h<g} r_h … + r_g). group_ranks: [groups], each ≥ 1.
// Fake-quantizes every (token, group) independently, in place.
Status fake_quantize_latents(float* z, int64_t tokens, std::span<const int> group_ranks, int bits);

}  // namespace palu::compress
