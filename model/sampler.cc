#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace palu::model {

Result<Sampler> Sampler::create(const SamplerParams& p) {
  if (!(p.temperature >= 0.f) || !std::isfinite(p.temperature)) {
    return invalid_argument("temperature must be ≥ 0, got " + std::to_string(p.temperature));
  }
  if (!(p.top_p > 0.f && p.top_p <= 1.f)) {
    return invalid_argument("top_p must be in (0, 1], got " + std::to_string(p.top_p));
  }
  if (p.top_k < 0) return invalid_argument("top_k must be ≥ 0, got " + std::to_string(p.top_k));
  return Sampler(p);
}

int32_t Sampler::sample(const float* logits, int n) {
  if (p_.temperature == 0.f) {
    int32_t best = 0;
    for (int i = 1; i < n; ++i) {
      if (logits[i] > logits[best]) best = i;
    }
    return best;
  }
  scratch_.resize(n);
  for (int i = 0; i < n; ++i) scratch_[i] = {logits[i], i};
  // Sort by logit, descending, ties by id so the order is deterministic.
  auto cmp = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  int keep = n;
  if (p_.top_k > 0 && p_.top_k < n) {
    keep = p_.top_k;
    std::partial_sort(scratch_.begin(), scratch_.begin() + keep, scratch_.end(), cmp);
  } else {
    std::sort(scratch_.begin(), scratch_.end(), cmp);
  }
  const float mx = scratch_[0].first;
  double total = 0.0;
  std::vector<double> prob(keep);
  for (int i = 0; i < keep; ++i) {
    prob[i] = std::exp((double)(scratch_[i].first - mx) / p_.temperature);
    total += prob[i];
  }
  // Nucleus: the smallest prefix whose mass reaches top_p.
  double mass = 0.0;
  int cut = keep;
  for (int i = 0; i < keep; ++i) {
    mass += prob[i] / total;
    if (mass >= p_.top_p) {
      cut = i + 1;
      break;
    }
  }
  double sub = 0.0;
  for (int i = 0; i < cut; ++i) sub += prob[i];
  std::uniform_real_distribution<double> u(0.0, sub);
  double r = u(rng_);
  for (int i = 0; i < cut; ++i) {
    r -= prob[i];
    if (r <= 0.0) return scratch_[i].second;
  }
  return scratch_[cut - 1].second;
}

}  // namespace palu::model
