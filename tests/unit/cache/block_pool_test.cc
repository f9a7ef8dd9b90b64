// BlockPool: plan/commit semantics, window aging, reads equal to the simulation, bad input,
// and a long random operation sequence checked against a model after every step.
#include "cache/block_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "backends/base/dtype.h"
#include "cache/latent_codec.h"
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
  const uint64_t budget =
      (uint64_t)blocks * l.block_bytes() + l.block_bytes() / 2;  // rounding down
  auto r = BlockPool::create(std::move(l), budget);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r).value();
}

Status run(BlockPool& pool, std::vector<PoolRequest> reqs) {
  auto p = pool.plan(reqs);
  if (!p.is_ok()) return p.status();
  return pool.commit(*p);
}

// Expected value of one stored row as the kernels must see it.
std::vector<float> stored_image(CacheStorage s, std::vector<float> z) {
  switch (s) {
    case CacheStorage::kF32:
      return z;
    case CacheStorage::kF16:
      for (auto& v : z) v = f16_to_f32(f32_to_f16(v));
      return z;
    case CacheStorage::kBF16:
      for (auto& v : z) v = bf16_to_f32(f32_to_bf16(v));
      return z;
    default:
      fake_quantize(z.data(), z.size(), storage_bits(s));
      return z;
  }
}
std::vector<float> f16_image(std::vector<float> z) {
  for (auto& v : z) v = f16_to_f32(f32_to_f16(v));
  return z;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Random latents for every (layer, kv, group) of one token, keyed [l][kv][g].
using TokenLatents = std::vector<std::array<std::vector<std::vector<float>>, 2>>;
TokenLatents random_token(const CacheLayout& l, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 1.f);
  TokenLatents t(l.num_layers());
  for (int layer = 0; layer < l.num_layers(); ++layer) {
    for (int kv = 0; kv < 2; ++kv) {
      for (int g = 0; g < l.num_groups(layer, (Proj)kv); ++g) {
        std::vector<float> z(l.rank(layer, (Proj)kv, g));
        for (auto& v : z) v = normal(rng);
        t[layer][kv].push_back(std::move(z));
      }
    }
  }
  return t;
}
void write_all(BlockPool& pool, SeqId s, int64_t pos, const TokenLatents& t) {
  for (int layer = 0; layer < (int)t.size(); ++layer) {
    for (int kv = 0; kv < 2; ++kv) {
      for (int g = 0; g < (int)t[layer][kv].size(); ++g) {
        ASSERT_OK(pool.write_token(s, pos, layer, (Proj)kv, g, t[layer][kv][g].data()));
      }
    }
  }
}

const CacheLayoutSpec kOddSpec = [] {
  CacheLayoutSpec s;
  s.ranks = {{std::vector<int>{33, 64}, std::vector<int>{96}},
             {std::vector<int>{160}, std::vector<int>{7, 33}}};
  s.block_tokens = 5;
  return s;
}();

