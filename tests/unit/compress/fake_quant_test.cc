#include "tools/compress/fake_quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

namespace palu::compress {
namespace {

TEST(FakeQuantTest, ErrorIsAtMostHalfAScalePerTokenPerGroup) {
  const std::vector<int> ranks = {32, 64, 16, 1};
  const int width = 32 + 64 + 16 + 1, tokens = 50;
  std::mt19937_64 rng(1);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> z(static_cast<size_t>(tokens) * width);
  for (size_t i = 0; i < z.size(); ++i) z[i] = n(rng) * (i % 37 == 0 ? 20.0f : 1.0f);
  for (int bits : {2, 3, 4, 8}) {
    std::vector<float> q = z;
    ASSERT_TRUE(fake_quantize_latents(q.data(), tokens, ranks, bits).is_ok());
    for (int t = 0; t < tokens; ++t) {
      int off = t * width;
      for (int r : ranks) {
        const auto [lo, hi] = std::minmax_element(z.begin() + off, z.begin() + off + r);
        const float scale = (*hi - *lo) / static_cast<float>((1 << bits) - 1);
        std::set<float> levels;
        for (int i = off; i < off + r; ++i) {
          EXPECT_FALSE(std::isnan(q[i]));
          EXPECT_LE(std::abs(q[i] - z[i]), 0.5f * scale * (1.0f + 1e-5f) + 1e-6f * std::abs(*lo))
              << "bits " << bits << " token " << t;
          levels.insert(q[i]);
        }
        EXPECT_LE(static_cast<int>(levels.size()), 1 << bits);
        EXPECT_EQ(*std::min_element(q.begin() + off, q.begin() + off + r), *lo);  // q = 0 → min
        off += r;
      }
    }
  }
}

TEST(FakeQuantTest, ExactOnTheGridOfTwoToTheBLevels) {
  for (int bits : {2, 3, 4, 8}) {
    const int levels = 1 << bits;
    // z_i = min + k_i·step over every level (shuffled, some repeated): exactly representable.
    std::vector<float> z;
    std::mt19937_64 rng(bits);
    for (int k = 0; k < levels; ++k) z.push_back(-1.5f + 0.25f * static_cast<float>(k));
    for (int k = 0; k < 7; ++k) z.push_back(-1.5f + 0.25f * static_cast<float>(rng() % levels));
    std::shuffle(z.begin(), z.end(), rng);
    std::vector<float> q = z;
    auto p = fake_quantize_group(q.data(), static_cast<int>(q.size()), bits);
    ASSERT_TRUE(p.is_ok());
    EXPECT_EQ(p->zero, -1.5f);
    EXPECT_EQ(p->scale, 0.25f);
    EXPECT_EQ(q, z) << "bits " << bits;
  }
}

TEST(FakeQuantTest, ConstantGroupIsKeptWithoutNaN) {
  std::vector<float> z(24, 3.7f);
  auto p = fake_quantize_group(z.data(), 24, 2);
  ASSERT_TRUE(p.is_ok());
  EXPECT_EQ(p->scale, 0.0f);
  for (float v : z) EXPECT_EQ(v, 3.7f);
  // One constant group next to a varying one, and a rank-1 group.
  std::vector<float> row = {0.0f, 0.0f, 0.0f, 1.0f, -2.0f, 5.0f, 9.0f};
  const std::vector<int> ranks = {3, 3, 1};
  ASSERT_TRUE(fake_quantize_latents(row.data(), 1, ranks, 3).is_ok());
  EXPECT_EQ(row[0], 0.0f);
  EXPECT_EQ(row[6], 9.0f);
  for (float v : row) EXPECT_FALSE(std::isnan(v));
}

TEST(FakeQuantTest, GroupsAreIndependent) {
  // An outlier in group 1 must not coarsen group 0.
  std::vector<float> row = {0.0f, 1.0f, 2.0f, 3.0f, 0.0f, 1000.0f};
  const std::vector<int> ranks = {4, 2};
  ASSERT_TRUE(fake_quantize_latents(row.data(), 1, ranks, 2).is_ok());
  EXPECT_EQ(row[0], 0.0f);
  EXPECT_EQ(row[1], 1.0f);
  EXPECT_EQ(row[2], 2.0f);
  EXPECT_EQ(row[3], 3.0f);
}

TEST(FakeQuantTest, RejectsBadArguments) {
  std::vector<float> z(8, 1.0f);
  for (int bits : {0, 1, 9, 16}) {
    Status st = fake_quantize_latents(z.data(), 1, std::vector<int>{8}, bits);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bits;
    EXPECT_NE(st.message().find("bits must be in [2, 8]"), std::string::npos) << st.message();
  }
  EXPECT_EQ(fake_quantize_latents(z.data(), 1, std::vector<int>{4, 0}, 4).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fake_quantize_latents(z.data(), -1, std::vector<int>{8}, 4).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(fake_quantize_latents(nullptr, 0, std::vector<int>{8}, 4).is_ok());
  EXPECT_EQ(fake_quantize_group(z.data(), 0, 4).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::compress
