// Splitting a K or V projection into groups of s consecutive KV heads (Palu's G-LRD).
//
// W_k / W_v of a layer is [H_kv·d_h, d]: rows h·d_h … (h+1)·d_h − 1 produce KV head h. A
// group of s consecutive heads owns rows [g·s·d_h, (g+1)·s·d_h) and is factored on its own,
// so the runtime caches one latent z_g ([r_g] per token) per group:
//   s = 1      M-LRD (one latent per head),
//   s = H_kv   J-LRD (one latent for all heads),
//   otherwise  G-LRD (default s = 4, or H_kv if smaller).
//
// Ownership: plain values. Thread-safety: pure functions. Errors: Status values naming the
// argument, the expected and the found value.
#pragma once

#include <span>
#include <vector>

#include "backends/base/status.h"
#include "tools/compress/eigen_dense.h"
#include "tools/compress/whitened_svd.h"

namespace palu::compress {

// How one projection's rows are grouped. Build with make_head_grouping (validated).
struct HeadGrouping {
  int num_kv_heads = 0;  // H_kv
  int head_dim = 0;      // d_h
  int group_size = 0;    // s, divides H_kv

  int num_groups() const { return num_kv_heads / group_size; }
  int group_width() const { return group_size * head_dim; }  // out_g = s·d_h rows per group
  int rows() const { return num_kv_heads * head_dim; }       // H_kv·d_h
  int group_row_begin(int group) const { return group * group_width(); }
  // The group that KV head `kv_head` belongs to, and its index inside the group.
  int group_of_kv_head(int kv_head) const { return kv_head / group_size; }
  int index_in_group(int kv_head) const { return kv_head % group_size; }
};

// Checks H_kv ≥ 1, d_h ≥ 1, 1 ≤ s ≤ H_kv and s | H_kv.
Result<HeadGrouping> make_head_grouping(int num_kv_heads, int head_dim, int group_size);

// Factors every group of W ([H_kv·d_h, d]) with its own whitened SVD.
// ranks: [num_groups], rank of each group (1 ≤ r_g ≤ min(s·d_h, d)).
// Returns [num_groups] factors in group order; factor g has B [s·d_h, r_g], A [r_g, d].
Result<std::vector<WhitenedFactor>> factor_head_groups(const Eigen::MatrixXd& w,
                                                       const Whitener& whitener,
                                                       const HeadGrouping& grouping,
                                                       std::span<const int> ranks);

}  // namespace palu::compress