// Every storage type: what read_token / block_view return equals the codec image exactly.
TEST(BlockPoolTest, ReadsEqualStoredImageForEveryStorage) {
  for (CacheStorage st :
       {CacheStorage::kF32, CacheStorage::kF16, CacheStorage::kBF16, CacheStorage::kQ8,
        CacheStorage::kQ4, CacheStorage::kQ3, CacheStorage::kQ2}) {
    SCOPED_TRACE(storage_name(st));
    CacheLayoutSpec spec = kOddSpec;
    spec.storage = st;
    BlockPool pool = make_pool(spec, 16);
    const CacheLayout& l = pool.layout();
    ASSERT_OK(run(pool, {PoolRequest::create(7), PoolRequest::append(7, 12)}));
    ASSERT_OK(pool.check_invariants());
    std::mt19937 rng(11);
    std::vector<TokenLatents> toks;
    for (int64_t p = 0; p < 12; ++p) {
      toks.push_back(random_token(l, rng));
      write_all(pool, 7, p, toks.back());
    }
    for (int64_t p = 0; p < 12; ++p) {
      for (int layer = 0; layer < 2; ++layer) {
        for (int kv = 0; kv < 2; ++kv) {
          for (int g = 0; g < l.num_groups(layer, (Proj)kv); ++g) {
            const std::vector<float> want = stored_image(st, toks[p][layer][kv][g]);
            std::vector<float> got(want.size());
            ASSERT_OK(pool.read_token(7, p, layer, (Proj)kv, g, got.data()));
            ASSERT_TRUE(bitwise_equal(got, want))
                << "pos " << p << " layer " << layer << " kv " << kv << " g " << g;
            // Block-level access gives the same row.
            auto v = pool.block_view(7, p / 5, layer, (Proj)kv, g);
            ASSERT_TRUE(v.is_ok());
            EXPECT_EQ(v->first_pos, p / 5 * 5);
            EXPECT_EQ(v->tokens, p / 5 == 2 ? 2 : 5);
            std::vector<float> row(want.size());
            v->dequantize_row((int)(p % 5), row.data());
            ASSERT_TRUE(bitwise_equal(row, want));
          }
        }
      }
    }
    // write_token_row writes all groups of (layer, kv) at once.
    ASSERT_EQ(l.total_rank(1, Proj::kValue), 40);  // groups of 7 and 33
    std::vector<float> row(l.total_rank(1, Proj::kValue));
    for (int i = 0; i < 7; ++i) row[i] = toks[3][1][1][0][i] - 2.f;
    for (int i = 0; i < 33; ++i) row[7 + i] = toks[3][1][1][1][i] - 2.f;
    ASSERT_OK(pool.write_token_row(7, 3, 1, Proj::kValue, row.data()));
    std::vector<float> got(33);
    ASSERT_OK(pool.read_token(7, 3, 1, Proj::kValue, 1, got.data()));
    EXPECT_TRUE(
        bitwise_equal(got, stored_image(st, std::vector<float>(row.begin() + 7, row.end()))));
    ASSERT_OK(pool.check_invariants());
  }
}

TEST(BlockPoolTest, FullLayoutF32IsExact) {
  BlockPool pool = make_pool(full_layout_spec(2, 64, CacheStorage::kF32, 16), 4);
  ASSERT_OK(run(pool, {PoolRequest::create(0), PoolRequest::append(0, 17)}));
  EXPECT_EQ(pool.block_table(0)->size(), 2u);
  std::vector<float> k(64), out(64);
  for (int i = 0; i < 64; ++i) k[i] = 0.1f * i - 3.3f;
  ASSERT_OK(pool.write_token(0, 16, 1, Proj::kKey, 0, k.data()));
  ASSERT_OK(pool.read_token(0, 16, 1, Proj::kKey, 0, out.data()));
  EXPECT_EQ(out, k);
  EXPECT_EQ(pool.stats().used_bytes, pool.layout().session_bytes(17));
  ASSERT_OK(pool.check_invariants());
}

