// Sampler: picks the next token from logits. temperature 0 = greedy (argmax, lowest id on
// ties); otherwise softmax(logits / T), restricted to the smallest set of most likely tokens
// whose mass reaches top_p (and to the top_k most likely when top_k > 0), drawn with a
// seeded generator so runs repeat exactly.
//
// Thread-safety: one Sampler per sequence (it owns its random state).
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "backends/base/status.h"

namespace palu::model {

struct SamplerParams {
  float temperature = 0.8f;
  float top_p = 0.95f;
  int top_k = 40;        // 0: no limit
  uint64_t seed = 0;
};

class Sampler {
 public:
  // INVALID_ARGUMENT naming the field for temperature < 0, top_p outside (0, 1], top_k < 0.
  static Result<Sampler> create(const SamplerParams& params);
  int32_t sample(const float* logits, int vocab_size);

 private:
  explicit Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {}
  SamplerParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> scratch_;
};

}  // namespace palu::model
