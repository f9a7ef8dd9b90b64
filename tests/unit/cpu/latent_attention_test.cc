// Fused latent decode attention (backends/cpu/latent_attention.h) against an unfused float64
// reference written plainly here: dequantize every latent, rebuild K for every token in
// double, RoPE, softmax, Σ p z^V. Every storage type, GQA and MHA, group sizes 1/2/4, ranks
// 32..512 differing between K and V and between groups, T ∈ {1, 63, 65, 130, 4099}; scalar,
// AVX2 and AVX-512 (each skipped with the reason on CPUs without it). Also bad input → INVALID_ARGUMENT.
#include "backends/cpu/latent_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "backends/base/dtype.h"

namespace palu::backends::cpu {
namespace {

struct Case {
  int H, H_kv, d_h, s, T;
  std::vector<int> k_ranks, v_ranks;  // per group
  LatentStorage k_storage, v_storage;
};

// Encoded rows of one group's K or V latents plus their dequantized image (what the
// reference uses).
struct Encoded {
  std::vector<uint8_t> bytes;
  std::vector<float> scale, zero;
  std::vector<float> deq;  // [T, rank]
  LatentRows rows;
};

// Packing written from the documented layout (cache/latent_packing.h), independently of the kernel.
void pack_code(uint8_t* row, int i, int bits, uint32_t code) {
  for (int b = 0; b < bits; ++b) {
    const size_t bit = (size_t)i * bits + b;
    if ((code >> b) & 1u) row[bit / 8] |= (uint8_t)(1u << (bit % 8));
  }
}

Encoded encode(LatentStorage st, int T, int rank, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  Encoded e;
  const size_t rb = latent_row_bytes(st, rank);
  e.bytes.assign(rb * T, 0);
  e.deq.resize((size_t)T * rank);
  e.scale.resize(T);
  e.zero.resize(T);
  const int bits = latent_storage_bits(st);
  std::vector<float> z(rank);
  for (int t = 0; t < T; ++t) {
    for (auto& x : z) x = nd(rng);
    uint8_t* row = e.bytes.data() + rb * t;
    float* d = e.deq.data() + (size_t)t * rank;
    if (st == LatentStorage::kF32) {
      std::memcpy(row, z.data(), rb);
      for (int i = 0; i < rank; ++i) d[i] = z[i];
    } else if (st == LatentStorage::kF16 || st == LatentStorage::kBF16) {
      for (int i = 0; i < rank; ++i) {
        const uint16_t h = st == LatentStorage::kF16 ? f32_to_f16(z[i]) : f32_to_bf16(z[i]);
        std::memcpy(row + 2 * i, &h, 2);
        d[i] = st == LatentStorage::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
    } else {
      float mn = z[0], mx = z[0];
      for (float x : z) mn = std::min(mn, x), mx = std::max(mx, x);
      const float qmax = (float)((1 << bits) - 1);
      const float scale = (mx - mn) / qmax;
      e.scale[t] = scale;
      e.zero[t] = mn;
      for (int i = 0; i < rank; ++i) {
        const float q =
            scale == 0.f
                ? 0.f
                : std::min(qmax, std::max(0.f, std::nearbyint((z[i] - mn) * (1.f / scale))));
        pack_code(row, i, bits, (uint32_t)q);
        d[i] = q * scale + mn;
      }
    }
  }
  e.rows.storage = st;
  e.rows.rows = e.bytes.data();
  e.rows.rank = rank;
  if (bits != 0) {
    e.rows.scale = e.scale.data();
    e.rows.zero = e.zero.data();
  }
  return e;
}

struct Problem {
  LatentAttentionShape shape;
  int T;
  std::vector<std::vector<float>> b_k;  // per group [s·d_h, r_k]
  std::vector<Encoded> k, v;
  std::vector<LatentGroupCache> groups;
  std::vector<float> q, inv_freq;
};

Problem make_problem(const Case& c, uint32_t seed) {
  std::mt19937 rng(seed);
  Problem p;
  p.shape = {c.H, c.H_kv, c.d_h, c.s};
  p.T = c.T;
  const int G = c.H_kv / c.s;
  p.b_k.resize(G);
  for (int g = 0; g < G; ++g) {
    // B entries N(0, 1/r) so rebuilt key elements are O(1).
    std::normal_distribution<float> nd(0.f, 1.f / std::sqrt((float)c.k_ranks[g]));
    p.b_k[g].resize((size_t)c.s * c.d_h * c.k_ranks[g]);
    for (auto& x : p.b_k[g]) x = nd(rng);
    p.k.push_back(encode(c.k_storage, c.T, c.k_ranks[g], rng));
    p.v.push_back(encode(c.v_storage, c.T, c.v_ranks[g], rng));
  }
  for (int g = 0; g < G; ++g) p.groups.push_back({p.k[g].rows, p.v[g].rows, p.b_k[g].data()});
  std::normal_distribution<float> qd(
      0.f, 1.5f);  // scores ~ N(0, 1.5²): a peaked but not one-hot softmax
  p.q.resize((size_t)c.H * c.d_h);
  for (auto& x : p.q) x = qd(rng);
  for (int i = 0; i < c.d_h / 2; ++i)
    p.inv_freq.push_back((float)std::pow(10000.0, -2.0 * i / c.d_h));
  return p;
}

// Unfused float64 reference.
std::vector<double> reference(const Problem& p) {
  const auto& sh = p.shape;
  const int dh = sh.head_dim, half = dh / 2, n_rep = sh.num_heads / sh.num_kv_heads;
  std::vector<double> out;
  for (int j = 0; j < sh.num_kv_heads; ++j) {
    const int g = j / sh.group_size, u = j % sh.group_size;
    const int rk = p.k[g].rows.rank, rv = p.v[g].rows.rank;
    // Keys of KV head j for every token, rebuilt and rotated in double.
    std::vector<double> K((size_t)p.T * dh);
    for (int t = 0; t < p.T; ++t) {
      std::vector<double> k(dh, 0.0);
      for (int i = 0; i < dh; ++i) {
        const float* brow = p.b_k[g].data() + (size_t)(u * dh + i) * rk;
        for (int r = 0; r < rk; ++r) k[i] += (double)brow[r] * p.k[g].deq[(size_t)t * rk + r];
      }
      for (int i = 0; i < half; ++i) {
        const double a = (double)((float)t * p.inv_freq[i]);
        K[(size_t)t * dh + i] = k[i] * std::cos(a) - k[i + half] * std::sin(a);
        K[(size_t)t * dh + i + half] = k[i + half] * std::cos(a) + k[i] * std::sin(a);
      }
    }
    for (int rep = 0; rep < n_rep; ++rep) {
      const int h = j * n_rep + rep;
      std::vector<double> s(p.T);
      double mx = -1e300;
      for (int t = 0; t < p.T; ++t) {
        double d = 0;
        for (int i = 0; i < dh; ++i) d += (double)p.q[(size_t)h * dh + i] * K[(size_t)t * dh + i];
        s[t] = d / std::sqrt((double)dh);
        mx = std::max(mx, s[t]);
      }
      double l = 0;
      for (auto& x : s) l += (x = std::exp(x - mx));
      std::vector<double> o(rv, 0.0);
      for (int t = 0; t < p.T; ++t)
        for (int r = 0; r < rv; ++r) o[r] += s[t] / l * p.v[g].deq[(size_t)t * rv + r];
      out.insert(out.end(), o.begin(), o.end());
    }
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
  for (S st : {S::kF32, S::kF16, S::kBF16, S::kQ8, S::kQ4, S::kQ3, S::kQ2}) {
    for (int T : {1, 63, 65})
      cases.push_back({8, 2, 64, 1, T, {64, 32}, {96, 48}, st, st});      // GQA, M-LRD
    cases.push_back({32, 8, 64, 4, 65, {256, 128}, {160, 512}, st, st});  // GQA, G-LRD
    cases.push_back({4, 4, 128, 2, 63, {512, 224}, {32, 320}, st, st});   // MHA
    cases.push_back({4, 4, 32, 4, 130, {48}, {33}, st, st});              // MHA J-LRD, odd ranks
    cases.push_back({8, 2, 64, 2, 4099, {384}, {256}, st, st});           // long context
  }
  cases.push_back({32, 8, 128, 4, 4099, {256, 192}, {512, 128}, S::kF16, S::kF16});
  cases.push_back({32, 8, 128, 4, 4099, {256, 192}, {512, 128}, S::kQ2, S::kQ4});
  cases.push_back({8, 8, 64, 2, 65, {32, 64, 96, 128}, {128, 96, 64, 32}, S::kF16, S::kQ3});
  return cases;
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << "H=" << c.H << " H_kv=" << c.H_kv << " d_h=" << c.d_h << " s=" << c.s << " T=" << c.T
      << " k:" << row_storage_name(c.k_storage) << " v:" << row_storage_name(c.v_storage);
}

class LatentAttentionTest : public ::testing::TestWithParam<std::tuple<Case, CpuIsa>> {};

TEST_P(LatentAttentionTest, MatchesUnfusedFloat64Reference) {
  const auto& [c, isa] = GetParam();
  if ((int)isa > (int)detect_cpu_isa()) {
    GTEST_SKIP() << "this CPU has no " << cpu_isa_name(isa) << " (it has "
                  << cpu_isa_name(detect_cpu_isa()) << "); that kernel is not tested here";
  }
  const Problem p = make_problem(c, 1234u + (uint32_t)c.T + 7u * (uint32_t)c.k_ranks[0]);
  std::vector<float> out(latent_output_width(p.shape, p.groups.data()), -1.f);
  const Status st = latent_attention_decode_isa(isa, p.shape, p.groups.data(), p.T, p.T, p.q.data(),
                                                p.inv_freq.data(), out.data());
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  const std::vector<double> ref = reference(p);
  ASSERT_EQ(out.size(), ref.size());
  const bool quantized =
      latent_storage_bits(c.k_storage) != 0 || latent_storage_bits(c.v_storage) != 0;
  const double tol = quantized ? 2e-3 : 1e-5;
  EXPECT_LE(max_rel(out, ref), tol);
}

std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, CpuIsa>>& info) {
  const auto& [c, isa] = info.param;
  std::string n = std::string(cpu_isa_name(isa)) + "_H" + std::to_string(c.H) + "_Hkv" +
                  std::to_string(c.H_kv) + "_dh" + std::to_string(c.d_h) + "_s" +
                  std::to_string(c.s) + "_T" + std::to_string(c.T) + "_rk";
  for (int r : c.k_ranks) n += std::to_string(r) + "x";
  n += "_rv";
  for (int r : c.v_ranks) n += std::to_string(r) + "x";
  return n + "_" + row_storage_name(c.k_storage) + "_" + row_storage_name(c.v_storage) + "_" + std::to_string(info.index);
}

INSTANTIATE_TEST_SUITE_P(LatentAttention, LatentAttentionTest,
                         ::testing::Combine(::testing::ValuesIn(all_cases()),
                                            ::testing::Values(CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512)),
                         case_name);

// The dispatching entry point agrees with the explicit scalar kernel.
TEST(LatentAttentionDispatch, ActiveIsaMatchesScalar) {
  const Case c{8, 2, 64, 2, 200, {128}, {64}, LatentStorage::kQ4, LatentStorage::kF16};
  const Problem p = make_problem(c, 99);
  const int w = latent_output_width(p.shape, p.groups.data());
  std::vector<float> a(w), b(w);
  ASSERT_TRUE(latent_attention_decode(p.shape, p.groups.data(), p.T, p.T - 1, p.q.data(),
                                      p.inv_freq.data(), a.data())
                  .is_ok());
  ASSERT_TRUE(latent_attention_decode_isa(CpuIsa::kScalar, p.shape, p.groups.data(), p.T, p.T - 1,
                                          p.q.data(), p.inv_freq.data(), b.data())
                  .is_ok());
  std::vector<double> bd(b.begin(), b.end());
  EXPECT_LE(max_rel(a, bd), 1e-5) << "active ISA: " << cpu_isa_name(active_cpu_isa());
}

// A precomputed RoPE table (longer than T) gives bit-identical results to computing it per call.
TEST(LatentAttentionRopeTable, PrecomputedTableIsBitIdentical) {
  const Case c{8, 4, 64, 2, 300, {96, 64}, {64, 128}, LatentStorage::kQ3, LatentStorage::kF16};
  const Problem p = make_problem(c, 17);
  const int positions = 512, half = c.d_h / 2;
  std::vector<float> cs((size_t)positions * half), sn((size_t)positions * half);
  build_latent_rope_table(p.inv_freq.data(), c.d_h, positions, cs.data(), sn.data());
  const LatentRopeTable table{cs.data(), sn.data(), positions};
  const int w = latent_output_width(p.shape, p.groups.data());
  for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if ((int)isa > (int)detect_cpu_isa()) {
      std::printf("skipping the %s kernel: this CPU has no %s\n", cpu_isa_name(isa), cpu_isa_name(isa));
      continue;
    }
    std::vector<float> a(w), b(w);
    ASSERT_TRUE(latent_attention_decode_isa(isa, p.shape, p.groups.data(), p.T, p.T, p.q.data(),
                                            p.inv_freq.data(), a.data())
                    .is_ok());
    ASSERT_TRUE(latent_attention_decode_isa(isa, p.shape, p.groups.data(), p.T, p.T, p.q.data(),
                                            p.inv_freq.data(), b.data(), &table)
                    .is_ok());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << cpu_isa_name(isa);
    const LatentRopeTable short_table{cs.data(), sn.data(), c.T - 1};
    const Status st =
        latent_attention_decode_isa(isa, p.shape, p.groups.data(), p.T, p.T, p.q.data(),
                                    p.inv_freq.data(), b.data(), &short_table);
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("rope table must cover"), std::string::npos) << st.message();
  }
}

TEST(LatentAttentionOutputProjection, MatchesFloat64) {
  const int d = 70, width = 300;
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  std::vector<float> w((size_t)d * width), o(width), out(d, 0.f);
  for (auto& x : w) x = nd(rng);
  for (auto& x : o) x = nd(rng);
  ASSERT_TRUE(latent_output_projection(w.data(), d, width, o.data(), out.data()).is_ok());
  std::vector<double> ref(d, 0.0);
  for (int i = 0; i < d; ++i)
    for (int k = 0; k < width; ++k) ref[i] += (double)w[(size_t)i * width + k] * o[k];
  EXPECT_LE(max_rel(out, ref), 1e-5);
  EXPECT_EQ(latent_output_projection(nullptr, d, width, o.data(), out.data()).code(),
            StatusCode::kInvalidArgument);
}

// Bad input: each row names its defect and the words the message must contain.
TEST(LatentAttentionBadInput, ReturnsInvalidArgumentNamingTheField) {
  const Case c{8, 2, 64, 1, 10, {64, 32}, {32, 32}, LatentStorage::kQ4, LatentStorage::kF16};
  const Problem good = make_problem(c, 3);
  struct Bad {
    const char* defect;
    const char* expect_in_message;
    std::function<void(LatentAttentionShape&, std::vector<LatentGroupCache>&, int&, int&,
                       const float*&, const float*&, float*&)>
        mutate;
  };
  std::vector<float> out(1024);
  const std::vector<Bad> table = {
      {"H not a multiple of H_kv", "multiple of num_kv_heads",
       [](auto& sh, auto&, int&, int&, auto&, auto&, auto&) {
         sh.num_heads = 6;
         sh.num_kv_heads = 4;
       }},
      {"group size does not divide H_kv", "must divide num_kv_heads",
       [](auto& sh, auto&, int&, int&, auto&, auto&, auto&) {
         sh.group_size = 3;
         sh.num_kv_heads = 2;
         sh.num_heads = 8;
       }},
      {"zero heads", "must be > 0",
       [](auto& sh, auto&, int&, int&, auto&, auto&, auto&) { sh.num_heads = 0; }},
      {"odd head_dim", "head_dim must be even",
       [](auto& sh, auto&, int&, int&, auto&, auto&, auto&) { sh.head_dim = 63; }},
      {"T = 0", "T (cached tokens) must be ≥ 1",
       [](auto&, auto&, int& T, int&, auto&, auto&, auto&) { T = 0; }},
      {"query before the cache end", "pos_q",
       [](auto&, auto&, int&, int& pos, auto&, auto&, auto&) { pos = 3; }},
      {"null q", "q is null",
       [](auto&, auto&, int&, int&, const float*& q, auto&, auto&) { q = nullptr; }},
      {"null inv_freq", "inv_freq is null",
       [](auto&, auto&, int&, int&, auto&, const float*& f, auto&) { f = nullptr; }},
      {"null out", "out_latents is null",
       [](auto&, auto&, int&, int&, auto&, auto&, float*& o) { o = nullptr; }},
      {"null b_k", "group 1 b_k is null",
       [](auto&, auto& g, int&, int&, auto&, auto&, auto&) { g[1].b_k = nullptr; }},
      {"null key rows", "group 0 k.rows is null",
       [](auto&, auto& g, int&, int&, auto&, auto&, auto&) { g[0].k.rows = nullptr; }},
      {"packed rows without scale", "scale and zero",
       [](auto&, auto& g, int&, int&, auto&, auto&, auto&) { g[1].k.scale = nullptr; }},
      {"zero rank", "v.rank must be > 0",
       [](auto&, auto& g, int&, int&, auto&, auto&, auto&) { g[0].v.rank = 0; }},
      {"stride shorter than a row", "row_stride_bytes",
       [](auto&, auto& g, int&, int&, auto&, auto&, auto&) { g[0].v.row_stride_bytes = 3; }},
  };
  for (const Bad& b : table) {
    for (CpuIsa isa : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
      LatentAttentionShape sh = good.shape;
      std::vector<LatentGroupCache> groups = good.groups;
      int T = good.T, pos = good.T;
      const float* q = good.q.data();
      const float* f = good.inv_freq.data();
      float* o = out.data();
      b.mutate(sh, groups, T, pos, q, f, o);
      const Status st = latent_attention_decode_isa(isa, sh, groups.data(), T, pos, q, f, o);
      EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << b.defect << ": " << st.to_string();
      EXPECT_NE(st.message().find(b.expect_in_message), std::string::npos)
          << b.defect << ": " << st.message();
    }
  }
  EXPECT_EQ(latent_attention_decode_isa(CpuIsa::kScalar, good.shape, nullptr, good.T, good.T,
                                        good.q.data(), good.inv_freq.data(), out.data())
                .code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::backends::cpu
