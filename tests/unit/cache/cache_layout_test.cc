// Byte accounting of cache layouts: the documented formula, hand-computed for named shapes.
#include "cache/cache_layout.h"

#include <gtest/gtest.h>

#include <vector>

namespace palu::cache {
namespace {

CacheLayout make(const CacheLayoutSpec& spec) {
  auto r = CacheLayout::create(spec);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r).value();
}

// The formula of cache_layout.h, recomputed independently of the implementation.
struct Expected {
  uint64_t token = 0, block = 0, window_row = 0;
};
Expected formula(const CacheLayoutSpec& s) {
  Expected e;
  const int bits = storage_bits(s.storage);
  for (const auto& layer : s.ranks) {
    for (const auto& groups : layer) {
      for (int r : groups) {
        uint64_t row = bits ? ((uint64_t)r * bits + 7) / 8 + 8
                            : (uint64_t)r * (s.storage == CacheStorage::kF32 ? 4 : 2);
        e.token += row;
        e.block += ((uint64_t)s.block_tokens * row + 3) / 4 * 4;
        e.window_row += 2 * (uint64_t)r;
      }
    }
  }
  return e;
}

TEST(CacheLayoutTest, RefMhaFull) {
  // ref-mha: 8 layers, 8 KV heads × 64 → kv_width 512.
  const CacheLayout f32 = make(full_layout_spec(8, 512, CacheStorage::kF32, 16));
  EXPECT_TRUE(f32.full());
  EXPECT_EQ(f32.token_bytes(), 8u * 2 * 512 * 4);  // 32768
  EXPECT_EQ(f32.block_bytes(), 16u * 32768);
  EXPECT_EQ(f32.session_bytes(33), 3u * 16 * 32768);
  EXPECT_EQ(f32.session_payload_bytes(33), 33u * 32768);
  const CacheLayout f16 = make(full_layout_spec(8, 512, CacheStorage::kF16, 32));
  EXPECT_EQ(f16.token_bytes(), 16384u);
  EXPECT_EQ(f16.block_bytes(), 32u * 16384);
}

TEST(CacheLayoutTest, RefMhaLatentRanks128x2) {
  const std::vector<int> r = {128, 128};
  EXPECT_EQ(make(uniform_latent_spec(8, r, r, CacheStorage::kF16)).token_bytes(),
            8u * 2 * 256 * 2);  // 8192
  EXPECT_EQ(make(uniform_latent_spec(8, r, r, CacheStorage::kBF16)).token_bytes(), 8192u);
  EXPECT_EQ(make(uniform_latent_spec(8, r, r, CacheStorage::kQ4)).token_bytes(),
            8u * 2 * 2 * (64 + 8));  // 2304
  EXPECT_EQ(make(uniform_latent_spec(8, r, r, CacheStorage::kQ3)).token_bytes(),
            8u * 2 * 2 * (48 + 8));  // 1792
  EXPECT_EQ(make(uniform_latent_spec(8, r, r, CacheStorage::kQ2)).token_bytes(),
            8u * 2 * 2 * (32 + 8));  // 1280
  const CacheLayout q4 = make(uniform_latent_spec(8, r, r, CacheStorage::kQ4, 16));
  EXPECT_EQ(q4.block_bytes(), 16u * 2304);
  EXPECT_EQ(q4.session_bytes(32768), 2048u * 16 * 2304);
}

TEST(CacheLayoutTest, Llama2_7BShaped) {
  // 32 layers, 32 heads × 128 (MHA): full f16 = 32·2·4096·2 bytes per token.
  EXPECT_EQ(make(full_layout_spec(32, 4096, CacheStorage::kF16)).token_bytes(), 524288u);
  // Palu-50% G-LRD, group size 4 → 8 groups of width 512, rank 256.
  const std::vector<int> r256(8, 256);
  EXPECT_EQ(make(uniform_latent_spec(32, r256, r256, CacheStorage::kF16)).token_bytes(), 262144u);
  EXPECT_EQ(make(uniform_latent_spec(32, r256, r256, CacheStorage::kQ4)).token_bytes(),
            32u * 2 * 8 * 136);  // 69632
  EXPECT_EQ(make(uniform_latent_spec(32, r256, r256, CacheStorage::kQ3)).token_bytes(),
            32u * 2 * 8 * 104);  // 53248
  EXPECT_EQ(make(uniform_latent_spec(32, r256, r256, CacheStorage::kQ2)).token_bytes(),
            32u * 2 * 8 * 72);  // 36864
  // 8 groups × rank 64.
  const std::vector<int> r64(8, 64);
  EXPECT_EQ(make(uniform_latent_spec(32, r64, r64, CacheStorage::kQ4)).token_bytes(),
            32u * 2 * 8 * 40);  // 20480
  EXPECT_EQ(make(uniform_latent_spec(32, r64, r64, CacheStorage::kF16)).token_bytes(), 65536u);
}

TEST(CacheLayoutTest, OddRanksAndPaddedSegments) {
  // block_tokens 5 (not a multiple of 4) pads each segment to 4 bytes.
  CacheLayoutSpec s = uniform_latent_spec(1, {33}, {96, 160}, CacheStorage::kQ3, 5);
  const CacheLayout l = make(s);
  EXPECT_EQ(l.row_bytes(0, Proj::kKey, 0), 13u);
  EXPECT_EQ(l.row_bytes(0, Proj::kValue, 0), 36u);
  EXPECT_EQ(l.row_bytes(0, Proj::kValue, 1), 60u);
  EXPECT_EQ(l.token_bytes(), 21u + 44 + 68);
  EXPECT_EQ(l.segment_offset(0, Proj::kKey, 0), 0u);
  EXPECT_EQ(l.segment_offset(0, Proj::kValue, 0), 108u);  // round_up(5·21, 4)
  EXPECT_EQ(l.segment_offset(0, Proj::kValue, 1), 328u);  // + 5·44
  EXPECT_EQ(l.block_bytes(), 668u);                       // + 5·68
  EXPECT_EQ(l.total_rank(0, Proj::kValue), 256);
}

TEST(CacheLayoutTest, RanksDifferByLayerAndProjection) {
  CacheLayoutSpec s;
  s.ranks = {{std::vector<int>{32, 64}, std::vector<int>{96}},
             {std::vector<int>{160, 33, 7}, std::vector<int>{64, 64}},
             {std::vector<int>{1}, std::vector<int>{512}}};
  for (CacheStorage st :
       {CacheStorage::kF32, CacheStorage::kF16, CacheStorage::kBF16, CacheStorage::kQ8,
        CacheStorage::kQ4, CacheStorage::kQ3, CacheStorage::kQ2}) {
    for (int bt : {1, 3, 16, 32}) {
      s.storage = st;
      s.block_tokens = bt;
      const CacheLayout l = make(s);
      const Expected e = formula(s);
      EXPECT_EQ(l.token_bytes(), e.token) << storage_name(st) << " bt " << bt;
      EXPECT_EQ(l.block_bytes(), e.block) << storage_name(st) << " bt " << bt;
      if (bt % 4 == 0) {
        EXPECT_EQ(l.block_bytes(), bt * l.token_bytes());
      }
      for (int64_t T : {0, 1, 15, 16, 17, 1000}) {
        EXPECT_EQ(l.session_bytes(T), (uint64_t)((T + bt - 1) / bt) * e.block);
        EXPECT_EQ(l.session_payload_bytes(T), (uint64_t)T * e.token);
      }
    }
  }
}

TEST(CacheLayoutTest, WindowBytes) {
  // 1 layer, K{32} V{32}, 2-bit, 16-token blocks, window 8.
  CacheLayoutSpec s = uniform_latent_spec(1, {32}, {32}, CacheStorage::kQ2, 16, 8);
  const CacheLayout l = make(s);
  EXPECT_EQ(l.token_bytes(), 32u);  // 2 × (8 code bytes + 8 param bytes)
  EXPECT_EQ(l.block_bytes(), 512u);
  EXPECT_EQ(l.window_row_bytes(), 128u);  // 64 f16
  EXPECT_EQ(l.window_rows_per_block(), 4);
  EXPECT_EQ(l.window_blocks(), 2);
  EXPECT_EQ(l.session_bytes(0), 2u * 512);
  EXPECT_EQ(l.session_bytes(20), 4u * 512);
  EXPECT_EQ(l.session_payload_bytes(20), 20u * 32 + 8 * 128);
  EXPECT_EQ(l.session_payload_bytes(3), 3u * 32 + 3 * 128);
  // Same layout without a window.
  s.window_tokens = 0;
  const CacheLayout nw = make(s);
  EXPECT_EQ(nw.window_blocks(), 0);
  EXPECT_EQ(nw.window_row_bytes(), 0u);
  EXPECT_EQ(nw.session_bytes(20), 2u * 512);
  // ref-mha latent q4, window 64: 32K-token session.
  const std::vector<int> r = {128, 128};
  const CacheLayout w = make(uniform_latent_spec(8, r, r, CacheStorage::kQ4, 16, 64));
  EXPECT_EQ(w.window_row_bytes(), 8192u);
  EXPECT_EQ(w.window_rows_per_block(), 4);  // 36864 / 8192
  EXPECT_EQ(w.window_blocks(), 16);
  EXPECT_EQ(w.session_bytes(32768), (2048u + 16) * 36864);
  EXPECT_EQ(w.session_payload_bytes(32768), 32768u * 2304 + 64 * 8192);
}

TEST(CacheLayoutTest, RejectsBadSpecs) {
  auto bad = [](CacheLayoutSpec s, const char* what) {
    auto r = CacheLayout::create(s);
    ASSERT_FALSE(r.is_ok()) << what;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << what;
    EXPECT_FALSE(r.status().message().empty());
  };
  const CacheLayoutSpec good = uniform_latent_spec(2, {32}, {32}, CacheStorage::kQ4, 16, 4);
  ASSERT_TRUE(CacheLayout::create(good).is_ok());
  CacheLayoutSpec s = good;
  s.ranks.clear();
  bad(s, "no layers");
  s = good;
  s.ranks[1][1].clear();
  bad(s, "no groups");
  s = good;
  s.ranks[0][0][0] = 0;
  bad(s, "rank 0");
  s = good;
  s.ranks[0][0][0] = -5;
  bad(s, "negative rank");
  s = good;
  s.block_tokens = 0;
  bad(s, "block_tokens 0");
  s = good;
  s.window_tokens = -1;
  bad(s, "negative window");
  s = good;
  s.storage = CacheStorage::kF16;
  bad(s, "window with f16 storage");
  s = good;
  s.storage = (CacheStorage)99;
  s.window_tokens = 0;
  bad(s, "unknown storage");
  // A window row (2·64 f16 = 128 bytes) larger than a 1-token block (2 × 24 = 48 bytes).
  s = uniform_latent_spec(1, {32}, {32}, CacheStorage::kQ4, 1, 4);
  bad(s, "window row does not fit in a block");
  auto r = CacheLayout::create(s);
  EXPECT_NE(r.status().message().find("block_tokens"), std::string::npos) << r.status().message();
}

TEST(CacheLayoutTest, CheckIndex) {
  const CacheLayout l = make(uniform_latent_spec(2, {32, 32}, {64}, CacheStorage::kF16));
  EXPECT_TRUE(l.check_index(1, Proj::kKey, 1).is_ok());
  EXPECT_EQ(l.check_index(2, Proj::kKey, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(l.check_index(-1, Proj::kKey, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(l.check_index(0, Proj::kValue, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(l.check_index(0, (Proj)2, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(l.describe().empty());
}

}  // namespace
}  // namespace palu::cache