// The newest N tokens read back at f16 precision, older ones at B bits; a token switches
// exactly when the length reaches pos + N + 1.
TEST(BlockPoolTest, WindowAgesOutExactly) {
  for (CacheStorage st : {CacheStorage::kQ4, CacheStorage::kQ3, CacheStorage::kQ2}) {
    SCOPED_TRACE(storage_name(st));
    CacheLayoutSpec spec = kOddSpec;
    spec.storage = st;
    spec.block_tokens = 8;
    spec.window_tokens = 5;
    BlockPool pool = make_pool(spec, 40);
    const CacheLayout& l = pool.layout();
    ASSERT_GE(l.window_blocks(), 1);
    ASSERT_OK(run(pool, {PoolRequest::create(1)}));
    std::mt19937 rng(5);
    std::vector<TokenLatents> toks;
    const int N = 5;
    for (int64_t len = 1; len <= 23; ++len) {
      ASSERT_OK(run(pool, {PoolRequest::append(1, 1)}));
      toks.push_back(random_token(l, rng));
      write_all(pool, 1, len - 1, toks.back());
      ASSERT_OK(pool.check_invariants());
      EXPECT_EQ(*pool.window_begin(1), std::max<int64_t>(0, len - N));
      for (int64_t p = 0; p < len; ++p) {
        const bool in_window = p >= len - N;
        for (int layer = 0; layer < 2; ++layer) {
          for (int kv = 0; kv < 2; ++kv) {
            for (int g = 0; g < l.num_groups(layer, (Proj)kv); ++g) {
              const auto& z = toks[p][layer][kv][g];
              const std::vector<float> f16 = f16_image(z), quant = stored_image(st, z);
              ASSERT_FALSE(bitwise_equal(f16, quant));  // the two precisions are distinguishable
              std::vector<float> got(z.size());
              ASSERT_OK(pool.read_token(1, p, layer, (Proj)kv, g, got.data()));
              ASSERT_TRUE(bitwise_equal(got, in_window ? f16 : quant))
                  << "len " << len << " pos " << p << (in_window ? " (window)" : " (aged out)");
              auto w = pool.window_view(1, layer, (Proj)kv, g);
              ASSERT_TRUE(w.is_ok());
              EXPECT_EQ(w->contains(p), in_window);
              if (in_window) {
                const uint16_t* h = w->row(p);
                for (size_t i = 0; i < z.size(); ++i) ASSERT_EQ(f16_to_f32(h[i]), f16[i]);
              }
            }
          }
        }
      }
    }
    // A bulk append larger than the window: positions written after commit that are already
    // outside the window go straight to B bits.
    ASSERT_OK(run(pool, {PoolRequest::append(1, 12)}));
    for (int64_t p = 23; p < 35; ++p) {
      toks.push_back(random_token(l, rng));
      write_all(pool, 1, p, toks.back());
    }
    for (int64_t p = 20; p < 35; ++p) {
      std::vector<float> got(33);
      ASSERT_OK(pool.read_token(1, p, 0, Proj::kKey, 0, got.data()));
      const auto& z = toks[p][0][0][0];
      EXPECT_TRUE(bitwise_equal(got, p >= 30 ? f16_image(z) : stored_image(st, z))) << "pos " << p;
    }
    // Truncation keeps aged-out tokens at B bits: window shrinks to [min(begin, n), n).
    ASSERT_OK(run(pool, {PoolRequest::truncate(1, 28)}));
    EXPECT_EQ(*pool.window_begin(1), 28);
    std::vector<float> got(33);
    ASSERT_OK(pool.read_token(1, 27, 0, Proj::kKey, 0, got.data()));
    EXPECT_TRUE(bitwise_equal(got, stored_image(st, toks[27][0][0][0])));
    // Refill: new tokens enter the window again.
    ASSERT_OK(run(pool, {PoolRequest::append(1, 2)}));
    EXPECT_EQ(*pool.window_begin(1), 28);
    const TokenLatents t = random_token(l, rng);
    write_all(pool, 1, 29, t);
    ASSERT_OK(pool.read_token(1, 29, 0, Proj::kKey, 0, got.data()));
    EXPECT_TRUE(bitwise_equal(got, f16_image(t[0][0][0])));
    ASSERT_OK(pool.check_invariants());
  }
}

