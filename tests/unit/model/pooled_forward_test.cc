// LlamaModel::forward_pooled: the block-pool forward against the contiguous-cache forward.
//   full rows (f32) == the standard forward, prefill and token-by-token decode;
//   latents (f32 / q4 / q3 / q2) == the latent simulation (attach_palu with the same bits),
//   through the tiled prefill and through the fused decode kernel;
//   the f16 window, batching of several sequences, GQA, Qwen2 biases (folded value bias),
//   and the errors (layout, sequence, lengths, tokens).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "model/llama_model.h"
#include "tests/common/tiny_llama.h"

namespace palu::model {
namespace {

using cache::BlockPool;
using cache::CacheLayout;
using cache::CacheStorage;
using cache::PoolRequest;

// Random low-rank factors with the manifest's ranks for `m`'s shape.
void attach_random_palu(LlamaModel* m, int group_size, int rank, int bits, uint32_t seed = 11) {
  const ModelConfig& c = m->config();
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 0.3f);
  PaluManifest man;
  man.group_size = group_size;
  const int G = c.num_kv_heads / group_size;
  std::vector<PaluLayerFactors> f(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    man.k_ranks.push_back(std::vector<int>(G, rank));
    // V ranks differ from K ranks (and between groups) to catch mixed-up widths.
    std::vector<int> vr;
    for (int g = 0; g < G; ++g) vr.push_back(rank + 2 * g + l);
    man.v_ranks.push_back(vr);
    for (int which = 0; which < 2; ++which) {
      LowRankProjection& p = which == 0 ? f[l].k : f[l].v;
      for (int g = 0; g < G; ++g) {
        LowRankGroup grp;
        grp.rank = which == 0 ? rank : vr[g];
        grp.a.resize((size_t)grp.rank * c.hidden_size);
        grp.b.resize((size_t)group_size * c.head_dim * grp.rank);
        for (float& x : grp.a) x = dist(rng);
        for (float& x : grp.b) x = dist(rng);
        p.groups.push_back(std::move(grp));
      }
    }
  }
  ASSERT_TRUE(m->attach_palu(man, std::move(f), bits).is_ok());
}

std::vector<int32_t> tokens(int n, uint32_t seed = 3) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(n);
  for (auto& x : t) x = (int32_t)(rng() % 50);
  return t;
}

// Logits of the contiguous-cache forward: one prefill of `prefill` tokens, then one token at a
// time. Rows [n, V].
std::vector<float> reference_logits(const LlamaModel& m, const std::vector<int32_t>& ids, int prefill) {
  const int V = m.config().vocab_size, n = (int)ids.size();
  auto cache = m.make_cache(n);
  EXPECT_TRUE(cache.is_ok());
  std::vector<float> out((size_t)n * V);
  EXPECT_TRUE(m.forward(ids.data(), prefill, &cache.value(), LogitsMode::kAll, out.data()).is_ok());
  for (int t = prefill; t < n; ++t) {
    EXPECT_TRUE(m.forward(ids.data() + t, 1, &cache.value(), LogitsMode::kLast, out.data() + (size_t)t * V).is_ok());
  }
  return out;
}

BlockPool make_pool(const LlamaModel& m, const CacheOptions& o, int max_tokens, int seqs = 1) {
  auto spec = m.cache_layout_spec(o);
  EXPECT_TRUE(spec.is_ok()) << spec.status().to_string();
  auto layout = CacheLayout::create(spec.value());
  EXPECT_TRUE(layout.is_ok()) << layout.status().to_string();
  const uint64_t budget = layout.value().session_bytes(max_tokens) * (uint64_t)seqs;
  auto pool = BlockPool::create(layout.value(), budget);
  EXPECT_TRUE(pool.is_ok()) << pool.status().to_string();
  return std::move(pool.value());
}

void commit(BlockPool* pool, const PoolRequest& r) {
  auto plan = pool->plan(r);
  ASSERT_TRUE(plan.is_ok()) << plan.status().to_string();
  ASSERT_TRUE(pool->commit(plan.value()).is_ok());
}

