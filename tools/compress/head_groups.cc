#include "tools/compress/head_groups.h"

#include <string>

namespace palu::compress {

Result<HeadGrouping> make_head_grouping(int num_kv_heads, int head_dim, int group_size) {
  if (num_kv_heads < 1) {
    return invalid_argument("head grouping: num_kv_heads must be >= 1, got " +
                            std::to_string(num_kv_heads));
  }
  if (head_dim < 1) {
    return invalid_argument("head grouping: head_dim must be >= 1, got " +
                            std::to_string(head_dim));
  }
  if (group_size < 1 || group_size > num_kv_heads || num_kv_heads % group_size != 0) {
    return invalid_argument("head grouping: group_size must divide num_kv_heads " +
                            std::to_string(num_kv_heads) + " (1 = M-LRD, " +
                            std::to_string(num_kv_heads) + " = J-LRD), got " +
                            std::to_string(group_size));
  }
  return HeadGrouping{num_kv_heads, head_dim, group_size};
}

Result<std::vector<WhitenedFactor>> factor_head_groups(const Eigen::MatrixXd& w,
                                                       const Whitener& whitener,
                                                       const HeadGrouping& grouping,
                                                       std::span<const int> ranks) {
  PALU_ASSIGN_OR_RETURN(
      const HeadGrouping checked,
      make_head_grouping(grouping.num_kv_heads, grouping.head_dim, grouping.group_size));
  if (w.rows() != checked.rows() || w.cols() != whitener.dim()) {
    return invalid_argument("factor_head_groups: W must be [" + std::to_string(checked.rows()) +
                            ", " + std::to_string(whitener.dim()) + "] (H_kv*d_h, d), got [" +
                            std::to_string(w.rows()) + ", " + std::to_string(w.cols()) + "]");
  }
  if (static_cast<int>(ranks.size()) != checked.num_groups()) {
    return invalid_argument("factor_head_groups: need one rank per group (" +
                            std::to_string(checked.num_groups()) + "), got " +
                            std::to_string(ranks.size()));
  }
  std::vector<WhitenedFactor> out;
  out.reserve(ranks.size());
  for (int g = 0; g < checked.num_groups(); ++g) {
    const Eigen::MatrixXd rows = w.middleRows(checked.group_row_begin(g), checked.group_width());
    Result<WhitenedFactor> f = whitened_svd(rows, whitener, ranks[g]);
    if (!f.is_ok()) return f.status().with_context("group " + std::to_string(g));
    out.push_back(std::move(f).value());
  }
  return out;
}

}  // namespace palu::compress
