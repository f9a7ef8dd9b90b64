// One row of logits against a reference row, for the golden and device-model tests: max
// |want|, max |got − want|, both argmaxes and the reference's margin (its best logit minus its
// second best), from which each test applies its own tolerance.
#pragma once

#include <algorithm>
#include <cmath>

namespace palu::testing {

struct LogitRowDiff {
  float max_abs = 0.f, max_diff = 0.f, margin = 0.f;
  int am_got = 0, am_want = 0;
  // max |Δ| / max |want| (0 for an all-zero reference row).
  double ratio() const { return (double)max_diff / std::max(max_abs, 1e-30f); }
};

inline LogitRowDiff logit_row_diff(const float* got, const float* want, int V) {
  LogitRowDiff d;
  for (int j = 0; j < V; ++j) {
    d.max_abs = std::max(d.max_abs, std::fabs(want[j]));
    d.max_diff = std::max(d.max_diff, std::fabs(got[j] - want[j]));
    if (got[j] > got[d.am_got]) d.am_got = j;
    if (want[j] > want[d.am_want]) d.am_want = j;
  }
  float second = -INFINITY;
  for (int j = 0; j < V; ++j) {
    if (j != d.am_want) second = std::max(second, want[j]);
  }
  d.margin = want[d.am_want] - second;
  return d;
}

}  // namespace palu::testing