// The same schedule through the pool.
std::vector<float> pooled_logits(const LlamaModel& m, const CacheOptions& o, const std::vector<int32_t>& ids,
                                 int prefill) {
  const int V = m.config().vocab_size, n = (int)ids.size();
  BlockPool pool = make_pool(m, o, n);
  commit(&pool, PoolRequest::create(1));
  std::vector<float> out((size_t)n * V);
  commit(&pool, PoolRequest::append(1, prefill));
  SeqStep st{1, ids.data(), prefill, LogitsMode::kAll, out.data()};
  Status s = m.forward_pooled({&st, 1}, &pool);
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  for (int t = prefill; t < n; ++t) {
    commit(&pool, PoolRequest::append(1, 1));
    SeqStep d{1, ids.data() + t, 1, LogitsMode::kLast, out.data() + (size_t)t * V};
    s = m.forward_pooled({&d, 1}, &pool);
    EXPECT_TRUE(s.is_ok()) << s.to_string();
  }
  EXPECT_TRUE(pool.check_invariants().is_ok());
  return out;
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double mx = 0.0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    mx = std::max(mx, (double)std::fabs(a[i] - b[i]));
    scale = std::max(scale, (double)std::fabs(b[i]));
  }
  return mx / scale;
}

struct Case {
  TinySpec spec;
  int group_size;
};

class PooledForward : public ::testing::TestWithParam<Case> {};

// 150 tokens cross the 128-key tiles of the prefill and many 16-token pool blocks.
TEST_P(PooledForward, FullRowsMatchTheStandardForward) {
  TinyLlama tiny(GetParam().spec);
  auto m = tiny.build();
  const auto ids = tokens(150);
  const auto ref = reference_logits(*m, ids, 140);
  const auto got = pooled_logits(*m, CacheOptions{CacheStorage::kF32, 0, 16}, ids, 140);
  EXPECT_LT(max_rel_diff(got, ref), 2e-5);
  // f16 rows: close, not equal.
  const auto h = pooled_logits(*m, CacheOptions{CacheStorage::kF16, 0, 16}, ids, 140);
  EXPECT_LT(max_rel_diff(h, ref), 5e-3);
}

