// Full-cache decode attention (backends/cpu/full_attention.h) against a float64 reference written
// plainly here: dequantize every K/V row, scores, softmax, Σ p·V. Storages f32/f16/bf16, MHA and
// GQA (H/H_kv ∈ {1, 2, 3, 4, 5, 16}), d_h ∈ {52, 64, 80, 128}, T ∈ {1, 63, 65, 4099}, contiguous and
// paged rows (random block ids, block_tokens 16), padded row strides, the f16 window overlay;
// scalar, AVX2 and AVX-512 (each skipped with the reason on CPUs without it). Also bad input →
// INVALID_ARGUMENT naming the field.
#include "backends/cpu/full_attention.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "backends/base/dtype.h"

namespace palu::backends::cpu {
namespace {

struct Case {
  int H, H_kv, d_h, T;
  LatentStorage storage;
  bool paged;
  int pad_bytes = 0;      // extra bytes after each row (row_stride_bytes = row + pad)
  int window_tokens = 0;  // > 0: the newest N rows come from an f16 window overlay
};

// One of K or V: T rows of width H_kv·d_h in `storage`, contiguous or paged, plus the values the
// reference must use (the stored values dequantized, or the window's f16 values).
struct Rows {
  std::vector<uint8_t> arena;
  std::vector<int32_t> block_ids;
  std::vector<std::vector<uint16_t>> window;  // f16 rows for t ≥ window_begin
  std::vector<const uint16_t*> window_ptrs;
  std::vector<double> deq;  // [T, width]
  LatentRows rows;
};

constexpr int kBlockTokens = 16;

void make_rows(const Case& c, std::mt19937& rng, Rows& out) {
  const int width = c.H_kv * c.d_h;
  const size_t row_bytes = latent_row_bytes(c.storage, width);
  const size_t stride = row_bytes + (size_t)c.pad_bytes;
  std::normal_distribution<float> nd(0.f, 1.f);
  const int nblocks = (c.T + kBlockTokens - 1) / kBlockTokens;
  // Paged: twice as many blocks as needed, the sequence's blocks a random subset in random order.
  const int arena_blocks = c.paged ? 2 * nblocks + 1 : 0;
  const size_t block_stride = (size_t)kBlockTokens * stride + 64;  // padding between blocks
  out.arena.assign(c.paged ? arena_blocks * block_stride : (size_t)c.T * stride, 0xA5);
  if (c.paged) {
    std::vector<int32_t> ids(arena_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    out.block_ids.assign(ids.begin(), ids.begin() + nblocks);
  }
  out.deq.resize((size_t)c.T * width);
  const int64_t wb = c.window_tokens > 0 ? std::max(0, c.T - c.window_tokens) : -1;
  for (int t = 0; t < c.T; ++t) {
    uint8_t* row = c.paged
                       ? out.arena.data() + (size_t)out.block_ids[t / kBlockTokens] * block_stride +
                             (size_t)(t % kBlockTokens) * stride
                       : out.arena.data() + (size_t)t * stride;
    double* d = out.deq.data() + (size_t)t * width;
    std::vector<uint16_t> win;
    for (int i = 0; i < width; ++i) {
      const float z = nd(rng);
      if (c.storage == LatentStorage::kF32) {
        std::memcpy(row + 4 * (size_t)i, &z, 4);
        d[i] = z;
      } else {
        const uint16_t h = c.storage == LatentStorage::kF16 ? f32_to_f16(z) : f32_to_bf16(z);
        std::memcpy(row + 2 * (size_t)i, &h, 2);
        d[i] = c.storage == LatentStorage::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      if (wb >= 0 && t >= wb) {
        // The window holds a different (f16) value so a kernel reading the stored row fails.
        const uint16_t h = f32_to_f16(nd(rng));
        win.push_back(h);
        d[i] = f16_to_f32(h);
      }
    }
    if (wb >= 0 && t >= wb) out.window.push_back(std::move(win));
  }
  for (const auto& w : out.window) out.window_ptrs.push_back(w.data());
  LatentRows& r = out.rows;
  r.storage = c.storage;
  r.rows = out.arena.data();
  r.row_stride_bytes = c.pad_bytes > 0 ? stride : 0;
  r.rank = width;
  if (c.paged) {
    r.block_tokens = kBlockTokens;
    r.block_ids = out.block_ids.data();
    r.block_stride_bytes = block_stride;
  }
  if (wb >= 0) {
    r.window_begin = wb;
    r.window_rows = out.window_ptrs.data();
  }
}

struct Problem {
  FullAttentionShape shape;
  int T;
  Rows k, v;
  std::vector<float> q;
};

void make_problem(const Case& c, uint32_t seed, Problem& p) {
  std::mt19937 rng(seed);
  p.shape = {c.H, c.H_kv, c.d_h};
  p.T = c.T;
  make_rows(c, rng, p.k);
  make_rows(c, rng, p.v);
  std::normal_distribution<float> qd(0.f, 1.5f);  // scores ~ N(0, 1.5²): peaked, not one-hot
  p.q.resize((size_t)c.H * c.d_h);
  for (auto& x : p.q) x = qd(rng);
}

std::vector<double> reference(const Problem& p) {
  const auto& sh = p.shape;
  const int dh = sh.head_dim, width = sh.num_kv_heads * dh, n_rep = sh.num_heads / sh.num_kv_heads;
  std::vector<double> out((size_t)sh.num_heads * dh, 0.0);
  for (int h = 0; h < sh.num_heads; ++h) {
    const int j = h / n_rep;
    std::vector<double> s(p.T);
    double mx = -1e300;
    for (int t = 0; t < p.T; ++t) {
      double d = 0;
      for (int i = 0; i < dh; ++i)
        d += (double)p.q[(size_t)h * dh + i] * p.k.deq[(size_t)t * width + (size_t)j * dh + i];
      s[t] = d / std::sqrt((double)dh);
      mx = std::max(mx, s[t]);
    }
    double l = 0;
    for (auto& x : s) l += (x = std::exp(x - mx));
    for (int t = 0; t < p.T; ++t)
      for (int i = 0; i < dh; ++i)
        out[(size_t)h * dh + i] += s[t] / l * p.v.deq[(size_t)t * width + (size_t)j * dh + i];
  }
  return out;
}

double max_rel(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0, scale = 1e-30;
  for (size_t i = 0; i < b.size(); ++i) scale = std::max(scale, std::fabs(b[i]));
  for (size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs((double)a[i] - b[i]));
  return m / scale;
}

std::vector<Case> all_cases() {
  using S = LatentStorage;
  std::vector<Case> cases;
  for (S st : {S::kF32, S::kF16, S::kBF16}) {
    for (int T : {1, 63, 65, 4099}) {
      for (int d_h : {64, 128}) {
        for (bool paged : {false, true}) {
          cases.push_back({4, 4, d_h, T, st, paged});  // MHA
          cases.push_back({8, 2, d_h, T, st, paged});  // GQA, 4 query heads per KV head
        }
      }
    }
    cases.push_back({12, 4, 64, 130, st, true});           // 3 per KV head
    cases.push_back({10, 2, 80, 200, st, false, 12});      // 5 per KV head, d_h tail, padded rows
    cases.push_back({16, 1, 128, 300, st, true, 8});       // MQA: 16 per KV head, padded, paged
    cases.push_back({8, 4, 64, 150, st, true, 0, 40});     // window overlay, paged
    cases.push_back({4, 2, 128, 4099, st, false, 0, 70});  // window overlay, long context
    cases.push_back({4, 2, 64, 20, st, false, 0, 64});     // window longer than T: all rows f16
    cases.push_back({6, 3, 52, 70, st, true, 4});          // d_h 52: a 4-lane tail at 8 and 16
  }
  return cases;
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << "H=" << c.H << " H_kv=" << c.H_kv << " d_h=" << c.d_h << " T=" << c.T << " "
      << row_storage_name(c.storage) << (c.paged ? " paged" : " contiguous") << " pad=" << c.pad_bytes
      << " window=" << c.window_tokens;
}

class FullAttentionTest : public ::testing::TestWithParam<std::tuple<Case, CpuIsa>> {};

TEST_P(FullAttentionTest, MatchesFloat64Reference) {
  const auto& [c, isa] = GetParam();
  if ((int)isa > (int)detect_cpu_isa()) {
    GTEST_SKIP() << "this CPU has no " << cpu_isa_name(isa) << " (it has "
                  << cpu_isa_name(detect_cpu_isa()) << "); that kernel is not tested here";
  }
  Problem p;
  make_problem(c, 4321u + (uint32_t)c.T * 3u + (uint32_t)c.d_h + (uint32_t)c.H, p);
  std::vector<float> out((size_t)c.H * c.d_h, -1.f);
  const Status st =
      full_attention_decode_isa(isa, p.shape, p.k.rows, p.v.rows, p.T, p.q.data(), out.data());
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_LE(max_rel(out, reference(p)), 1e-5);
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, CpuIsa>>& info) {
  const auto& [c, isa] = info.param;
  return std::string(cpu_isa_name(isa)) + "_H" + std::to_string(c.H) + "_Hkv" +
         std::to_string(c.H_kv) + "_dh" + std::to_string(c.d_h) + "_T" + std::to_string(c.T) + "_" +
         row_storage_name(c.storage) + (c.paged ? "_paged" : "_contig") + "_pad" +
         std::to_string(c.pad_bytes) + "_win" + std::to_string(c.window_tokens) + "_" +
         std::to_string(info.index);
}

INSTANTIATE_TEST_SUITE_P(FullAttention, FullAttentionTest,
                         ::testing::Combine(::testing::ValuesIn(all_cases()),
                                            ::testing::Values(CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512)),
                         case_name);

// Paged and contiguous descriptors of the same rows give bit-identical results (same blocks of
// tokens, same arithmetic), and the dispatching entry point agrees with the explicit ISA.
TEST(FullAttentionPaging, PagedEqualsContiguousBitForBit) {
  const Case paged{8, 2, 128, 333, LatentStorage::kF16, true};
  Problem p;
  make_problem(paged, 77, p);
  // Contiguous copies of the paged rows.
  const int width = 2 * 128;
  const size_t rb = latent_row_bytes(LatentStorage::kF16, width);
  std::vector<uint8_t> kc((size_t)p.T * rb), vc((size_t)p.T * rb);
  for (int t = 0; t < p.T; ++t) {
    const size_t src = (size_t)p.k.block_ids[t / kBlockTokens] * p.k.rows.block_stride_bytes +
                       (size_t)(t % kBlockTokens) * rb;
    std::memcpy(kc.data() + (size_t)t * rb, p.k.arena.data() + src, rb);
    const size_t vsrc = (size_t)p.v.block_ids[t / kBlockTokens] * p.v.rows.block_stride_bytes +
                        (size_t)(t % kBlockTokens) * rb;
    std::memcpy(vc.data() + (size_t)t * rb, p.v.arena.data() + vsrc, rb);
  }
  LatentRows k{}, v{};
  k.storage = v.storage = LatentStorage::kF16;
  k.rank = v.rank = width;
  k.rows = kc.data();
  v.rows = vc.data();
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if ((int)isa > (int)detect_cpu_isa()) {
      std::printf("skipping the %s kernel: this CPU has no %s\n", cpu_isa_name(isa), cpu_isa_name(isa));
      continue;
    }
    std::vector<float> a(8 * 128), b(8 * 128);
    ASSERT_TRUE(
        full_attention_decode_isa(isa, p.shape, p.k.rows, p.v.rows, p.T, p.q.data(), a.data())
            .is_ok());
    ASSERT_TRUE(full_attention_decode_isa(isa, p.shape, k, v, p.T, p.q.data(), b.data()).is_ok());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << cpu_isa_name(isa);
    if (isa == active_cpu_isa()) {
      std::vector<float> c(8 * 128);
      ASSERT_TRUE(full_attention_decode(p.shape, k, v, p.T, p.q.data(), c.data()).is_ok());
      EXPECT_EQ(0, std::memcmp(b.data(), c.data(), b.size() * sizeof(float)));
    }
  }
}

// A large score gap (one token dominates) stays finite and picks that token's value.
TEST(FullAttentionNumerics, PeakedSoftmaxIsStable) {
  const Case c{2, 1, 64, 500, LatentStorage::kF32, false};
  Problem p;
  make_problem(c, 5, p);
  // q aligned with token 321's key, scaled so its score exceeds the others by ~hundreds.
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 64; ++i) p.q[(size_t)h * 64 + i] = 40.f * (float)p.k.deq[321 * 64 + i];
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if ((int)isa > (int)detect_cpu_isa()) continue;
    std::vector<float> out(2 * 64);
    ASSERT_TRUE(
        full_attention_decode_isa(isa, p.shape, p.k.rows, p.v.rows, p.T, p.q.data(), out.data())
            .is_ok());
    EXPECT_LE(max_rel(out, reference(p)), 1e-5) << cpu_isa_name(isa);
    for (int i = 0; i < 64; ++i) EXPECT_NEAR(out[i], p.v.deq[321 * 64 + i], 1e-4);
  }
}

// Bad input: each row names its defect and the words the message must contain.
TEST(FullAttentionBadInput, ReturnsInvalidArgumentNamingTheField) {
  const Case c{8, 2, 64, 40, LatentStorage::kF16, true};
  Problem good;
  make_problem(c, 3, good);
  struct Bad {
    const char* defect;
    const char* expect_in_message;
    std::function<void(FullAttentionShape&, LatentRows&, LatentRows&, int&, const float*&, float*&)>
        mutate;
  };
  std::vector<float> out(1024);
  static const float scale_zero[64] = {};
  const std::vector<Bad> table = {
      {"H not a multiple of H_kv", "must be a multiple of num_kv_heads",
       [](auto& sh, auto&, auto&, int&, auto&, auto&) { sh.num_kv_heads = 3; }},
      {"zero heads", "must be > 0, found 0",
       [](auto& sh, auto&, auto&, int&, auto&, auto&) { sh.num_heads = 0; }},
      {"zero head_dim", "head_dim must be > 0",
       [](auto& sh, auto&, auto&, int&, auto&, auto&) { sh.head_dim = 0; }},
      {"T = 0", "T (cached tokens) must be ≥ 1, found 0",
       [](auto&, auto&, auto&, int& T, auto&, auto&) { T = 0; }},
      {"null q", "q must be [H, d_h], found null",
       [](auto&, auto&, auto&, int&, const float*& q, auto&) { q = nullptr; }},
      {"null out", "out must be [H, d_h], found null",
       [](auto&, auto&, auto&, int&, auto&, float*& o) { o = nullptr; }},
      {"null key rows", "k.rows is null",
       [](auto&, auto& k, auto&, int&, auto&, auto&) { k.rows = nullptr; }},
      {"key width", "k.rank must be num_kv_heads·head_dim = 128, found 64",
       [](auto&, auto& k, auto&, int&, auto&, auto&) { k.rank = 64; }},
      {"value width", "v.rank must be num_kv_heads·head_dim = 128, found 256",
       [](auto&, auto&, auto& v, int&, auto&, auto&) { v.rank = 256; }},
      {"packed key storage",
       "k.storage must be f32, f16 or bf16 (a full cache is not stored in codes), found q4",
       [](auto&, auto& k, auto&, int&, auto&, auto&) {
         k.storage = LatentStorage::kQ4;
         k.scale = k.zero = scale_zero;
       }},
      {"packed value storage",
       "v.storage must be f32, f16 or bf16 (a full cache is not stored in codes), found q8",
       [](auto&, auto&, auto& v, int&, auto&, auto&) { v.storage = LatentStorage::kQ8; }},
      {"storage out of range", "v.storage must be f32, f16 or bf16, found value 9",
       [](auto&, auto&, auto& v, int&, auto&, auto&) { v.storage = (LatentStorage)9; }},
      {"stride shorter than a row", "k.row_stride_bytes must be 0 or ≥ 256, found 100",
       [](auto&, auto& k, auto&, int&, auto&, auto&) { k.row_stride_bytes = 100; }},
      {"negative block_tokens", "v.block_tokens must be ≥ 0, found -2",
       [](auto&, auto&, auto& v, int&, auto&, auto&) { v.block_tokens = -2; }},
      {"paged without ids", "k.block_ids must be set for paged rows (block_tokens 16), found null",
       [](auto&, auto& k, auto&, int&, auto&, auto&) { k.block_ids = nullptr; }},
      {"paged without stride", "v.block_stride_bytes must be > 0 for paged rows, found 0",
       [](auto&, auto&, auto& v, int&, auto&, auto&) { v.block_stride_bytes = 0; }},
      {"window without rows",
       "k.window_rows must be set when window_begin (30) < T (40), found null",
       [](auto&, auto& k, auto&, int&, auto&, auto&) { k.window_begin = 30; }},
  };
  for (const Bad& b : table) {
    for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
      FullAttentionShape sh = good.shape;
      LatentRows k = good.k.rows, v = good.v.rows;
      int T = good.T;
      const float* q = good.q.data();
      float* o = out.data();
      std::fill(out.begin(), out.end(), 7.f);
      b.mutate(sh, k, v, T, q, o);
      const Status st = full_attention_decode_isa(isa, sh, k, v, T, q, o);
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << b.defect << ": " << st.to_string();
      EXPECT_NE(st.message().find(b.expect_in_message), std::string::npos)
          << b.defect << ": " << st.message();
      EXPECT_TRUE(std::all_of(out.begin(), out.end(), [](float x) { return x == 7.f; }))
          << b.defect << ": output written on error";
    }
  }
  // A window starting at or after T needs no rows.
  LatentRows k = good.k.rows;
  k.window_begin = good.T;
  EXPECT_TRUE(full_attention_decode_isa(CpuIsa::kScalar, good.shape, k, good.v.rows, good.T,
                                        good.q.data(), out.data())
                  .is_ok());
}

TEST(FullAttentionIsa, AnIsaTheCpuLacksIsAFailedPrecondition) {
  if (detect_cpu_isa() == CpuIsa::kAvx512) {
    GTEST_SKIP() << "this CPU has AVX-512; the refusal path cannot be exercised here";
  }
  const Case c{2, 1, 64, 4, LatentStorage::kF32, false};
  Problem p;
  make_problem(c, 1, p);
  std::vector<float> out(128);
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if ((int)isa <= (int)detect_cpu_isa()) continue;
    const Status st =
        full_attention_decode_isa(isa, p.shape, p.k.rows, p.v.rows, p.T, p.q.data(), out.data());
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << cpu_isa_name(isa);
    EXPECT_NE(st.message().find(cpu_isa_name(isa)), std::string::npos) << st.message();
  }
}

}  // namespace
}  // namespace palu::backends::cpu
