// Rank allocation: how many latent dimensions each head group of each K/V projection keeps.
//
// The budget is the issue's `--ratio` ρ: Σ ranks ≈ ρ · Σ widths over every group of every
// k_proj and v_proj (width of a group = s·d_h rows; full rank). Three methods:
//
//   uniform         every group targets ρ · width.
//   fisher_uniform  (the paper's default) each projection p targets a share of the global
//                   budget proportional to its mean Fisher score S_p, split equally over its
//                   groups: target_pg = ρ·Σw · S_p / Σ_q S_q / groups(p).
//   fisher          each group targets a share proportional to its own mean score s_pg:
//                   target_pg = ρ·Σw · s_pg / Σ s.
//
// Fisher scores: per-weight RMS over calibration samples of dLoss/dW; callers pass per group
// the mean over the group's weights (its rows of W_k / W_v). A projection's mean score is the
// width-weighted mean of its groups' means (= the mean over all its weights).
//
// From targets to ranks, deterministically, in units of `align` (default 32):
//   1. every rank lies in [align, width] and is a multiple of align (align must divide every
//      group width, which also rules out align > width);
//   2. targets that break those bounds are clamped and the surplus / deficit is spread over
//      the others in proportion to their targets (water-filling: clamp(λ·target) with one λ);
//   3. the global unit count K = round(ρ·Σw / align) (clamped to what the bounds allow) is
//      apportioned to projections, then each projection's count to its groups, by largest
//      remainder (ties: lower index first). So each projection ends within one alignment
//      unit of its (clamped) share, and the total within half a unit of the budget whenever
//      the bounds allow it. Equal targets (uniform, fisher_uniform) differ by at most one
//      unit; when ρ·width is a multiple of align every group gets exactly ρ·width.
//
// Ownership: plain values. Thread-safety: pure functions. Errors: Status values naming the
// projection / group / option, the expected and the found value.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "backends/base/status.h"

namespace palu::compress {

enum class RankSearch { kUniform, kFisherUniform, kFisher };

// "uniform", "fisher_uniform", "fisher".
const char* rank_search_name(RankSearch method);
// Parses the names above (the `--search` flag).
Result<RankSearch> parse_rank_search(std::string_view name);

// One k_proj or v_proj of one layer.
struct ProjectionSpec {
  std::string name;                  // for messages and tables, e.g. "layers.3.k_proj"
  std::vector<int> group_widths;     // [groups] rows per group (s·d_h) = its full rank
  std::vector<double> group_scores;  // [groups] mean Fisher score (≥ 0); unused by uniform
};

struct RankAllocationOptions {
  RankSearch method = RankSearch::kFisherUniform;
  double ratio = 0.5;  // ρ ∈ (0, 1]: kept fraction of Σ widths
  int align = 32;      // ranks are multiples of this, at least this
};

struct RankAllocation {
  std::vector<std::vector<int>> ranks;  // [projection][group] kept rank
  std::vector<double> target_ranks;     // [projection] its share of the budget, in ranks,
                                        // after clamping to the bounds (before rounding)
  int64_t total_rank = 0;               // Σ ranks
  int64_t total_width = 0;              // Σ widths
  double budget_rank = 0.0;             // ρ · Σ widths
  double requested_ratio = 0.0;         // ρ
  double achieved_ratio = 0.0;          // total_rank / total_width

  // Σ of projection p's group ranks.
  int64_t projection_rank(size_t p) const;
  // Every group's rank, projection-major.
  std::vector<int> flat() const;
};

Result<RankAllocation> allocate_ranks(std::span<const ProjectionSpec> projections,
                                      const RankAllocationOptions& options);

}  // namespace palu::compress
