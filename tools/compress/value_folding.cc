#include "tools/compress/value_folding.h"

#include <string>

namespace palu::compress {

Result<FusedOutputProjection> fold_value_into_output(const Eigen::MatrixXd& w_o,
                                                     std::span<const Eigen::MatrixXd> b_v,
                                                     int num_heads, const HeadGrouping& grouping) {
  PALU_ASSIGN_OR_RETURN(
      const HeadGrouping gr,
      make_head_grouping(grouping.num_kv_heads, grouping.head_dim, grouping.group_size));
  if (num_heads < gr.num_kv_heads || num_heads % gr.num_kv_heads != 0) {
    return invalid_argument(
        "fold_value_into_output: num_heads must be a multiple of "
        "num_kv_heads " +
        std::to_string(gr.num_kv_heads) + ", got " + std::to_string(num_heads));
  }
  const int dh = gr.head_dim;
  if (w_o.rows() < 1 || w_o.cols() != static_cast<Eigen::Index>(num_heads) * dh) {
    return invalid_argument("fold_value_into_output: W_o must be [d, " +
                            std::to_string(num_heads * dh) + "] (H*d_h), got [" +
                            std::to_string(w_o.rows()) + ", " + std::to_string(w_o.cols()) + "]");
  }
  if (static_cast<int>(b_v.size()) != gr.num_groups()) {
    return invalid_argument("fold_value_into_output: need one B^V per group (" +
                            std::to_string(gr.num_groups()) + "), got " +
                            std::to_string(b_v.size()));
  }
  for (size_t g = 0; g < b_v.size(); ++g) {
    if (b_v[g].rows() != gr.group_width() || b_v[g].cols() < 1) {
      return invalid_argument("fold_value_into_output: B^V of group " + std::to_string(g) +
                              " must be [" + std::to_string(gr.group_width()) + ", r >= 1], got [" +
                              std::to_string(b_v[g].rows()) + ", " + std::to_string(b_v[g].cols()) +
                              "]");
    }
  }

  const int n_rep = num_heads / gr.num_kv_heads;
  FusedOutputProjection out;
  out.head_offsets.assign(num_heads + 1, 0);
  for (int h = 0; h < num_heads; ++h) {
    const int group = gr.group_of_kv_head(h / n_rep);
    out.head_offsets[h + 1] = out.head_offsets[h] + static_cast<int>(b_v[group].cols());
  }
  out.w.resize(w_o.rows(), out.head_offsets.back());
  for (int h = 0; h < num_heads; ++h) {
    const int kv = h / n_rep;
    const Eigen::MatrixXd& b = b_v[gr.group_of_kv_head(kv)];
    // W_o,h [d, d_h] · B^V_{G,j} [d_h, r_G] → [d, r_G]
    out.w.middleCols(out.head_offsets[h], b.cols()).noalias() =
        w_o.middleCols(static_cast<Eigen::Index>(h) * dh, dh) *
        b.middleRows(static_cast<Eigen::Index>(gr.index_in_group(kv)) * dh, dh);
  }
  return out;
}

}  // namespace palu::compress
