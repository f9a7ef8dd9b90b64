#include "tests/unit/compress/test_matrices.h"
#include "tools/compress/value_folding.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace palu::compress {
namespace {

using testing::random_matrix;

struct Case {
  int num_heads, num_kv_heads, group_size;
};

class ValueFoldingTest : public ::testing::TestWithParam<Case> {};

// o from the fused W_o' and attention-weighted latents equals o from rebuilt values.
TEST_P(ValueFoldingTest, FusedMatrixReproducesAttentionOutput) {
  const Case c = GetParam();
  const int d = 40, d_h = 8, tokens = 6;
  auto grouping = make_head_grouping(c.num_kv_heads, d_h, c.group_size);
  ASSERT_TRUE(grouping.is_ok());
  const int groups = grouping->num_groups();
  const int n_rep = c.num_heads / c.num_kv_heads;

  const Eigen::MatrixXd w_o = random_matrix(d, c.num_heads * d_h, 1);  // [d, H·d_h]
  std::vector<Eigen::MatrixXd> b_v;                                    // [s·d_h, r_G]
  std::vector<std::vector<Eigen::VectorXd>> z(groups);                 // [G][t] → [r_G]
  for (int g = 0; g < groups; ++g) {
    const int r = 3 + 2 * g;
    b_v.push_back(random_matrix(grouping->group_width(), r, 10 + g));
    for (int t = 0; t < tokens; ++t) z[g].push_back(random_matrix(r, 1, 100 * g + t));
  }
  // Attention weights p[h][t], rows sum to 1.
  Eigen::MatrixXd p = random_matrix(c.num_heads, tokens, 7).array().exp();
  for (int h = 0; h < c.num_heads; ++h) p.row(h) /= p.row(h).sum();

  // Reference: rebuild each value, attend, concatenate heads, project.
  Eigen::VectorXd attn(c.num_heads * d_h);
  for (int h = 0; h < c.num_heads; ++h) {
    const int kv = h / n_rep, g = kv / c.group_size, j = kv % c.group_size;
    Eigen::VectorXd acc = Eigen::VectorXd::Zero(d_h);
    for (int t = 0; t < tokens; ++t) acc += p(h, t) * (b_v[g].middleRows(j * d_h, d_h) * z[g][t]);
    attn.segment(h * d_h, d_h) = acc;
  }
  const Eigen::VectorXd o_ref = w_o * attn;

  auto fused = fold_value_into_output(w_o, b_v, c.num_heads, *grouping);
  ASSERT_TRUE(fused.is_ok()) << fused.status().to_string();
  ASSERT_EQ(static_cast<int>(fused->head_offsets.size()), c.num_heads + 1);
  Eigen::VectorXd zhat(fused->w.cols());  // concat_h Σ_t p_{h,t} z_{G(h),t}
  for (int h = 0; h < c.num_heads; ++h) {
    const int g = (h / n_rep) / c.group_size;
    Eigen::VectorXd acc = Eigen::VectorXd::Zero(b_v[g].cols());
    for (int t = 0; t < tokens; ++t) acc += p(h, t) * z[g][t];
    ASSERT_EQ(fused->head_offsets[h + 1] - fused->head_offsets[h], b_v[g].cols());
    zhat.segment(fused->head_offsets[h], acc.size()) = acc;
  }
  EXPECT_EQ(fused->w.rows(), d);
  EXPECT_EQ(fused->w.cols(), fused->head_offsets.back());
  const Eigen::VectorXd o = fused->w * zhat;
  EXPECT_LT((o - o_ref).norm() / o_ref.norm(), 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Shapes, ValueFoldingTest,
                         ::testing::Values(Case{4, 4, 1}, Case{4, 4, 2}, Case{4, 4, 4},
                                           Case{8, 2, 1}, Case{8, 2, 2}));

TEST(ValueFoldingShapeTest, ColumnsAreSumOverQueryHeadsOfTheirGroupRank) {
  // GQA 8 query heads on 2 KV heads, J-LRD (one group of rank 5): [d, 8·5].
  auto grouping = make_head_grouping(2, 4, 2);
  ASSERT_TRUE(grouping.is_ok());
  const std::vector<Eigen::MatrixXd> b_v = {random_matrix(8, 5, 1)};
  auto fused = fold_value_into_output(random_matrix(16, 32, 2), b_v, 8, *grouping);
  ASSERT_TRUE(fused.is_ok());
  EXPECT_EQ(fused->w.cols(), 40);
  EXPECT_EQ(fused->head_offsets[3], 15);
}

TEST(ValueFoldingShapeTest, RejectsMismatchedShapes) {
  auto grouping = make_head_grouping(2, 4, 1);
  ASSERT_TRUE(grouping.is_ok());
  const std::vector<Eigen::MatrixXd> b_v = {random_matrix(4, 3, 1), random_matrix(4, 3, 2)};
  const Eigen::MatrixXd w_o = random_matrix(16, 32, 3);
  EXPECT_TRUE(fold_value_into_output(w_o, b_v, 8, *grouping).is_ok());
  Status st = fold_value_into_output(w_o, b_v, 7, *grouping).status();
  EXPECT_NE(st.message().find("multiple of num_kv_heads 2"), std::string::npos) << st.message();
  st = fold_value_into_output(random_matrix(16, 30, 3), b_v, 8, *grouping).status();
  EXPECT_NE(st.message().find("W_o must be [d, 32]"), std::string::npos) << st.message();
  const std::vector<Eigen::MatrixXd> one = {b_v[0]};
  EXPECT_EQ(fold_value_into_output(w_o, one, 8, *grouping).status().code(),
            StatusCode::kInvalidArgument);
  const std::vector<Eigen::MatrixXd> tall = {b_v[0], random_matrix(5, 3, 4)};
  st = fold_value_into_output(w_o, tall, 8, *grouping).status();
  EXPECT_NE(st.message().find("group 1 must be [4, r >= 1], got [5, 3]"), std::string::npos)
      << st.message();
}

}  // namespace
}  // namespace palu::compress
