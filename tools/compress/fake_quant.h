// Latent fake-quantization for the compressor's accuracy checks: a thin, checked layer over
// the runtime's reference codec, cache::quant_params / cache::fake_quantize
// (cache/latent_codec.h). There is one formula in the tree and it lives there; this file only
// validates arguments and walks the [tokens, Σ_g r_g] latent layout group by group, so the
// compressor, palu-perplexity's simulation (model/llama_model.cc) and the packed cache
// (cache/latent_packing.h) agree bit for bit.
//
// The formula (per token, per head group, asymmetric, B bits, float32), as cache implements it:
//   min = min_i z_i, max = max_i z_i, L = 2^B − 1
//   scale = (max − min) / L  (0 when max == min), zero = min
//   q_i = clamp(nearbyint((z_i − min) · (1 / scale)), 0, L)   (ties to even in the default mode)
//   z'_i = q_i · scale + min
// so |z'_i − z_i| ≤ scale / 2 plus float32 rounding, the minimum is reproduced exactly, and a
// constant vector (scale 0) comes back unchanged.
//
// Ownership: works in place on caller memory. Thread-safety: pure functions on disjoint data.
// Errors: Status values naming the argument, the expected and the found value. Values must be
// finite: a NaN or Inf in a group gives an unspecified result for that group, not an error.
#pragma once

#include <cstdint>
#include <span>

#include "backends/base/status.h"
#include "cache/latent_codec.h"

namespace palu::compress {

// Quantization parameters of one group of one token: the cache's own type.
using LatentQuantParams = cache::QuantParams;

// Fake-quantizes one group in place: z [n] float32, n ≥ 1, bits ∈ {2, 3, 4, 8}
// (cache::valid_latent_bits). Returns the parameters it used (cache::quant_params of the input).
Result<LatentQuantParams> fake_quantize_group(float* z, int n, int bits);

// z: [tokens, Σ_g r_g] row-major float32, each row the concatenated latents of all groups of
// one token (group g at columns Σ_{h<g} r_h … + r_g). group_ranks: [groups], each ≥ 1.
// Fake-quantizes every (token, group) independently, in place, with cache::fake_quantize.
Status fake_quantize_latents(float* z, int64_t tokens, std::span<const int> group_ranks, int bits);

}  // namespace palu::compress
