#include "tests/unit/compress/test_matrices.h"
#include "tools/compress/whitened_svd.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "tools/compress/head_groups.h"

namespace palu::compress {
namespace {

using testing::random_matrix;

// Calibration tokens as rows X [tokens, d], anisotropic columns so that whitening matters.
Eigen::MatrixXd calibration(int tokens, int d, uint64_t seed) {
  Eigen::MatrixXd x = random_matrix(tokens, d, seed);
  for (int c = 0; c < d; ++c) x.col(c) *= 0.1 + 3.0 * (c % 5);
  return x;
}

double rel(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  return (a - b).norm() / b.norm();
}

TEST(WhitenedSvdTest, FullRankReproducesWithPositiveDefiniteG) {
  const int d = 64;
  const Eigen::MatrixXd x = calibration(300, d, 1);
  const Eigen::MatrixXd g = x.transpose() * x;
  for (int out : {32, 64, 96}) {  // out_g < d, = d, > d
    const Eigen::MatrixXd w = random_matrix(out, d, 10 + out);
    const int full = std::min(out, d);
    auto f = whitened_svd(w, g, full);
    ASSERT_TRUE(f.is_ok()) << f.status().to_string();
    EXPECT_FALSE(f->eigen_shift_applied());
    EXPECT_EQ(f->b.rows(), out);
    EXPECT_EQ(f->b.cols(), full);
    EXPECT_EQ(f->a.rows(), full);
    EXPECT_EQ(f->a.cols(), d);
    EXPECT_EQ(f->singular_values.size(), full);
    EXPECT_LT(rel(f->b * f->a, w), 1e-6) << "out_g " << out;
    EXPECT_LT(rel(f->b * f->a, w), 1e-10) << "out_g " << out;  // in practice: round-off only
    EXPECT_EQ(f->discarded_energy(), 0.0);
  }
}

TEST(WhitenedSvdTest, RankDeficientGTakesTheEigenShiftAndStillReproducesW) {
  const int d = 64;
  const Eigen::MatrixXd x = calibration(20, d, 2);  // 20 tokens: G has rank 20 < 64
  const Eigen::MatrixXd g = x.transpose() * x;
  auto wh = make_whitener(g);
  ASSERT_TRUE(wh.is_ok()) << wh.status().to_string();
  EXPECT_TRUE(wh->shifted());
  EXPECT_GE(wh->cholesky_attempts, 2);
  EXPECT_NEAR(wh->lambda_min, 0.0, 1e-8 * g.diagonal().maxCoeff());
  // Palu's shift: λ_min(G + shift·I) = 1e-3.
  EXPECT_NEAR(wh->shift, kEigenShiftFloor - wh->lambda_min, 1e-15);
  const Eigen::MatrixXd w = random_matrix(32, d, 3);
  auto f = whitened_svd(w, *wh, 32);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_TRUE(f->eigen_shift_applied());
  EXPECT_LT(rel(f->b * f->a, w), 1e-6);
}

TEST(WhitenedSvdTest, BadlyScaledButDefiniteGIsNotShifted) {
  // Activations with outlier channels: per-channel scales over twelve orders of magnitude in
  // G's diagonal. Still positive definite, so Palu's plain Cholesky applies.
  const int d = 48;
  Eigen::MatrixXd x = calibration(400, d, 13);
  for (int c = 0; c < d; ++c) x.col(c) *= std::pow(10.0, 4.0 - 6.0 * c / (d - 1));
  const Eigen::MatrixXd g = x.transpose() * x;
  auto wh = make_whitener(g);
  ASSERT_TRUE(wh.is_ok());
  EXPECT_FALSE(wh->shifted());
  EXPECT_EQ(wh->cholesky_attempts, 1);
  const Eigen::MatrixXd w = random_matrix(16, d, 14);
  auto f = whitened_svd(w, *wh, 8);
  ASSERT_TRUE(f.is_ok());
  const double err = ((w - f->b * f->a) * x.transpose()).squaredNorm();
  EXPECT_NEAR(f->discarded_energy() / err, 1.0, 1e-9);
}

TEST(WhitenedSvdTest, IndefiniteAndZeroGAreShifted) {
  const int d = 16;
  Eigen::MatrixXd g = Eigen::MatrixXd::Identity(d, d);
  g(3, 3) = -2.0;  // Cholesky fails outright
  auto wh = make_whitener(g);
  ASSERT_TRUE(wh.is_ok()) << wh.status().to_string();
  EXPECT_NEAR(wh->lambda_min, -2.0, 1e-12);
  EXPECT_NEAR(wh->shift, 2.001, 1e-12);
  const Eigen::MatrixXd w = random_matrix(8, d, 4);
  auto f = whitened_svd(w, *wh, 8);
  ASSERT_TRUE(f.is_ok());
  EXPECT_LT(rel(f->b * f->a, w), 1e-6);

  auto zero = make_whitener(Eigen::MatrixXd::Zero(d, d));  // no calibration at all
  ASSERT_TRUE(zero.is_ok());
  EXPECT_NEAR(zero->shift, kEigenShiftFloor, 1e-18);
}

TEST(WhitenedSvdTest, DiscardedEnergyEqualsCalibrationReconstructionError) {
  const int d = 48, tokens = 400, out = 40;
  const Eigen::MatrixXd x = calibration(tokens, d, 5);  // rows x_t
  const Eigen::MatrixXd g = x.transpose() * x;          // Σ_t x_t x_tᵀ
  const Eigen::MatrixXd w = random_matrix(out, d, 6);
  for (int r : {1, 5, 16, 33, 39}) {
    auto f = whitened_svd(w, g, r);
    ASSERT_TRUE(f.is_ok()) << f.status().to_string();
    ASSERT_FALSE(f->eigen_shift_applied());
    // Σ_t ||W x_t − B A x_t||², straight from the tokens.
    const double err = ((w - f->b * f->a) * x.transpose()).squaredNorm();
    EXPECT_NEAR(f->discarded_energy() / err, 1.0, 1e-9) << "rank " << r;
    EXPECT_NEAR(f->total_energy() / (w * x.transpose()).squaredNorm(), 1.0, 1e-9);
  }
}

TEST(WhitenedSvdTest, WhiteningBeatsPlainSvdOnCalibrationData) {
  // The point of whitening: for the same rank, the error on the calibration inputs is
  // minimal (Eckart–Young in the whitened space), so it is no worse than truncating W's SVD.
  const int d = 32, r = 6;
  const Eigen::MatrixXd x = calibration(200, d, 7);
  const Eigen::MatrixXd w = random_matrix(24, d, 8);
  auto f = whitened_svd(w, Eigen::MatrixXd(x.transpose() * x), r);
  ASSERT_TRUE(f.is_ok());
  Eigen::BDCSVD<Eigen::MatrixXd> plain(w, Eigen::ComputeThinU | Eigen::ComputeThinV);
  const Eigen::MatrixXd wr = plain.matrixU().leftCols(r) *
                             plain.singularValues().head(r).asDiagonal() *
                             plain.matrixV().leftCols(r).transpose();
  const double whitened_err = ((w - f->b * f->a) * x.transpose()).squaredNorm();
  const double plain_err = ((w - wr) * x.transpose()).squaredNorm();
  EXPECT_LT(whitened_err, plain_err);
}

TEST(WhitenedSvdTest, RejectsBadArguments) {
  const Eigen::MatrixXd g = Eigen::MatrixXd::Identity(8, 8);
  const Eigen::MatrixXd w = random_matrix(4, 8, 9);
  EXPECT_EQ(whitened_svd(w, g, 0).status().code(), StatusCode::kInvalidArgument);
  Status st = whitened_svd(w, g, 5).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("rank must be in [1, 4]"), std::string::npos) << st.message();
  EXPECT_EQ(whitened_svd(random_matrix(4, 7, 1), g, 2).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(make_whitener(Eigen::MatrixXd::Identity(3, 4)).status().code(),
            StatusCode::kInvalidArgument);
  Eigen::MatrixXd bad_g = g;
  bad_g(5, 2) = std::nan("");
  EXPECT_EQ(make_whitener(bad_g).status().code(), StatusCode::kInvalidArgument);
  Eigen::MatrixXd bad_w = w;
  bad_w(1, 1) = INFINITY;
  EXPECT_EQ(whitened_svd(bad_w, g, 2).status().code(), StatusCode::kInvalidArgument);
}

TEST(HeadGroupsTest, GroupsFactorSeparatelyAndStackBackToW) {
  const int h_kv = 4, d_h = 16, d = 64;
  const Eigen::MatrixXd x = calibration(256, d, 11);
  auto wh = make_whitener(x.transpose() * x);
  ASSERT_TRUE(wh.is_ok());
  const Eigen::MatrixXd w = random_matrix(h_kv * d_h, d, 12);  // [H_kv·d_h, d]
  for (int s : {1, 2, 4}) {                                    // M-LRD, G-LRD, J-LRD
    auto grouping = make_head_grouping(h_kv, d_h, s);
    ASSERT_TRUE(grouping.is_ok());
    EXPECT_EQ(grouping->num_groups(), h_kv / s);
    EXPECT_EQ(grouping->group_width(), s * d_h);
    const std::vector<int> full(grouping->num_groups(), s * d_h);
    auto groups = factor_head_groups(w, *wh, *grouping, full);
    ASSERT_TRUE(groups.is_ok()) << groups.status().to_string();
    ASSERT_EQ(static_cast<int>(groups->size()), grouping->num_groups());
    Eigen::MatrixXd stacked(w.rows(), d);
    for (int g = 0; g < grouping->num_groups(); ++g) {
      stacked.middleRows(grouping->group_row_begin(g), s * d_h) = (*groups)[g].b * (*groups)[g].a;
    }
    EXPECT_LT(rel(stacked, w), 1e-6) << "group size " << s;

    // Truncated: each group's discarded energy is its own calibration error.
    const std::vector<int> half(grouping->num_groups(), s * d_h / 2);
    auto cut = factor_head_groups(w, *wh, *grouping, half);
    ASSERT_TRUE(cut.is_ok());
    for (int g = 0; g < grouping->num_groups(); ++g) {
      const auto& f = (*cut)[g];
      const Eigen::MatrixXd wg = w.middleRows(grouping->group_row_begin(g), s * d_h);
      const double err = ((wg - f.b * f.a) * x.transpose()).squaredNorm();
      EXPECT_NEAR(f.discarded_energy() / err, 1.0, 1e-9);
    }
  }
}

TEST(HeadGroupsTest, RejectsGroupSizeThatDoesNotDivideKvHeads) {
  Status st = make_head_grouping(8, 64, 3).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("group_size must divide num_kv_heads 8"), std::string::npos)
      << st.message();
  EXPECT_NE(st.message().find("got 3"), std::string::npos);
  EXPECT_EQ(make_head_grouping(8, 64, 0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(make_head_grouping(8, 64, 16).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(make_head_grouping(0, 64, 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(make_head_grouping(8, 0, 1).status().code(), StatusCode::kInvalidArgument);

  // A grouping struct filled by hand is re-checked.
  auto wh = make_whitener(Eigen::MatrixXd::Identity(8, 8));
  ASSERT_TRUE(wh.is_ok());
  const HeadGrouping bad{4, 2, 3};
  const std::vector<int> ranks{2};
  EXPECT_EQ(factor_head_groups(random_matrix(8, 8, 1), *wh, bad, ranks).status().code(),
            StatusCode::kInvalidArgument);
  // Wrong number of ranks and wrong W shape.
  auto ok = make_head_grouping(4, 2, 2);
  ASSERT_TRUE(ok.is_ok());
  EXPECT_EQ(factor_head_groups(random_matrix(8, 8, 1), *wh, *ok, ranks).status().code(),
            StatusCode::kInvalidArgument);
  const std::vector<int> two{2, 2};
  EXPECT_EQ(factor_head_groups(random_matrix(6, 8, 1), *wh, *ok, two).status().code(),
            StatusCode::kInvalidArgument);
  Status bad_rank =
      factor_head_groups(random_matrix(8, 8, 1), *wh, *ok, std::vector<int>{2, 5}).status();
  EXPECT_NE(bad_rank.message().find("group 1"), std::string::npos) << bad_rank.message();
}

}  // namespace
}  // namespace palu::compress
