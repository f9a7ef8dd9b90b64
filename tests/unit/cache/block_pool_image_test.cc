// BlockPool::export_sequence / import_sequence and layout_hash: round trips for every storage
// kind with and without a window, at lengths around block boundaries, into another pool of
// the same layout; refusals (another layout, wrong length, wrong size, bad window bounds)
// that leave the arena byte-for-byte unchanged.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "backends/base/dtype.h"
#include "cache/block_pool.h"
#include "tests/common/status_assert.h"

namespace palu::cache {
namespace {

CacheLayout make_layout(const CacheLayoutSpec& spec) {
  auto r = CacheLayout::create(spec);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r).value();
}

BlockPool make_pool(const CacheLayoutSpec& spec, int64_t blocks) {
  CacheLayout l = make_layout(spec);
  auto r = BlockPool::create(l, (uint64_t)blocks * l.block_bytes());
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r).value();
}

Status run(BlockPool& pool, std::vector<PoolRequest> reqs) {
  auto p = pool.plan(reqs);
  if (!p.is_ok()) return p.status();
  return pool.commit(*p);
}

// Layout with two layers, uneven groups and block_tokens 8 (a block boundary at 8, 16, ...).
CacheLayoutSpec spec_for(CacheStorage st, int window_tokens) {
  CacheLayoutSpec s;
  s.ranks = {{std::vector<int>{33, 16}, std::vector<int>{24}},
             {std::vector<int>{40}, std::vector<int>{7, 9}}};
  s.block_tokens = 8;
  s.storage = st;
  s.window_tokens = window_tokens;
  return s;
}

// Writes random latents at positions [from, to) of s.
void fill(BlockPool& pool, SeqId s, int64_t from, int64_t to, uint32_t seed) {
  const CacheLayout& l = pool.layout();
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t p = from; p < to; ++p) {
    for (int layer = 0; layer < l.num_layers(); ++layer) {
      for (Proj kv : {Proj::kKey, Proj::kValue}) {
        std::vector<float> z(l.total_rank(layer, kv));
        for (auto& v : z) v = normal(rng);
        ASSERT_OK(pool.write_token_row(s, p, layer, kv, z.data()));
      }
    }
  }
}

// Everything a reader can observe of sequence s (every read_token value, block view rows and
// parameters, the window bounds and rows), as bytes.
std::vector<uint8_t> observe(const BlockPool& pool, SeqId s) {
  const CacheLayout& l = pool.layout();
  std::vector<uint8_t> out;
  auto put = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  };
  const int64_t T = *pool.length(s);
  const int64_t wb = *pool.window_begin(s);
  put(&T, sizeof T);
  put(&wb, sizeof wb);
  for (int layer = 0; layer < l.num_layers(); ++layer) {
    for (Proj kv : {Proj::kKey, Proj::kValue}) {
      for (int g = 0; g < l.num_groups(layer, kv); ++g) {
        const int r = l.rank(layer, kv, g);
        std::vector<float> z(r);
        for (int64_t p = 0; p < T; ++p) {
          EXPECT_TRUE(pool.read_token(s, p, layer, kv, g, z.data()).is_ok());
          put(z.data(), z.size() * sizeof(float));
        }
        for (int64_t b = 0; b < l.blocks_for_tokens(T); ++b) {
          auto v = pool.block_view(s, b, layer, kv, g);
          EXPECT_TRUE(v.is_ok());
          put(&v->first_pos, sizeof v->first_pos);
          put(&v->tokens, sizeof v->tokens);
          for (int t = 0; t < v->tokens; ++t) {
            put(v->rows + (size_t)t * v->row_bytes, v->row_bytes);
            if (v->scales) {
              put(&v->scales[t], 4);
              put(&v->zeros[t], 4);
            }
            v->dequantize_row(t, z.data());
            put(z.data(), z.size() * sizeof(float));
          }
        }
        auto seg = pool.segment_view(s, layer, kv, g);
        EXPECT_TRUE(seg.is_ok());
        put(&seg->length, sizeof seg->length);
        auto w = pool.window_view(s, layer, kv, g);
        EXPECT_TRUE(w.is_ok());
        put(&w->begin, sizeof w->begin);
        put(&w->end, sizeof w->end);
        for (int64_t p = w->begin; p < w->end; ++p) put(w->row(p), (size_t)r * 2);
      }
    }
  }
  return out;
}

struct Case {
  CacheStorage storage;
  int window_tokens;
};

const Case kCases[] = {
    {CacheStorage::kF16, 0}, {CacheStorage::kQ4, 0}, {CacheStorage::kQ4, 5},
    {CacheStorage::kQ2, 0},  {CacheStorage::kQ2, 5}, {CacheStorage::kQ2, 19},
};
const int64_t kLengths[] = {0, 1, 7, 8, 9, 16, 100};

