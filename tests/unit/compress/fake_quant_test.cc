// compress::fake_quantize_* is a checked layer over cache::fake_quantize: these tests pin the
// behaviour (error bound, codes in range, exact grid, constant groups, group independence,
// argument checks) and that the result is the cache codec's bit for bit.
#include "tools/compress/fake_quant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <set>
#include <vector>

#include "cache/latent_codec.h"

namespace palu::compress {
namespace {

constexpr int kBits[] = {2, 3, 4, 8};

// [tokens, width] normal values with a few large outliers, as Hadamard-free latents have.
std::vector<float> random_latents(int tokens, int width, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> z(static_cast<size_t>(tokens) * width);
  for (size_t i = 0; i < z.size(); ++i) z[i] = n(rng) * (i % 37 == 0 ? 20.0f : 1.0f);
  return z;
}

TEST(FakeQuantTest, ErrorIsAtMostHalfAScaleAndCodesAreInRange) {
  const std::vector<int> ranks = {32, 64, 16, 1};
  const int width = 32 + 64 + 16 + 1, tokens = 50;
  const std::vector<float> z = random_latents(tokens, width, 1);
  for (int bits : kBits) {
    const int top = (1 << bits) - 1;
    std::vector<float> q = z;
    ASSERT_TRUE(fake_quantize_latents(q.data(), tokens, ranks, bits).is_ok());
    for (int t = 0; t < tokens; ++t) {
      int off = t * width;
      for (int r : ranks) {
        const auto [lo, hi] = std::minmax_element(z.begin() + off, z.begin() + off + r);
        const cache::QuantParams p = cache::quant_params(&z[off], r, bits);
        EXPECT_EQ(p.zero, *lo);
        EXPECT_EQ(p.scale, *hi > *lo ? (*hi - *lo) / static_cast<float>(top) : 0.0f);
        std::set<float> levels;
        for (int i = off; i < off + r; ++i) {
          ASSERT_TRUE(std::isfinite(q[i]));
          EXPECT_LE(std::abs(q[i] - z[i]), 0.5f * p.scale * (1.0f + 1e-5f) + 1e-6f * std::abs(*lo))
              << "bits " << bits << " token " << t;
          levels.insert(q[i]);
          if (p.scale > 0.0f) {
            // Every output is code·scale + zero for an integer code in [0, 2^B − 1].
            const float code = std::nearbyint((q[i] - p.zero) / p.scale);
            EXPECT_GE(code, 0.0f);
            EXPECT_LE(code, static_cast<float>(top));
            EXPECT_EQ(code * p.scale + p.zero, q[i]) << "bits " << bits << " token " << t;
          }
        }
        EXPECT_LE(static_cast<int>(levels.size()), 1 << bits);
        EXPECT_EQ(*std::min_element(q.begin() + off, q.begin() + off + r), *lo);  // code 0 → min
        off += r;
      }
    }
  }
}

TEST(FakeQuantTest, EqualsTheCacheCodecBitForBit) {
  // Odd group sizes and a constant group (incl. −0.0) next to varying ones.
  const std::vector<int> ranks = {7, 32, 5, 96, 3};
  const int width = 7 + 32 + 5 + 96 + 3, tokens = 40;
  std::vector<float> z = random_latents(tokens, width, 7);
  for (int i = 0; i < 5; ++i) z[static_cast<size_t>(3) * width + 39 + i] = -0.0f;
  for (int bits : kBits) {
    std::vector<float> ours = z, ref = z;
    ASSERT_TRUE(fake_quantize_latents(ours.data(), tokens, ranks, bits).is_ok());
    for (int t = 0; t < tokens; ++t) {
      int off = t * width;
      for (int r : ranks) {
        cache::fake_quantize(&ref[off], static_cast<size_t>(r), bits);
        off += r;
      }
    }
    EXPECT_EQ(std::memcmp(ours.data(), ref.data(), ours.size() * sizeof(float)), 0)
        << "bits " << bits;
    // The single-group entry point too, and its parameters are cache::quant_params.
    std::vector<float> g(z.begin(), z.begin() + 96), g_ref = g;
    auto p = fake_quantize_group(g.data(), 96, bits);
    ASSERT_TRUE(p.is_ok());
    const cache::QuantParams p_ref = cache::quant_params(g_ref.data(), 96, bits);
    cache::fake_quantize(g_ref.data(), 96, bits);
    EXPECT_EQ(std::memcmp(g.data(), g_ref.data(), g.size() * sizeof(float)), 0) << "bits " << bits;
    EXPECT_EQ(p->scale, p_ref.scale);
    EXPECT_EQ(p->zero, p_ref.zero);
  }
}

TEST(FakeQuantTest, ExactOnTheGridOfTwoToTheBLevels) {
  for (int bits : kBits) {
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

TEST(FakeQuantTest, ConstantGroupIsExactWithoutNaN) {
  std::vector<float> z(24, 3.7f);
  auto p = fake_quantize_group(z.data(), 24, 2);
  ASSERT_TRUE(p.is_ok());
  EXPECT_EQ(p->scale, 0.0f);
  EXPECT_EQ(p->zero, 3.7f);
  for (float v : z) EXPECT_EQ(v, 3.7f);
  // One constant group next to a varying one, and a rank-1 group.
  std::vector<float> row = {0.0f, 0.0f, 0.0f, 1.0f, -2.0f, 5.0f, 9.0f};
  const std::vector<int> ranks = {3, 3, 1};
  ASSERT_TRUE(fake_quantize_latents(row.data(), 1, ranks, 3).is_ok());
  EXPECT_EQ(row[0], 0.0f);
  EXPECT_EQ(row[1], 0.0f);
  EXPECT_EQ(row[2], 0.0f);
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
  for (int bits : {0, 1, 5, 6, 7, 9, 16}) {  // the cache codec stores 2, 3, 4 and 8 bits only
    Status st = fake_quantize_latents(z.data(), 1, std::vector<int>{8}, bits);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << bits;
    EXPECT_NE(st.message().find("bits must be one of 2, 3, 4, 8, got " + std::to_string(bits)),
              std::string::npos)
        << st.message();
    EXPECT_EQ(fake_quantize_group(z.data(), 8, bits).status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(fake_quantize_latents(z.data(), 1, std::vector<int>{4, 0}, 4).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fake_quantize_latents(z.data(), -1, std::vector<int>{8}, 4).code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(fake_quantize_latents(nullptr, 0, std::vector<int>{8}, 4).is_ok());
  EXPECT_EQ(fake_quantize_latents(nullptr, 1, std::vector<int>{8}, 4).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(fake_quantize_group(z.data(), 0, 4).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(fake_quantize_group(nullptr, 8, 4).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::compress
