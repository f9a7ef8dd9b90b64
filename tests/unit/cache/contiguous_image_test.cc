// cache/contiguous_image.h: a pool sequence's image → a device-style contiguous buffer → an
// image again is the same bytes (so a session moved GPU ↔ host reads exactly what it wrote),
// for f16 latents, packed q4 / q2 latents with an f16 window (also a capacity below the window)
// and full rows; bad plans and images are clear errors.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "backends/base/dtype.h"
#include "cache/contiguous_image.h"

namespace palu::cache {
namespace {

struct Case {
  const char* name;
  CacheLayoutSpec spec;
  int64_t length, capacity;
};

CacheLayoutSpec latent(CacheStorage st, int window) {
  // Two layers with unequal groups (K 32+64, V 96+32).
  CacheLayoutSpec s;
  s.ranks = {{std::vector<int>{32, 64}, std::vector<int>{96, 32}}, {std::vector<int>{64, 32}, std::vector<int>{32, 96}}};
  s.storage = st;
  s.window_tokens = window;
  return s;
}

// A device-style plan: each segment's rows, then scales / zeros, then the ring.
std::vector<ContiguousSegment> plan_for(const CacheLayout& L, int64_t cap, int ring, size_t* bytes) {
  std::vector<ContiguousSegment> segs;
  size_t off = 0;
  for (int l = 0; l < L.num_layers(); ++l)
    for (int kv = 0; kv < 2; ++kv)
      for (int g = 0; g < L.num_groups(l, (Proj)kv); ++g) {
        ContiguousSegment s;
        s.rank = L.rank(l, (Proj)kv, g);
        s.row_bytes = L.row_bytes(l, (Proj)kv, g);
        s.rows = off;
        off += s.row_bytes * cap + 13;  // odd gaps: offsets are taken as given
        if (storage_is_packed(L.storage())) {
          s.scales = off;
          off += 4 * cap;
          s.zeros = off;
          off += 4 * cap;
        }
        s.ring = off;
        off += (size_t)ring * s.rank * 2;
        segs.push_back(s);
      }
  *bytes = off;
  return segs;
}


TEST(ContiguousImageTest, RoundTripIsTheSameBytes) {
  const std::vector<Case> cases = {
      {"f16", latent(CacheStorage::kF16, 0), 37, 50},
      {"q4 window 8", latent(CacheStorage::kQ4, 8), 37, 64},
      {"q2 window 8, capacity 5", latent(CacheStorage::kQ2, 8), 4, 5},
      {"q8", latent(CacheStorage::kQ8, 0), 16, 16},
      {"full f16", full_layout_spec(2, 48, CacheStorage::kF16), 21, 40},
  };
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto lr = CacheLayout::create(c.spec);
    ASSERT_TRUE(lr.is_ok()) << lr.status().to_string();
    const CacheLayout L = lr.value();
    auto pr = BlockPool::create(L, 64ull << 20);
    ASSERT_TRUE(pr.is_ok());
    BlockPool& pool = pr.value();
    auto plan = pool.plan(std::vector<PoolRequest>{PoolRequest::create(3), PoolRequest::append(3, c.length)});
    ASSERT_TRUE(plan.is_ok());
    ASSERT_TRUE(pool.commit(plan.value()).is_ok());
    for (int64_t pos = 0; pos < c.length; ++pos)
      for (int l = 0; l < L.num_layers(); ++l)
        for (int kv = 0; kv < 2; ++kv)
          for (int g = 0; g < L.num_groups(l, (Proj)kv); ++g) {
            std::vector<float> z((size_t)L.rank(l, (Proj)kv, g));
            for (float& v : z) v = nd(rng);
            ASSERT_TRUE(pool.write_token(3, pos, l, (Proj)kv, g, z.data()).is_ok());
          }
    auto a = pool.export_sequence(3);
    ASSERT_TRUE(a.is_ok());
    const int ring = L.window_tokens() > 0 ? (int)std::min<int64_t>(L.window_tokens(), c.capacity) : 0;
    size_t bytes = 0;
    const std::vector<ContiguousSegment> segs = plan_for(L, c.capacity, ring, &bytes);
    const ContiguousCache cc{segs, c.capacity, ring};
    std::vector<uint8_t> buf(bytes, 0xee);
    ASSERT_TRUE(contiguous_from_image(L, cc, a.value(), buf).is_ok());
    auto b = image_from_contiguous(L, cc, buf, c.length, a.value().window_begin);
    ASSERT_TRUE(b.is_ok()) << b.status().to_string();
    EXPECT_EQ(b.value().layout_hash, a.value().layout_hash);
    EXPECT_EQ(b.value().window_begin, a.value().window_begin);
    EXPECT_TRUE(b.value().bytes == a.value().bytes);
    // And the rows sit where the plan says: position 2 of the first segment.
    std::vector<float> z((size_t)L.rank(0, Proj::kKey, 0));
    ASSERT_TRUE(pool.read_token(3, 2, 0, Proj::kKey, 0, z.data()).is_ok());
    if (L.storage() == CacheStorage::kF16 && !L.full()) {
      uint16_t h;
      std::memcpy(&h, buf.data() + segs[0].rows + 2 * segs[0].row_bytes, 2);
      EXPECT_EQ(f16_to_f32(h), z[0]);
    }
  }
}

TEST(ContiguousImageTest, BadPlansAndImagesAreClearErrors) {
  const CacheLayout L = CacheLayout::create(latent(CacheStorage::kQ4, 8)).value();
  auto pool = BlockPool::create(L, 16ull << 20).value();
  auto plan = pool.plan(std::vector<PoolRequest>{PoolRequest::create(0), PoolRequest::append(0, 10)});
  ASSERT_TRUE(pool.commit(plan.value()).is_ok());
  const SequenceImage img = pool.export_sequence(0).value();
  size_t bytes = 0;
  std::vector<ContiguousSegment> segs = plan_for(L, 16, 8, &bytes);
  std::vector<uint8_t> buf(bytes);

  ContiguousCache cc{segs, 16, 8};
  EXPECT_TRUE(contiguous_from_image(L, cc, img, buf).is_ok());
  // Length over the capacity.
  ContiguousCache small{segs, 8, 8};
  Status st = contiguous_from_image(L, small, img, buf);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("capacity"), std::string::npos) << st.message();
  // A wrong rank.
  std::vector<ContiguousSegment> bad = segs;
  bad[1].rank = 33;
  st = contiguous_from_image(L, ContiguousCache{bad, 16, 8}, img, buf);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("rank 33"), std::string::npos) << st.message();
  // A buffer too small for the offsets.
  std::vector<uint8_t> tiny(bytes / 2);
  EXPECT_EQ(contiguous_from_image(L, cc, img, tiny).code(), StatusCode::kInvalidArgument);
  // Another layout's image; a cut image; a bad window_begin.
  SequenceImage other = img;
  other.layout_hash ^= 1;
  EXPECT_EQ(contiguous_from_image(L, cc, other, buf).code(), StatusCode::kInvalidArgument);
  SequenceImage cut = img;
  cut.bytes.pop_back();
  EXPECT_EQ(contiguous_from_image(L, cc, cut, buf).code(), StatusCode::kDataLoss);
  SequenceImage wb = img;
  wb.window_begin = 0;  // length 10, window 8: at least 2
  EXPECT_EQ(contiguous_from_image(L, cc, wb, buf).code(), StatusCode::kDataLoss);
  // Wrong ring slot count; a length past the capacity on export.
  EXPECT_EQ(image_from_contiguous(L, ContiguousCache{segs, 16, 4}, buf, 10, 2).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(image_from_contiguous(L, cc, buf, 17, 9).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::cache