std::string case_name(const Case& c, int64_t len) {
  return std::string(storage_name(c.storage)) + " window " + std::to_string(c.window_tokens) +
         " length " + std::to_string(len);
}

TEST(BlockPoolImageTest, RoundTripIntoAnotherPoolOfTheSameLayout) {
  for (const Case& c : kCases) {
    for (int64_t len : kLengths) {
      SCOPED_TRACE(case_name(c, len));
      const CacheLayoutSpec spec = spec_for(c.storage, c.window_tokens);
      BlockPool a = make_pool(spec, 64);
      ASSERT_OK(run(a, {PoolRequest::create(3), PoolRequest::append(3, len)}));
      fill(a, 3, 0, len, (uint32_t)len + 1);
      const std::vector<uint8_t> before = observe(a, 3);

      auto image = a.export_sequence(3);
      ASSERT_TRUE(image.is_ok()) << image.status().to_string();
      EXPECT_EQ(image->length, len);
      EXPECT_EQ(image->window_begin, *a.window_begin(3));
      EXPECT_EQ(image->layout_hash, layout_hash(a.layout()));
      EXPECT_EQ(image->bytes.size(), a.layout().session_bytes(len));

      // Another pool, with other sequences in it so that the block ids differ.
      BlockPool b = make_pool(spec, 80);
      ASSERT_OK(run(b, {PoolRequest::create(1), PoolRequest::append(1, 13)}));
      fill(b, 1, 0, 13, 99);
      const std::vector<uint8_t> other_before = observe(b, 1);
      ASSERT_OK(run(b, {PoolRequest::create(7), PoolRequest::append(7, len)}));
      ASSERT_OK(b.import_sequence(7, *image));
      ASSERT_OK(b.check_invariants());
      EXPECT_EQ(observe(b, 7), before);
      EXPECT_EQ(observe(b, 1), other_before);  // the neighbour is untouched
      // Export of the import is the same image.
      auto again = b.export_sequence(7);
      ASSERT_TRUE(again.is_ok());
      EXPECT_EQ(again->bytes, image->bytes);
      EXPECT_EQ(again->window_begin, image->window_begin);

      // Into the same pool (a fresh sequence next to the source).
      ASSERT_OK(run(a, {PoolRequest::create(4), PoolRequest::append(4, len)}));
      ASSERT_OK(a.import_sequence(4, *image));
      ASSERT_OK(a.check_invariants());
      EXPECT_EQ(observe(a, 4), before);
      // The imported sequence goes on like the original: append + write + read.
      ASSERT_OK(run(a, {PoolRequest::append(3, 3), PoolRequest::append(4, 3)}));
      fill(a, 3, len, len + 3, 7);
      fill(a, 4, len, len + 3, 7);
      EXPECT_EQ(observe(a, 4), observe(a, 3));
      ASSERT_OK(a.check_invariants());
    }
  }
}

// A window after truncation holds fewer than N tokens (window_begin < length − N is not
// possible, but window_begin > length − N is): the image keeps that state exactly.
TEST(BlockPoolImageTest, RoundTripKeepsAShrunkWindow) {
  const CacheLayoutSpec spec = spec_for(CacheStorage::kQ4, 6);
  BlockPool a = make_pool(spec, 64);
  ASSERT_OK(run(a, {PoolRequest::create(0), PoolRequest::append(0, 30)}));
  fill(a, 0, 0, 30, 1);
  ASSERT_OK(run(a, {PoolRequest::truncate(0, 20), PoolRequest::append(0, 2)}));
  fill(a, 0, 20, 22, 2);
  ASSERT_EQ(*a.window_begin(0), 20);  // only positions 20, 21 are in f16
  auto image = a.export_sequence(0);
  ASSERT_TRUE(image.is_ok());
  EXPECT_EQ(image->window_begin, 20);
  BlockPool b = make_pool(spec, 64);
  ASSERT_OK(run(b, {PoolRequest::create(5), PoolRequest::append(5, 22)}));
  ASSERT_OK(b.import_sequence(5, *image));
  ASSERT_OK(b.check_invariants());
  EXPECT_EQ(observe(b, 5), observe(a, 0));
}