TEST(BlockPoolTest, ForkCopiesDataAndWindow) {
  CacheLayoutSpec spec = uniform_latent_spec(1, {16}, {16}, CacheStorage::kQ4, 4, 3);
  BlockPool pool = make_pool(spec, 32);
  const CacheLayout& l = pool.layout();
  std::mt19937 rng(3);
  ASSERT_OK(run(pool, {PoolRequest::create(10), PoolRequest::append(10, 6)}));
  std::vector<TokenLatents> toks;
  for (int p = 0; p < 6; ++p) {
    toks.push_back(random_token(l, rng));
    write_all(pool, 10, p, toks.back());
  }
  const uint64_t before = pool.stats().used_bytes;
  auto plan = pool.plan(PoolRequest::fork(10, 11));
  ASSERT_TRUE(plan.is_ok());
  EXPECT_EQ(plan->blocks_taken(), l.session_blocks(6));
  EXPECT_EQ(plan->bytes_taken(), l.session_bytes(6));
  ASSERT_OK(pool.commit(*plan));
  EXPECT_EQ(pool.stats().used_bytes, before + l.session_bytes(6));
  ASSERT_OK(pool.check_invariants());
  // Same reads in both, then they diverge.
  for (int p = 0; p < 6; ++p) {
    std::vector<float> a(16), b(16);
    ASSERT_OK(pool.read_token(10, p, 0, Proj::kValue, 0, a.data()));
    ASSERT_OK(pool.read_token(11, p, 0, Proj::kValue, 0, b.data()));
    EXPECT_TRUE(bitwise_equal(a, b));
  }
  ASSERT_OK(run(pool, {PoolRequest::truncate(11, 4), PoolRequest::append(11, 1)}));
  const TokenLatents t = random_token(l, rng);
  write_all(pool, 11, 4, t);
  std::vector<float> a(16), b(16);
  ASSERT_OK(pool.read_token(10, 4, 0, Proj::kKey, 0, a.data()));
  ASSERT_OK(pool.read_token(11, 4, 0, Proj::kKey, 0, b.data()));
  EXPECT_TRUE(bitwise_equal(a, f16_image(toks[4][0][0][0])));
  EXPECT_TRUE(bitwise_equal(b, f16_image(t[0][0][0])));
  ASSERT_OK(pool.check_invariants());
}

// Snapshot of everything observable, to check "no side effect".
struct Snapshot {
  std::vector<uint8_t> bytes;
  uint64_t version;
  uint64_t used, free_bytes;
  std::map<SeqId, std::pair<int64_t, std::vector<int32_t>>> tables;
  bool operator==(const Snapshot&) const = default;
};
Snapshot snapshot(const BlockPool& pool) {
  Snapshot s;
  auto raw = pool.raw_storage();
  s.bytes.assign(raw.begin(), raw.end());
  s.version = pool.version();
  s.used = pool.stats().used_bytes;
  s.free_bytes = pool.stats().free_bytes;
  for (SeqId id : pool.sequences()) {
    auto t = pool.block_table(id);
    s.tables[id] = {*pool.length(id), std::vector<int32_t>(t->begin(), t->end())};
  }
  return s;
}

