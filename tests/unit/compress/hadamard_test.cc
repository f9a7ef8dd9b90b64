#include "tests/unit/compress/test_matrices.h"
#include "tools/compress/hadamard.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace palu::compress {
namespace {

using testing::random_matrix;

double orthonormality_error(const Eigen::MatrixXd& q) {
  return (q * q.transpose() - Eigen::MatrixXd::Identity(q.rows(), q.rows())).cwiseAbs().maxCoeff();
}

// B'A' = BA after folding Q into a group's factors (A [n, d], B [out_g, n]).
void expect_fold_preserves_product(const Eigen::MatrixXd& q) {
  const int n = static_cast<int>(q.rows());
  Eigen::MatrixXd a = random_matrix(n, 80, 100 + n);
  Eigen::MatrixXd b = random_matrix(96, n, 200 + n);
  const Eigen::MatrixXd ba = b * a;
  ASSERT_TRUE(fold_rotation(q, &a, &b).is_ok());
  EXPECT_LT((b * a - ba).norm() / ba.norm(), 1e-12) << "n " << n;
}

class HadamardSizeTest : public ::testing::TestWithParam<int> {};

TEST_P(HadamardSizeTest, IsOrthonormalHadamardAndFoldsExactly) {
  const int n = GetParam();
  auto h = hadamard(n);
  ASSERT_TRUE(h.is_ok()) << h.status().to_string();
  ASSERT_EQ(h->rows(), n);
  ASSERT_EQ(h->cols(), n);
  EXPECT_LT(orthonormality_error(*h), 1e-12) << hadamard_construction(n);
  // Every entry is ±1/√n: a true Hadamard matrix, so any outlier spreads evenly.
  EXPECT_LT((h->cwiseAbs().array() - 1.0 / std::sqrt(n)).abs().maxCoeff(), 1e-15);
  expect_fold_preserves_product(*h);

  auto rot = latent_rotation(n);
  ASSERT_TRUE(rot.is_ok());
  EXPECT_EQ(rot->kind, RotationKind::kHadamard);
  EXPECT_EQ(rot->construction, hadamard_construction(n));
  EXPECT_EQ((rot->q - *h).norm(), 0.0);
}

// The issue's sizes, plus 224 (= 28·8, Paley II q = 13) and 416 (= 104·4, Paley I q = 103),
// which have constructions too.
INSTANTIATE_TEST_SUITE_P(IssueSizes, HadamardSizeTest,
                         ::testing::Values(32, 64, 96, 128, 160, 192, 256, 384, 512, 224, 416));

TEST(HadamardTest, NamesItsConstruction) {
  EXPECT_EQ(hadamard_construction(1), "sylvester(2^0)");
  EXPECT_EQ(hadamard_construction(32), "sylvester(2^5)");
  EXPECT_EQ(hadamard_construction(12), "paley1(q=11)");
  EXPECT_EQ(hadamard_construction(20), "paley1(q=19)");
  EXPECT_EQ(hadamard_construction(96), "paley1(q=11) x sylvester(2^3)");
  EXPECT_EQ(hadamard_construction(160), "paley1(q=19) x sylvester(2^3)");
  EXPECT_EQ(hadamard_construction(224), "paley2(q=13) x sylvester(2^3)");
  EXPECT_EQ(hadamard_construction(352), "paley1(q=43) x sylvester(2^3)");
  EXPECT_EQ(hadamard_construction(416), "paley1(q=103) x sylvester(2^2)");
  EXPECT_EQ(hadamard_construction(36), "paley2(q=17)");
  // No construction: not 1, 2 or a multiple of 4, or a multiple of 4 we cannot build.
  for (int n : {3, 6, 10, 52, 92, 1376, 2147483647}) EXPECT_EQ(hadamard_construction(n), "") << n;
  EXPECT_EQ(hadamard_construction(1 << 30), "sylvester(2^30)");  // named, though too big to build
  // Every multiple of 32 up to 1344 is covered.
  for (int n = 32; n <= 1344; n += 32) EXPECT_NE(hadamard_construction(n), "") << n;
}

TEST(HadamardTest, EveryConstructibleSizeUpTo200IsHadamard) {
  int built = 0;
  for (int n = 1; n <= 200; ++n) {
    if (hadamard_construction(n).empty()) continue;
    auto h = hadamard(n);
    ASSERT_TRUE(h.is_ok()) << n;
    EXPECT_LT(orthonormality_error(*h), 1e-12) << n << " " << hadamard_construction(n);
    EXPECT_LT((h->cwiseAbs().array() - 1.0 / std::sqrt(n)).abs().maxCoeff(), 1e-15) << n;
    ++built;
  }
  EXPECT_GT(built, 40);
}

TEST(HadamardTest, FallbackIsSeededRandomOrthogonal) {
  for (int n : {6, 92, 100}) {
    EXPECT_EQ(hadamard(n).status().code(), StatusCode::kUnimplemented) << n;
    auto rot = latent_rotation(n);
    ASSERT_TRUE(rot.is_ok()) << rot.status().to_string();
    EXPECT_EQ(rot->kind, RotationKind::kRandomOrthogonal);
    EXPECT_EQ(rot->construction,
              "random_orthogonal(seed=" + std::to_string(kDefaultRotationSeed) + ")");
    EXPECT_LT(orthonormality_error(rot->q), 1e-12) << n;
    expect_fold_preserves_product(rot->q);
    // Deterministic per seed, different across seeds.
    auto again = latent_rotation(n);
    ASSERT_TRUE(again.is_ok());
    EXPECT_EQ((again->q - rot->q).norm(), 0.0);
    auto other = latent_rotation(n, 7);
    ASSERT_TRUE(other.is_ok());
    EXPECT_GT((other->q - rot->q).norm(), 1.0);
    // It mixes every coordinate: for larger n no entry is far above √(2 ln n / n) (≈ 0.31
    // at n = 92), where a permutation-like Q would have ±1.
    if (n >= 64) {
      EXPECT_LT(rot->q.cwiseAbs().maxCoeff(), 0.6);
    }
  }
}

TEST(HadamardTest, RejectsBadSizesAndShapes) {
  EXPECT_EQ(hadamard(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(hadamard(kMaxRotationDim * 2).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(latent_rotation(-3).status().code(), StatusCode::kInvalidArgument);
  auto q = hadamard(4);
  ASSERT_TRUE(q.is_ok());
  Eigen::MatrixXd a = random_matrix(4, 8, 1), b = random_matrix(6, 3, 2);
  Status st = fold_rotation(*q, &a, &b);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("B [6, 3]"), std::string::npos) << st.message();
  EXPECT_EQ(fold_rotation(*q, nullptr, &b).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::compress