TEST(BlockPoolImageTest, RefusalsWriteNothing) {
  const CacheLayoutSpec spec = spec_for(CacheStorage::kQ4, 5);
  BlockPool a = make_pool(spec, 64);
  ASSERT_OK(run(a, {PoolRequest::create(1), PoolRequest::append(1, 20)}));
  fill(a, 1, 0, 20, 3);
  const SequenceImage good = *a.export_sequence(1);

  BlockPool b = make_pool(spec, 64);
  ASSERT_OK(run(b, {PoolRequest::create(2), PoolRequest::append(2, 20), PoolRequest::create(3),
                    PoolRequest::append(3, 19)}));
  fill(b, 2, 0, 20, 4);
  fill(b, 3, 0, 19, 5);
  const std::vector<uint8_t> arena(b.raw_storage().begin(), b.raw_storage().end());
  const int64_t wb2 = *b.window_begin(2);
  auto expect_refused = [&](SeqId s, const SequenceImage& img, StatusCode code,
                            const std::string& needle) {
    const Status st = b.import_sequence(s, img);
    EXPECT_EQ(st.code(), code) << st.to_string();
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.to_string();
    EXPECT_TRUE(std::equal(arena.begin(), arena.end(), b.raw_storage().begin()))
        << "arena changed by a refused import: " << st.to_string();
    EXPECT_EQ(*b.window_begin(2), wb2);
    EXPECT_TRUE(b.check_invariants().is_ok());
  };

  expect_refused(9, good, StatusCode::kNotFound, "the sequence does not exist");
  expect_refused(3, good, StatusCode::kFailedPrecondition, "length 19, the image 20");
  {
    SequenceImage img = good;
    img.layout_hash ^= 1;
    expect_refused(2, img, StatusCode::kInvalidArgument, "layout hash");
  }
  {
    SequenceImage img = good;
    img.bytes.pop_back();
    expect_refused(2, img, StatusCode::kDataLoss,
                   "expected " + std::to_string(good.bytes.size()) + " bytes");
  }
  {
    SequenceImage img = good;
    img.bytes.push_back(0);
    expect_refused(2, img, StatusCode::kDataLoss, "image is");
  }
  {
    SequenceImage img = good;
    img.window_begin = 14;  // below length − N = 15
    expect_refused(2, img, StatusCode::kDataLoss, "window_begin must be in [15, 20], got 14");
    img.window_begin = 21;
    expect_refused(2, img, StatusCode::kDataLoss, "got 21");
  }
  {
    SequenceImage img = good;
    img.length = -1;
    expect_refused(2, img, StatusCode::kDataLoss, "length");
  }
  // An image of another layout (same lengths, q2 instead of q4) is refused by its hash even
  // when a pool of that layout has the right length.
  {
    BlockPool q2 = make_pool(spec_for(CacheStorage::kQ2, 5), 64);
    ASSERT_OK(run(q2, {PoolRequest::create(1), PoolRequest::append(1, 20)}));
    fill(q2, 1, 0, 20, 3);
    const SequenceImage other = *q2.export_sequence(1);
    expect_refused(2, other, StatusCode::kInvalidArgument, "differs from this pool's");
  }
  // Without a window, window_begin must equal the length.
  {
    BlockPool f = make_pool(spec_for(CacheStorage::kF16, 0), 64);
    ASSERT_OK(run(f, {PoolRequest::create(1), PoolRequest::append(1, 4)}));
    SequenceImage img = *f.export_sequence(1);
    EXPECT_EQ(img.window_begin, 4);
    img.window_begin = 3;
    EXPECT_EQ(f.import_sequence(1, img).code(), StatusCode::kDataLoss);
  }
  EXPECT_EQ(a.export_sequence(42).status().code(), StatusCode::kNotFound);
}

TEST(BlockPoolImageTest, LayoutHashSeesWhatDescribeDoesNot) {
  const CacheLayout base = make_layout(spec_for(CacheStorage::kQ4, 5));
  EXPECT_EQ(layout_hash(base), layout_hash(make_layout(spec_for(CacheStorage::kQ4, 5))));
  // Stable across runs and builds: session files store it. Changing the recipe breaks every
  // saved session's binding; update docs/formats.md and this value together.
  EXPECT_EQ(layout_hash(base), 0x5d2a42e18116e093ull) << std::hex << layout_hash(base);

  CacheLayoutSpec later = spec_for(CacheStorage::kQ4, 5);
  later.ranks[1][1][0] = 8;  // layer 1 differs: describe() shows layer 0 only
  const CacheLayout l2 = make_layout(later);
  EXPECT_NE(layout_hash(base), layout_hash(l2));
  for (const CacheLayoutSpec& s :
       {spec_for(CacheStorage::kQ2, 5), spec_for(CacheStorage::kQ4, 6),
        spec_for(CacheStorage::kQ4, 0), spec_for(CacheStorage::kF16, 0)}) {
    EXPECT_NE(layout_hash(base), layout_hash(make_layout(s))) << make_layout(s).describe();
  }
  CacheLayoutSpec bt = spec_for(CacheStorage::kQ4, 5);
  bt.block_tokens = 16;
  EXPECT_NE(layout_hash(base), layout_hash(make_layout(bt)));
}

}  // namespace
}  // namespace palu::cache