TEST(BlockPoolTest, DoesNotFitIsAValueWithNoSideEffect) {
  CacheLayoutSpec spec = uniform_latent_spec(2, {32, 32}, {32, 32}, CacheStorage::kQ2, 16, 4);
  BlockPool pool = make_pool(spec, 10);
  const CacheLayout& l = pool.layout();
  ASSERT_EQ(l.window_blocks(), 1);
  ASSERT_OK(run(pool, {PoolRequest::create(0), PoolRequest::append(0, 40)}));  // 1 + 3 blocks
  std::mt19937 rng(9);
  for (int p = 0; p < 40; ++p) write_all(pool, 0, p, random_token(l, rng));
  ASSERT_EQ(pool.stats().free_blocks, 6);
  const Snapshot before = snapshot(pool);

  auto p = pool.plan(PoolRequest::append(0, 120));  // needs 7 more blocks
  ASSERT_FALSE(p.is_ok());
  EXPECT_EQ(p.status().code(), StatusCode::kResourceExhausted);
  const std::string& m = p.status().message();
  EXPECT_NE(m.find("needs 7 blocks (" + std::to_string(7 * l.block_bytes()) + " bytes)"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("6 blocks (" + std::to_string(6 * l.block_bytes()) + " bytes) are free"),
            std::string::npos)
      << m;
  // A batch whose last step does not fit: nothing of the earlier steps happens either.
  auto batch = pool.plan(std::vector<PoolRequest>{
      PoolRequest::create(1), PoolRequest::append(1, 17), PoolRequest::fork(0, 2)});
  ASSERT_FALSE(batch.is_ok());
  EXPECT_EQ(batch.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(batch.status().message().find("request 2 (fork 0 -> 2)"), std::string::npos);
  ASSERT_OK(pool.check_invariants());
  EXPECT_TRUE(snapshot(pool) == before);
  EXPECT_FALSE(pool.has_sequence(1));

  // Freeing inside the same plan makes room for later steps.
  auto reuse = pool.plan(std::vector<PoolRequest>{PoolRequest::free(0), PoolRequest::create(3),
                                                  PoolRequest::append(3, 16 * 9)});
  ASSERT_TRUE(reuse.is_ok()) << reuse.status().to_string();
  EXPECT_EQ(reuse->blocks_released(), 4);
  EXPECT_EQ(reuse->blocks_taken(), 10);
  EXPECT_TRUE(snapshot(pool) == before);  // planning did nothing
  ASSERT_OK(pool.commit(*reuse));
  EXPECT_EQ(pool.stats().free_blocks, 0);
  EXPECT_EQ(pool.stats().used_bytes, pool.stats().capacity_bytes);
  ASSERT_OK(pool.check_invariants());
  // Full pool: even one more token does not fit; a sequence with a window cannot be created.
  EXPECT_EQ(pool.plan(PoolRequest::append(3, 1)).status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(pool.plan(PoolRequest::create(4)).status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(pool.plan(PoolRequest::truncate(3, 5)).is_ok());
}

TEST(BlockPoolTest, StalePlansAreRefused) {
  BlockPool pool = make_pool(uniform_latent_spec(1, {8}, {8}, CacheStorage::kF16, 4), 8);
  auto a = pool.plan(PoolRequest::create(1));
  auto b = pool.plan(PoolRequest::create(2));
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  ASSERT_OK(pool.commit(*a));
  const Snapshot after_a = snapshot(pool);
  Status st = pool.commit(*b);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.to_string();
  EXPECT_NE(st.message().find("stale"), std::string::npos);
  EXPECT_EQ(pool.commit(*a).code(), StatusCode::kFailedPrecondition);  // no double commit
  EXPECT_TRUE(snapshot(pool) == after_a);
  EXPECT_FALSE(pool.has_sequence(2));
  // A plan of another pool.
  BlockPool other = make_pool(uniform_latent_spec(1, {8}, {8}, CacheStorage::kF16, 4), 8);
  auto c = other.plan(PoolRequest::create(5));
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(pool.commit(*c).code(), StatusCode::kInvalidArgument);
  ASSERT_OK(pool.check_invariants());
  ASSERT_OK(other.check_invariants());
}

TEST(BlockPoolTest, BadInputIsAClearError) {
  BlockPool pool = make_pool(kOddSpec, 8);
  ASSERT_OK(run(pool, {PoolRequest::create(0), PoolRequest::append(0, 3)}));
  const Snapshot before = snapshot(pool);
  std::vector<float> z(200, 1.0f), out(200);
  auto code = [](const Status& s) { return s.code(); };
  // Unknown sequence.
  EXPECT_EQ(code(pool.write_token(9, 0, 0, Proj::kKey, 0, z.data())), StatusCode::kNotFound);
  EXPECT_EQ(code(pool.read_token(9, 0, 0, Proj::kKey, 0, out.data())), StatusCode::kNotFound);
  EXPECT_EQ(pool.length(9).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(pool.block_view(9, 0, 0, Proj::kKey, 0).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(pool.plan(PoolRequest::append(9, 1)).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(pool.plan(PoolRequest::free(9)).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(pool.plan(PoolRequest::fork(9, 10)).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(pool.plan(PoolRequest::truncate(9, 0)).status().code(), StatusCode::kNotFound);
  // Positions out of range.
  EXPECT_EQ(code(pool.write_token(0, 3, 0, Proj::kKey, 0, z.data())), StatusCode::kOutOfRange);
  EXPECT_EQ(code(pool.write_token(0, -1, 0, Proj::kKey, 0, z.data())), StatusCode::kOutOfRange);
  EXPECT_EQ(code(pool.read_token(0, 3, 0, Proj::kKey, 0, out.data())), StatusCode::kOutOfRange);
  EXPECT_EQ(pool.block_view(0, 1, 0, Proj::kKey, 0).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(pool.block_view(0, -1, 0, Proj::kKey, 0).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(pool.plan(PoolRequest::truncate(0, 4)).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(pool.plan(PoolRequest::truncate(0, -1)).status().code(), StatusCode::kOutOfRange);
  // Wrong layer / kv / group, null, non-finite.
  Status st = pool.write_token(0, 0, 2, Proj::kKey, 0, z.data());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("layer"), std::string::npos) << st.message();
  EXPECT_EQ(code(pool.write_token(0, 0, -1, Proj::kKey, 0, z.data())),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(pool.write_token(0, 0, 0, (Proj)2, 0, z.data())), StatusCode::kInvalidArgument);
  st = pool.write_token(0, 0, 0, Proj::kValue, 1, z.data());  // layer 0 V has one group
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("group"), std::string::npos) << st.message();
  EXPECT_EQ(code(pool.write_token(0, 0, 0, Proj::kKey, -1, z.data())),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code(pool.write_token(0, 0, 0, Proj::kKey, 0, nullptr)), StatusCode::kInvalidArgument);
  EXPECT_EQ(code(pool.read_token(0, 0, 0, Proj::kKey, 0, nullptr)), StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.window_view(0, 0, Proj::kKey, 5).status().code(), StatusCode::kInvalidArgument);
  std::vector<float> bad = z;
  bad[20] = std::nanf("");
  EXPECT_EQ(code(pool.write_token(0, 0, 0, Proj::kKey, 0, bad.data())),
            StatusCode::kInvalidArgument);
  bad[20] = INFINITY;
  EXPECT_EQ(code(pool.write_token_row(0, 0, 0, Proj::kKey, bad.data())),
            StatusCode::kInvalidArgument);
  // Bad requests.
  EXPECT_EQ(pool.plan(PoolRequest::create(0)).status().code(),
            StatusCode::kInvalidArgument);  // exists
  EXPECT_EQ(pool.plan(PoolRequest::create(-3)).status().code(),
            StatusCode::kInvalidArgument);  // negative id
  EXPECT_EQ(pool.plan(PoolRequest::append(0, -1)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.plan(PoolRequest::append(0, BlockPool::kMaxSequenceTokens)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.plan(PoolRequest::fork(0, 0)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pool.plan(PoolRequest::fork(0, -2)).status().code(), StatusCode::kInvalidArgument);
  PoolRequest weird = PoolRequest::create(4);
  weird.kind = (PoolRequest::Kind)77;
  EXPECT_EQ(pool.plan(weird).status().code(), StatusCode::kInvalidArgument);
  // Within one plan: a sequence freed earlier cannot be appended to later.
  EXPECT_EQ(pool.plan(std::vector<PoolRequest>{PoolRequest::free(0), PoolRequest::append(0, 1)})
                .status()
                .code(),
            StatusCode::kNotFound);
  // None of it changed anything.
  EXPECT_TRUE(snapshot(pool) == before);
  ASSERT_OK(pool.check_invariants());
  // Pool creation.
  EXPECT_EQ(BlockPool::create(make_layout(kOddSpec), 10).status().code(),
            StatusCode::kInvalidArgument);
}

// Thousands of random operations against a model: lengths, contents (exactly representable
// latents, so every storage path reads them back exactly), capacity, invariants after each.
TEST(BlockPoolTest, RandomOperationsKeepInvariants) {
  // q2 with a window of 3: ranks of 4 with values {t, t+1, t+2, t+3} are exact in f16 and
  // in 2 bits (scale 1, zero t), so reads check the data path, not rounding.
  CacheLayoutSpec spec = uniform_latent_spec(2, {4}, {4, 4}, CacheStorage::kQ2, 4, 3);
  const int64_t kBlocks = 24;
  BlockPool pool = make_pool(spec, kBlocks);
  const CacheLayout& l = pool.layout();
  const int64_t W = l.window_blocks();
  ASSERT_EQ(W, 1);
  std::mt19937 rng(20240731);
  std::map<SeqId, std::vector<int>> model;  // seq → tag per position
  auto model_blocks = [&](int64_t len) { return (len + 3) / 4 + W; };
  auto used_blocks = [&] {
    int64_t b = 0;
    for (auto& [id, tags] : model) b += model_blocks((int64_t)tags.size());
    return b;
  };
  auto write_tag = [&](SeqId s, int64_t pos, int tag) {
    for (int layer = 0; layer < 2; ++layer) {
      std::vector<float> row = {(float)tag, tag + 1.f, tag + 2.f, tag + 3.f};
      ASSERT_OK(pool.write_token_row(s, pos, layer, Proj::kKey, row.data()));
      std::vector<float> vrow = {(float)tag, tag + 3.f, tag + 1.f, tag + 2.f,
                                 tag + 2.f,  tag + 1.f, tag + 3.f, (float)tag};
      ASSERT_OK(pool.write_token_row(s, pos, layer, Proj::kValue, vrow.data()));
    }
  };
  auto check_tag = [&](SeqId s, int64_t pos, int tag) {
    std::vector<float> out(4);
    ASSERT_OK(pool.read_token(s, pos, 1, Proj::kValue, 1, out.data()));
    ASSERT_EQ(out, (std::vector<float>{tag + 2.f, tag + 1.f, tag + 3.f, (float)tag}))
        << "seq " << s << " pos " << pos;
    ASSERT_OK(pool.read_token(s, pos, 0, Proj::kKey, 0, out.data()));
    ASSERT_EQ(out[3], tag + 3.f);
  };
  int fits = 0, exhausted = 0, stale = 0, invalid = 0;
  for (int op = 0; op < 10000; ++op) {
    SCOPED_TRACE("op " + std::to_string(op));
    // Pick a request; ids 0..11 so some are unknown.
    const SeqId s = (SeqId)(rng() % 12), d = (SeqId)(rng() % 12);
    const bool exists = model.count(s) != 0;
    const int64_t len = exists ? (int64_t)model[s].size() : 0;
    PoolRequest r;
    switch (rng() % 10) {
      case 0:
      case 1:
        r = PoolRequest::create(s);
        break;
      case 2:
      case 3:
      case 4:
        r = PoolRequest::append(s, (int64_t)(rng() % 3 == 0 ? rng() % 40 : rng() % 4));
        break;
      case 5:
        r = PoolRequest::fork(s, d);
        break;
      case 6:
      case 7:
        r = PoolRequest::truncate(s, exists ? (int64_t)(rng() % (len + 2)) : 0);
        break;
      default:
        r = PoolRequest::free(s);
        break;
    }
    // What the model says.
    int64_t need = 0;
    StatusCode want = StatusCode::kOk;
    switch (r.kind) {
      case PoolRequest::Kind::kCreate:
        if (exists)
          want = StatusCode::kInvalidArgument;
        else
          need = W;
        break;
      case PoolRequest::Kind::kAppend:
        if (!exists)
          want = StatusCode::kNotFound;
        else
          need = model_blocks(len + r.tokens) - model_blocks(len);
        break;
      case PoolRequest::Kind::kFork:
        if (!exists)
          want = StatusCode::kNotFound;
        else if (model.count(d))
          want = StatusCode::kInvalidArgument;
        else
          need = model_blocks(len);
        break;
      case PoolRequest::Kind::kTruncate:
        if (!exists)
          want = StatusCode::kNotFound;
        else if (r.tokens > len)
          want = StatusCode::kOutOfRange;
        break;
      case PoolRequest::Kind::kFree:
        if (!exists) want = StatusCode::kNotFound;
        break;
    }
    if (want == StatusCode::kOk && need > kBlocks - used_blocks())
      want = StatusCode::kResourceExhausted;

    const uint64_t version = pool.version();
    auto plan = pool.plan(r);
    ASSERT_EQ(plan.status().code(), want) << describe(r) << ": " << plan.status().to_string();
    ASSERT_EQ(pool.version(), version);
    if (!plan.is_ok()) {
      (want == StatusCode::kResourceExhausted ? exhausted : invalid)++;
      ASSERT_OK(pool.check_invariants());
      continue;
    }
    // Sometimes another commit sneaks in first: the plan must then be refused.
    if (rng() % 20 == 0) {
      auto noop = pool.plan(std::span<const PoolRequest>());
      ASSERT_TRUE(noop.is_ok());
      ASSERT_OK(pool.commit(*noop));
      ASSERT_EQ(pool.commit(*plan).code(), StatusCode::kFailedPrecondition);
      ++stale;
      ASSERT_OK(pool.check_invariants());
      continue;
    }
    ASSERT_OK(pool.commit(*plan));
    ++fits;
    switch (r.kind) {
      case PoolRequest::Kind::kCreate:
        model[s] = {};
        break;
      case PoolRequest::Kind::kAppend:
        for (int64_t i = 0; i < r.tokens; ++i) {
          const int tag = (int)(rng() % 1000);
          model[s].push_back(tag);
          write_tag(s, len + i, tag);
        }
        break;
      case PoolRequest::Kind::kFork:
        model[d] = model[s];
        break;
      case PoolRequest::Kind::kTruncate:
        model[s].resize((size_t)r.tokens);
        break;
      case PoolRequest::Kind::kFree:
        model.erase(s);
        break;
    }
    ASSERT_OK(pool.check_invariants());
    const PoolStats st = pool.stats();
    ASSERT_LE(st.used_blocks, kBlocks);
    ASSERT_EQ(st.used_blocks, used_blocks());
    ASSERT_EQ(st.num_sequences, (int64_t)model.size());
    uint64_t formula = 0;
    for (auto& [id, tags] : model) formula += l.session_bytes((int64_t)tags.size());
    ASSERT_EQ(st.used_bytes, formula);
    // Contents: a few random positions of the touched sequences; everything now and then.
    for (SeqId id : {s, d}) {
      if (!model.count(id)) continue;
      const auto& tags = model[id];
      ASSERT_EQ(*pool.length(id), (int64_t)tags.size());
      for (int k = 0; k < 3 && !tags.empty(); ++k) {
        const int64_t p = (int64_t)(rng() % tags.size());
        check_tag(id, p, tags[(size_t)p]);
      }
    }
    if (op % 500 == 0) {
      for (auto& [id, tags] : model) {
        for (size_t p = 0; p < tags.size(); ++p) check_tag(id, (int64_t)p, tags[p]);
      }
    }
  }
  // Every kind of outcome happened.
  EXPECT_GT(fits, 2000);
  EXPECT_GT(exhausted, 50);
  EXPECT_GT(stale, 20);
  EXPECT_GT(invalid, 100);
  // Freeing everything returns the pool to empty.
  std::vector<PoolRequest> frees;
  for (auto& [id, tags] : model) frees.push_back(PoolRequest::free(id));
  ASSERT_OK(run(pool, frees));
  EXPECT_EQ(pool.stats().free_blocks, kBlocks);
  EXPECT_EQ(pool.stats().used_bytes, 0u);
  ASSERT_OK(pool.check_invariants());
}

}  // namespace
}  // namespace palu::cache