TEST_P(PooledForward, LatentsMatchTheSimulation) {
  const Case& c = GetParam();
  const auto ids = tokens(150);
  for (int bits : {0, 4, 3, 2}) {
    TinyLlama tiny(c.spec);
    auto m = tiny.build();
    attach_random_palu(m.get(), c.group_size, 4, bits);
    const auto ref = reference_logits(*m, ids, 130);
    CacheStorage st = CacheStorage::kF32;
    if (bits > 0) {
      ASSERT_TRUE(cache::storage_for_bits(bits, &st));
    }
    const auto got = pooled_logits(*m, CacheOptions{st, 0, 16}, ids, 130);
    // Identical quantization; only summation order differs (tiles, fused kernel blocks).
    EXPECT_LT(max_rel_diff(got, ref), bits == 0 ? 2e-5 : 1e-3) << "bits " << bits;
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, PooledForward,
                         ::testing::Values(Case{{"mha_g2", 4, 4, false, false}, 2},
                                           Case{{"gqa_g1", 4, 2, true, false}, 1},
                                           Case{{"gqa_g2_jlrd", 4, 2, false, false}, 2},
                                           Case{{"qwen2_bias_g2", 4, 4, false, true}, 2}),
                         [](const auto& info) { return std::string(info.param.spec.name); });

TEST(PooledForwardWindow, WindowCoveringEverythingEqualsF16Latents) {
  TinyLlama tiny({"mha", 4, 4, false, false});
  auto m = tiny.build();
  attach_random_palu(m.get(), 2, 4, 0);
  const auto ids = tokens(60);
  const auto f16 = pooled_logits(*m, CacheOptions{CacheStorage::kF16, 0, 16}, ids, 40);
  const auto win = pooled_logits(*m, CacheOptions{CacheStorage::kQ2, 64, 16}, ids, 40);
  EXPECT_LT(max_rel_diff(win, f16), 1e-5);
  // A window of 8: the prefill of 40 tokens leaves positions 0..31 at 2 bits and 32..39 in
  // f16, so prefill rows 0..31 (which see only keys ≤ their own position) equal the 2-bit
  // pool's exactly, and later rows (which see f16 keys) do not.
  const auto q2 = pooled_logits(*m, CacheOptions{CacheStorage::kQ2, 0, 16}, ids, 40);
  const auto w8 = pooled_logits(*m, CacheOptions{CacheStorage::kQ2, 8, 16}, ids, 40);
  auto rows = [](const std::vector<float>& v, int a, int b) {
    return std::vector<float>(v.begin() + a * 50, v.begin() + b * 50);
  };
  EXPECT_EQ(max_rel_diff(rows(w8, 0, 32), rows(q2, 0, 32)), 0.0);
  EXPECT_GT(max_rel_diff(rows(w8, 32, 60), rows(q2, 32, 60)), 1e-4);
  EXPECT_GT(max_rel_diff(rows(w8, 32, 60), rows(f16, 32, 60)), 1e-4);
}

// The simulation of the f16 window (LlamaModel::set_latent_window): token-by-token decode
// through the 2-bit latent cache with a window of W equals the windowed simulation (each query
// sees its newest W positions unquantized) up to the window rows' f16 rounding; a window as
// long as the sequence equals float latents; the windowed simulation differs from both the
// plain 2-bit one and float latents.
TEST(SimulationWindow, DecodeThroughTheWindowedCacheMatchesTheWindowedSimulation) {
  const auto ids = tokens(90);
  TinyLlama tiny({"gqa", 4, 2, false, false});
  auto m = tiny.build();
  attach_random_palu(m.get(), 1, 4, 2);
  const auto q2 = reference_logits(*m, ids, 1);
  ASSERT_TRUE(m->set_latent_window(8).is_ok());
  EXPECT_EQ(m->latent_window(), 8);
  const auto sim8 = reference_logits(*m, ids, 1);
  const auto sim8_prefill = reference_logits(*m, ids, 90);  // one prefill: same per-query rule
  const auto dec8 = pooled_logits(*m, CacheOptions{CacheStorage::kQ2, 8, 16}, ids, 1);
  std::printf("dec8-sim8 %g, sim8-q2 %g, dec8-q2 %g\n", max_rel_diff(dec8, sim8), max_rel_diff(sim8, q2), max_rel_diff(dec8, q2));
  EXPECT_LT(max_rel_diff(dec8, sim8), 5e-3);
  EXPECT_LT(max_rel_diff(sim8_prefill, sim8), 1e-5);
  EXPECT_GT(max_rel_diff(sim8, q2), 1e-3);
  ASSERT_TRUE(m->set_latent_window(1000).is_ok());
  const auto all = reference_logits(*m, ids, 30);
  TinyLlama tiny_f({"gqa", 4, 2, false, false});
  auto mf = tiny_f.build();
  attach_random_palu(mf.get(), 1, 4, 0);
  const auto f32 = reference_logits(*mf, ids, 30);
  EXPECT_LT(max_rel_diff(all, f32), 1e-5);
  EXPECT_GT(max_rel_diff(sim8, f32), 1e-3);
  // A cache without exact copies is refused, and the window needs quantized latents.
  auto plain = cache::KvCache::create(m->config().num_layers, m->config().kv_width(), 8);
  ASSERT_TRUE(plain.is_ok());
  std::vector<float> logits(m->config().vocab_size);
  EXPECT_EQ(m->forward(ids.data(), 2, &plain.value(), LogitsMode::kLast, logits.data()).code(),
            StatusCode::kInvalidArgument);
  EXPECT_FALSE(mf->set_latent_window(8).is_ok());
  TinyLlama tiny_p({"gqa", 4, 2, false, false});
  auto plain_model = tiny_p.build();
  EXPECT_FALSE(plain_model->set_latent_window(8).is_ok());
  EXPECT_FALSE(m->set_latent_window(-1).is_ok());
}

TEST(PooledForwardBatch, TwoSequencesInOneCallEqualSeparateCalls) {
  TinyLlama tiny({"gqa", 4, 2, false, false});
  auto m = tiny.build();
  attach_random_palu(m.get(), 1, 4, 4);
  const int V = m->config().vocab_size;
  const auto a = tokens(30, 5), b = tokens(20, 6);
  BlockPool pool = make_pool(*m, CacheOptions{CacheStorage::kQ4, 0, 16}, 32, 2);
  commit(&pool, PoolRequest::create(7));
  commit(&pool, PoolRequest::create(9));
  commit(&pool, PoolRequest::append(7, 29));
  commit(&pool, PoolRequest::append(9, 20));
  std::vector<float> la(V), lb((size_t)20 * V);
  SeqStep steps[2] = {{7, a.data(), 29, LogitsMode::kLast, la.data()}, {9, b.data(), 20, LogitsMode::kAll, lb.data()}};
  ASSERT_TRUE(m->forward_pooled(steps, &pool).is_ok());
  // Decode both together: one token each (fused kernel), in one batch.
  commit(&pool, PoolRequest::append(7, 1));
  commit(&pool, PoolRequest::append(9, 1));
  const int32_t nb = 17;
  std::vector<float> da(V), db(V);
  SeqStep dec[2] = {{7, a.data() + 29, 1, LogitsMode::kLast, da.data()}, {9, &nb, 1, LogitsMode::kLast, db.data()}};
  ASSERT_TRUE(m->forward_pooled(dec, &pool).is_ok());

  auto solo = [&](const std::vector<int32_t>& ids, int n, int32_t next) {
    BlockPool p = make_pool(*m, CacheOptions{CacheStorage::kQ4, 0, 16}, 32);
    commit(&p, PoolRequest::create(1));
    commit(&p, PoolRequest::append(1, n));
    std::vector<float> all((size_t)n * V), last(V);
    SeqStep s{1, ids.data(), n, LogitsMode::kAll, all.data()};
    EXPECT_TRUE(m->forward_pooled({&s, 1}, &p).is_ok());
    commit(&p, PoolRequest::append(1, 1));
    SeqStep d{1, &next, 1, LogitsMode::kLast, last.data()};
    EXPECT_TRUE(m->forward_pooled({&d, 1}, &p).is_ok());
    return std::make_pair(all, last);
  };
  const auto [aa, al] = solo(a, 29, a[29]);
  const auto [ba, bl] = solo(b, 20, nb);
  EXPECT_LT(max_rel_diff(la, std::vector<float>(aa.end() - V, aa.end())), 1e-5);
  EXPECT_LT(max_rel_diff(lb, ba), 1e-5);
  EXPECT_LT(max_rel_diff(da, al), 1e-5);
  EXPECT_LT(max_rel_diff(db, bl), 1e-5);
}

TEST(PooledForwardErrors, BadRequestsAreRefusedWithoutWriting) {
  TinyLlama tiny({"mha", 4, 4, false, false});
  auto full = tiny.build();
  auto lat = tiny.build();
  attach_random_palu(lat.get(), 2, 4, 0);
  // Packed storage needs latents.
  auto bad = full->cache_layout_spec(CacheOptions{CacheStorage::kQ4, 0, 16});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("compressed"), std::string::npos);

  BlockPool pool = make_pool(*full, CacheOptions{CacheStorage::kF16, 0, 16}, 16);
  commit(&pool, PoolRequest::create(1));
  commit(&pool, PoolRequest::append(1, 4));
  const auto before = std::vector<uint8_t>(pool.raw_storage().begin(), pool.raw_storage().end());
  std::vector<float> logits(50 * 8);
  const int32_t ids[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const int32_t bad_ids[2] = {1, 50};
  struct BadCase {
    SeqStep step;
    const char* expect;
  };
  const BadCase cases[] = {
      {{2, ids, 1, LogitsMode::kLast, logits.data()}, "sequence 2"},
      {{1, ids, 5, LogitsMode::kLast, logits.data()}, "[1, length]"},
      {{1, ids, 0, LogitsMode::kLast, logits.data()}, "[1, length]"},
      {{1, bad_ids, 2, LogitsMode::kLast, logits.data()}, "vocabulary"},
      {{1, ids, 2, LogitsMode::kLast, nullptr}, "logits is null"},
  };
  for (const auto& bc : cases) {
    Status s = full->forward_pooled({&bc.step, 1}, &pool);
    ASSERT_FALSE(s.is_ok()) << bc.expect;
    EXPECT_NE(s.message().find(bc.expect), std::string::npos) << s.to_string();
  }
  SeqStep twice[2] = {{1, ids, 1, LogitsMode::kNone, nullptr}, {1, ids, 1, LogitsMode::kNone, nullptr}};
  Status s = full->forward_pooled(twice, &pool);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("twice"), std::string::npos);
  // A latent model on a full-row pool and the reverse.
  SeqStep ok{1, ids, 4, LogitsMode::kNone, nullptr};
  s = lat->forward_pooled({&ok, 1}, &pool);
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("does not fit"), std::string::npos) << s.to_string();
  EXPECT_TRUE(std::equal(before.begin(), before.end(), pool.raw_storage().begin()));
  EXPECT_TRUE(full->forward_pooled({&ok, 1}, &pool).is_ok());
}

}  // namespace
}  // namespace palu::model
