#include "tools/compress/rank_allocation.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>

namespace palu::compress {
namespace {

std::string fmt(double v) {
  std::ostringstream s;
  s.precision(17);
  s << v;
  return s.str();
}

// Σ clamp(λ·u_i, lo_i, hi_i)
double clamped_sum(double lambda, const std::vector<double>& u, const std::vector<double>& lo,
                   const std::vector<double>& hi) {
  double s = 0.0;
  for (size_t i = 0; i < u.size(); ++i) s += std::clamp(lambda * u[i], lo[i], hi[i]);
  return s;
}

// Water-filling: v_i = clamp(λ·u_i, lo_i, hi_i) with λ chosen so Σ v = total
// (Σlo ≤ total ≤ Σhi). Where the total is out of reach (targets of 0 cannot grow), the
// closest reachable v is returned and the integer step makes up the difference.
std::vector<double> water_fill(const std::vector<double>& u, const std::vector<double>& lo,
                               const std::vector<double>& hi, double total) {
  const size_t n = u.size();
  bool inside = true;
  double sum_u = 0.0;
  for (size_t i = 0; i < n; ++i) {
    inside = inside && u[i] >= lo[i] && u[i] <= hi[i];
    sum_u += u[i];
  }
  // The common case (uniform, or no bound binds): keep the targets bit-exact so equal
  // targets round identically.
  if (inside && std::abs(sum_u - total) <= 1e-9 * std::max(1.0, total)) return u;

  double lam_lo = 0.0, lam_hi = 1.0;
  while (clamped_sum(lam_hi, u, lo, hi) < total && lam_hi < 1e300) lam_hi *= 2.0;
  for (int it = 0; it < 200; ++it) {
    const double mid = 0.5 * (lam_lo + lam_hi);
    if (mid <= lam_lo || mid >= lam_hi) break;
    if (clamped_sum(mid, u, lo, hi) < total) {
      lam_lo = mid;
    } else {
      lam_hi = mid;
    }
  }
  std::vector<double> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = std::clamp(lam_hi * u[i], lo[i], hi[i]);
  return v;
}

// Integers k_i ∈ [lo_i, hi_i] with Σ k = total (Σlo ≤ total ≤ Σhi), closest to the reals
// v: start from floor(v) and move one unit at a time to the largest shortfall v − k (ties:
// lower index), or from the largest excess k − v (ties: higher index).
std::vector<int64_t> apportion(const std::vector<double>& v, const std::vector<int64_t>& lo,
                               const std::vector<int64_t>& hi, int64_t total) {
  const size_t n = v.size();
  std::vector<int64_t> k(n);
  int64_t sum = 0;
  for (size_t i = 0; i < n; ++i) {
    k[i] = std::clamp(static_cast<int64_t>(std::floor(v[i])), lo[i], hi[i]);
    sum += k[i];
  }
  while (sum < total) {
    size_t best = n;
    for (size_t i = 0; i < n; ++i) {
      if (k[i] >= hi[i]) continue;
      if (best == n || v[i] - k[i] > v[best] - k[best]) best = i;
    }
    ++k[best];  // total ≤ Σhi guarantees a candidate
    ++sum;
  }
  while (sum > total) {
    size_t best = n;
    for (size_t i = n; i-- > 0;) {
      if (k[i] <= lo[i]) continue;
      if (best == n || k[i] - v[i] > k[best] - v[best]) best = i;
    }
    --k[best];
    --sum;
  }
  return k;
}

Status validate(std::span<const ProjectionSpec> projections, const RankAllocationOptions& o) {
  if (!std::isfinite(o.ratio) || o.ratio <= 0.0 || o.ratio > 1.0) {
    return invalid_argument("rank allocation: ratio must be in (0, 1], got " + fmt(o.ratio));
  }
  if (o.align < 1) {
    return invalid_argument("rank allocation: align must be >= 1, got " + std::to_string(o.align));
  }
  if (o.method != RankSearch::kUniform && o.method != RankSearch::kFisherUniform &&
      o.method != RankSearch::kFisher) {
    return invalid_argument("rank allocation: unknown method " +
                            std::to_string(static_cast<int>(o.method)));
  }
  if (projections.empty()) return invalid_argument("rank allocation: no projections given");
  const bool fisher = o.method != RankSearch::kUniform;
  double score_sum = 0.0;
  for (const ProjectionSpec& p : projections) {
    const std::string where = "rank allocation: projection '" + p.name + "'";
    if (p.group_widths.empty()) return invalid_argument(where + " has no groups");
    for (size_t g = 0; g < p.group_widths.size(); ++g) {
      const int w = p.group_widths[g];
      if (w < 1) {
        return invalid_argument(where + " group " + std::to_string(g) +
                                ": width must be >= 1, got " + std::to_string(w));
      }
      if (w % o.align != 0) {
        return invalid_argument(where + " group " + std::to_string(g) + ": align " +
                                std::to_string(o.align) + " must divide the group width " +
                                std::to_string(w));
      }
    }
    if (!fisher) continue;
    if (p.group_scores.size() != p.group_widths.size()) {
      return invalid_argument(where + ": " + rank_search_name(o.method) +
                              " needs one score per group (" +
                              std::to_string(p.group_widths.size()) + "), got " +
                              std::to_string(p.group_scores.size()));
    }
    for (size_t g = 0; g < p.group_scores.size(); ++g) {
      const double s = p.group_scores[g];
      if (!std::isfinite(s) || s < 0.0) {
        return invalid_argument(where + " group " + std::to_string(g) +
                                ": Fisher score must be finite and >= 0, got " + fmt(s));
      }
      score_sum += s;
    }
  }
  if (fisher && !(score_sum > 0.0)) {
    return invalid_argument("rank allocation: every Fisher score is 0; " +
                            std::string(rank_search_name(o.method)) + " needs a positive score");
  }
  return Status::ok();
}

}  // namespace

const char* rank_search_name(RankSearch method) {
  switch (method) {
    case RankSearch::kUniform:
      return "uniform";
    case RankSearch::kFisherUniform:
      return "fisher_uniform";
    case RankSearch::kFisher:
      return "fisher";
  }
  return "unknown";
}

Result<RankSearch> parse_rank_search(std::string_view name) {
  for (RankSearch m : {RankSearch::kUniform, RankSearch::kFisherUniform, RankSearch::kFisher}) {
    if (name == rank_search_name(m)) return m;
  }
  return invalid_argument("rank search must be one of uniform, fisher_uniform, fisher; got '" +
                          std::string(name) + "'");
}

int64_t RankAllocation::projection_rank(size_t p) const {
  return std::accumulate(ranks.at(p).begin(), ranks.at(p).end(), int64_t{0});
}

std::vector<int> RankAllocation::flat() const {
  std::vector<int> out;
  for (const auto& p : ranks) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Result<RankAllocation> allocate_ranks(std::span<const ProjectionSpec> projections,
                                      const RankAllocationOptions& options) {
  PALU_RETURN_IF_ERROR(validate(projections, options));
  const double a = options.align;
  const double rho = options.ratio;

  // Flatten groups: bounds and real targets, all in alignment units.
  std::vector<double> target, lo, hi;
  std::vector<size_t> first(projections.size() + 1, 0);  // [P+1] group offsets
  int64_t total_width = 0;
  double score_sum = 0.0;
  std::vector<double> proj_score(projections.size(), 0.0);  // [P] mean Fisher score
  for (size_t p = 0; p < projections.size(); ++p) {
    const ProjectionSpec& spec = projections[p];
    first[p + 1] = first[p] + spec.group_widths.size();
    double wsum = 0.0, wscore = 0.0;
    for (size_t g = 0; g < spec.group_widths.size(); ++g) {
      total_width += spec.group_widths[g];
      wsum += spec.group_widths[g];
      if (options.method != RankSearch::kUniform) {
        wscore += spec.group_widths[g] * spec.group_scores[g];
        score_sum += spec.group_scores[g];
      }
      lo.push_back(1.0);
      hi.push_back(spec.group_widths[g] / a);
    }
    proj_score[p] = wscore / wsum;
  }
  const double budget_units = rho * static_cast<double>(total_width) / a;
  const double proj_score_sum = std::accumulate(proj_score.begin(), proj_score.end(), 0.0);

  for (size_t p = 0; p < projections.size(); ++p) {
    const ProjectionSpec& spec = projections[p];
    const double groups = static_cast<double>(spec.group_widths.size());
    for (size_t g = 0; g < spec.group_widths.size(); ++g) {
      switch (options.method) {
        case RankSearch::kUniform:
          target.push_back(rho * spec.group_widths[g] / a);
          break;
        case RankSearch::kFisherUniform:
          target.push_back(budget_units * proj_score[p] / proj_score_sum / groups);
          break;
        case RankSearch::kFisher:
          target.push_back(budget_units * spec.group_scores[g] / score_sum);
          break;
      }
    }
  }

  const double min_units = std::accumulate(lo.begin(), lo.end(), 0.0);
  const double max_units = std::accumulate(hi.begin(), hi.end(), 0.0);
  const std::vector<double> v =
      water_fill(target, lo, hi, std::clamp(budget_units, min_units, max_units));

  // Level 1: projections.
  std::vector<double> proj_v(projections.size(), 0.0);
  std::vector<int64_t> proj_lo(projections.size()), proj_hi(projections.size());
  for (size_t p = 0; p < projections.size(); ++p) {
    for (size_t i = first[p]; i < first[p + 1]; ++i) proj_v[p] += v[i];
    proj_lo[p] = static_cast<int64_t>(first[p + 1] - first[p]);
    proj_hi[p] = 0;
    for (int w : projections[p].group_widths) proj_hi[p] += w / options.align;
  }
  const int64_t total_units = std::clamp<int64_t>(
      std::llround(budget_units), static_cast<int64_t>(min_units), static_cast<int64_t>(max_units));
  const std::vector<int64_t> proj_units = apportion(proj_v, proj_lo, proj_hi, total_units);

  // Level 2: groups inside each projection.
  RankAllocation out;
  out.ranks.resize(projections.size());
  out.target_ranks.resize(projections.size());
  for (size_t p = 0; p < projections.size(); ++p) {
    std::vector<double> gv(v.begin() + first[p], v.begin() + first[p + 1]);
    std::vector<int64_t> glo(gv.size(), 1), ghi(gv.size());
    for (size_t g = 0; g < gv.size(); ++g) ghi[g] = projections[p].group_widths[g] / options.align;
    const std::vector<int64_t> units = apportion(gv, glo, ghi, proj_units[p]);
    for (int64_t u : units) out.ranks[p].push_back(static_cast<int>(u * options.align));
    out.target_ranks[p] = proj_v[p] * a;
  }
  out.total_rank = total_units * options.align;
  out.total_width = total_width;
  out.budget_rank = rho * static_cast<double>(total_width);
  out.requested_ratio = rho;
  out.achieved_ratio = static_cast<double>(out.total_rank) / static_cast<double>(total_width);
  return out;
}

}  // namespace palu::compress
