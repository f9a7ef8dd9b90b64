// Folding the value up-projections B^V into W_o, so values are never rebuilt at run time.
//
// Shapes: d model width, H query heads, H_kv KV heads, d_h head dim, n_rep = H / H_kv
// (query head h reads KV head g(h) = h / n_rep, the Hugging Face repeat_kv order). KV heads
// are grouped s at a time (HeadGrouping); group G(h) = g(h) / s holds
//   B^V_G  [s·d_h, r_G],  and the cache holds z^V_{G,t} = A^V_G x_t  [r_G] per token t.
// KV head g(h)'s value is the slice of rows j·d_h … (j+1)·d_h − 1 of B^V_G, j = g(h) mod s:
//   v_{h,t} = B^V_{G(h),j(h)} z^V_{G(h),t},         B^V_{G,j}: [d_h, r_G].
// Attention of query head h with weights p_{h,t} gives
//   o = Σ_h W_o,h · Σ_t p_{h,t} v_{h,t} = Σ_h (W_o,h B^V_{G(h),j(h)}) · ẑ_h,
//   ẑ_h = Σ_t p_{h,t} z^V_{G(h),t}   [r_{G(h)}],     W_o,h = W_o[:, h·d_h … ]: [d, d_h].
// Each query head has its own attention-weighted latent sum ẑ_h, even when several query
// heads (GQA, or several KV heads of one group) share the same cached latent, so the blocks
// cannot be merged: the fused matrix is
//   W_o' = [W_o,0 B^V_{G(0),j(0)} | … | W_o,H−1 B^V_{G(H−1),j(H−1)}]   [d, Σ_h r_{G(h)}],
// and o = W_o' · concat_h(ẑ_h). Column block h starts at head_offsets[h]. With J-LRD
// (s = H_kv, one group of rank r) it is [d, H·r], wider than W_o when r > d_h: that is the
// cost of J-LRD's shared latent at decode time, which the paper's G-LRD trades off.
//
// Ownership: plain values. Thread-safety: pure functions. Errors: Status values naming the
// argument, the expected and the found value.
#pragma once

#include <span>
#include <vector>

#include "backends/base/status.h"
#include "tools/compress/eigen_dense.h"
#include "tools/compress/head_groups.h"

namespace palu::compress {

struct FusedOutputProjection {
  Eigen::MatrixXd w;              // [d, Σ_h r_{G(h)}] W_o' (float64)
  std::vector<int> head_offsets;  // [H + 1] first column of query head h's block; back = cols
};

// w_o: [d, H·d_h]; b_v: [num_groups] of B^V_G [s·d_h, r_G]; num_heads H, a multiple of H_kv.
Result<FusedOutputProjection> fold_value_into_output(const Eigen::MatrixXd& w_o,
                                                     std::span<const Eigen::MatrixXd> b_v,
                                                     int num_heads, const HeadGrouping& grouping);

}  // namespace palu::compress
