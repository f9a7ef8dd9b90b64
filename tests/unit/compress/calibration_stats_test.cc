#include "tools/compress/calibration_stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace palu::compress {
namespace {

// [rows, dim] row-major float32, anisotropic columns (like activations with outlier channels).
std::vector<float> random_rows(int rows, int dim, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows) * dim);
  for (int t = 0; t < rows; ++t)
    for (int c = 0; c < dim; ++c) x[static_cast<size_t>(t) * dim + c] = u(rng) * (1.0f + c % 7);
  return x;
}

// Σ_t x_t x_tᵀ by the definition, float64.
Eigen::MatrixXd naive_gram(const std::vector<float>& x, int rows, int dim) {
  Eigen::MatrixXd g = Eigen::MatrixXd::Zero(dim, dim);
  for (int t = 0; t < rows; ++t) {
    Eigen::VectorXd v(dim);
    for (int c = 0; c < dim; ++c) v(c) = x[static_cast<size_t>(t) * dim + c];
    g += v * v.transpose();
  }
  return g;
}

TEST(CalibrationStatsTest, MatchesDefinitionAcrossBlocksAndTiles) {
  // dim spans two tiles (256 + 44), rows span three blocks (512 + 512 + 76).
  const int rows = 1100, dim = 300;
  const std::vector<float> x = random_rows(rows, dim, 1);
  auto stats = CalibrationStats::create(dim);
  ASSERT_TRUE(stats.is_ok());
  ASSERT_TRUE(stats->add(x.data(), rows, dim).is_ok());
  EXPECT_EQ(stats->tokens(), rows);
  const Eigen::MatrixXd g = stats->gram();
  const Eigen::MatrixXd ref = naive_gram(x, rows, dim);
  EXPECT_LT((g - ref).norm() / ref.norm(), 1e-13);
  EXPECT_EQ((g - g.transpose()).norm(), 0.0);  // exactly symmetric
}

TEST(CalibrationStatsTest, ChunkedAddAndMergeEqualOneAdd) {
  const int rows = 700, dim = 40;
  const std::vector<float> x = random_rows(rows, dim, 2);
  auto whole = CalibrationStats::create(dim);
  auto chunked = CalibrationStats::create(dim);
  auto second = CalibrationStats::create(dim);
  ASSERT_TRUE(whole.is_ok() && chunked.is_ok() && second.is_ok());
  ASSERT_TRUE(whole->add(x.data(), rows, dim).is_ok());
  ASSERT_TRUE(chunked->add(x.data(), 0, dim).is_ok());  // no-op
  ASSERT_TRUE(chunked->add(x.data(), 123, dim).is_ok());
  ASSERT_TRUE(second->add(x.data() + 123 * dim, rows - 123, dim).is_ok());
  ASSERT_TRUE(chunked->merge(*second).is_ok());
  EXPECT_EQ(chunked->tokens(), rows);
  const Eigen::MatrixXd a = whole->gram(), b = chunked->gram();
  EXPECT_LT((a - b).norm() / a.norm(), 1e-14);
}

TEST(CalibrationStatsTest, RejectsBadInputWithoutChangingTheSum) {
  EXPECT_EQ(CalibrationStats::create(0).status().code(), StatusCode::kInvalidArgument);
  auto stats = CalibrationStats::create(8);
  ASSERT_TRUE(stats.is_ok());
  std::vector<float> x = random_rows(4, 8, 3);
  ASSERT_TRUE(stats->add(x.data(), 4, 8).is_ok());
  const Eigen::MatrixXd before = stats->gram();

  Status st = stats->add(x.data(), 4, 9);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("dim must be 8, got 9"), std::string::npos) << st.message();
  EXPECT_EQ(stats->add(x.data(), -1, 8).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(stats->add(nullptr, 1, 8).code(), StatusCode::kInvalidArgument);

  x[2 * 8 + 5] = std::numeric_limits<float>::quiet_NaN();
  st = stats->add(x.data(), 4, 8);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("row 2"), std::string::npos) << st.message();
  EXPECT_EQ(stats->tokens(), 4);
  EXPECT_EQ((stats->gram() - before).norm(), 0.0);

  auto other = CalibrationStats::create(9);
  ASSERT_TRUE(other.is_ok());
  EXPECT_EQ(stats->merge(*other).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::compress
