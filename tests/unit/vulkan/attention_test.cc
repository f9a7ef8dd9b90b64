// Attention kernels on the Vulkan device against the CPU scalar reference: full-cache decode
// (flash-decoding splits + reduction) and causal prefill (both kernels), latent decode — the
// tile kernel (keys rebuilt per tile) and the fused kernel (query folded into B^K, f16 and f32
// arithmetic, FusedLatentDecode; its cooperative-matrix variant, FusedLatentDecodeCoopmat,
// skipped where the device has no VK_NV_cooperative_matrix) — over T ∈ {1, 63, 65, 4099}, MHA
// and GQA, ranks 32..512 and every latent storage (f32, f16, bf16, q8, q4, q3, q2; packed with
// and without the f16 window), with and without a key bias, and latent prefill (keys rebuilt
// from latents, then causal attention over the value latents).
// Tolerance: 1e-4 · max |out| + 1e-5 (f32 math in another order; the latents are decoded
// bit-exactly the same on both sides because store_rows encodes like the cache); the fused
// kernel's f16 variant and the coopmat kernel 4e-3 · max |out| (see FusedLatentDecode).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "backends/cpu/full_attention.h"
#include "backends/cpu/latent_attention.h"
#include "cache/latent_packing.h"
#include "tests/unit/vulkan/vulkan_test_util.h"

namespace palu::backends::vulkan {
namespace {

using namespace palu::backends::vulkan::testing;

// cos [P, dh/2] then sin [P, dh/2], the model's rounding.
std::vector<float> rope_table(int dh, int P, double theta, std::vector<float>* inv_freq) {
  const int half = dh / 2;
  std::vector<float> t((size_t)2 * P * half);
  inv_freq->resize(half);
  for (int i = 0; i < half; ++i)
    (*inv_freq)[i] =
        1.0f / (float)std::pow((double)(float)theta, (double)((float)(2 * i) / (float)dh));
  for (int p = 0; p < P; ++p) {
    for (int i = 0; i < half; ++i) {
      const float angle = (float)p * (*inv_freq)[i];
      t[(size_t)p * half + i] = (float)std::cos((double)angle);
      t[(size_t)P * half + (size_t)p * half + i] = (float)std::sin((double)angle);
    }
  }
  return t;
}

// Rows encoded on the host like the cache (for the CPU reference) and on the device by
// store_rows (tested bit-exact in ops_test.cc).
struct HostRows {
  std::vector<uint8_t> bytes;
  std::vector<float> scale, zero;
  cpu::LatentRows rows(RowStorage st, int rank) const {
    cpu::LatentRows r;
    r.storage = st;
    r.rows = bytes.data();
    r.rank = rank;
    r.row_stride_bytes = row_storage_bytes(st, rank);
    if (row_storage_bits(st) > 0) {
      r.scale = scale.data();
      r.zero = zero.data();
    }
    return r;
  }
  // Decoded values [T, rank].
  std::vector<float> decoded(RowStorage st, int rank, int T) const {
    std::vector<float> out((size_t)T * rank);
    const size_t rb = row_storage_bytes(st, rank);
    for (int t = 0; t < T; ++t) {
      cache::QuantParams p;
      if (row_storage_bits(st) > 0) p = {scale[t], zero[t]};
      cache::decode_row(st, bytes.data() + t * rb, rank, p, out.data() + (size_t)t * rank);
    }
    return out;
  }
};

HostRows encode_host(RowStorage st, const std::vector<float>& z, int rank, int T) {
  HostRows h;
  const size_t rb = row_storage_bytes(st, rank);
  h.bytes.assign(rb * T + 8, 0);
  h.scale.resize(T);
  h.zero.resize(T);
  for (int t = 0; t < T; ++t) {
    cache::QuantParams p;
    cache::encode_row(st, z.data() + (size_t)t * rank, rank, h.bytes.data() + t * rb, &p);
    h.scale[t] = p.scale;
    h.zero[t] = p.zero;
  }
  return h;
}

// A device region of T rows of `rank` values encoded by store_rows (packed storage: with an f16
// window of `window` slots holding positions ≥ window_begin when window > 0).
VulkanBuffer device_region(VulkanContext* ctx, RowStorage st, const std::vector<float>& z, int rank,
                           int T, Region* reg, int window = 0, int window_begin = 0) {
  VulkanBuffer src = to_device(ctx, z);
  VulkanBuffer r = device_buffer(ctx, region_words(st, rank, T, window) * 4);
  *reg = Region{r.address(), st, rank, T, window, window_begin};
  Recorder rec(ctx);
  store_rows(rec, src.address(), rank, 0, *reg, T, 0);
  EXPECT_TRUE(rec.submit("store_rows").is_ok());
  return r;
}

// B^K [N, r] row-major → B^Kᵀ [r, N] (the device kernels' layout).
std::vector<float> transpose(const std::vector<float>& b, int N, int r) {
  std::vector<float> t(b.size());
  for (int e = 0; e < N; ++e)
    for (int p = 0; p < r; ++p) t[(size_t)p * N + e] = b[(size_t)e * r + p];
  return t;
}

struct FullCase {
  int H, Hkv, T;
  RowStorage st;
};

TEST(VulkanAttention, FullCacheDecodeMatchesCpu) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  const int dh = 64;
  const FullCase cases[] = {{8, 8, 1, RowStorage::kF16},
                            {8, 8, 63, RowStorage::kF32},
                            {8, 2, 65, RowStorage::kF16},
                            {8, 2, 300, RowStorage::kBF16},
                            {4, 1, 129, RowStorage::kF16}};
  for (const FullCase& fc : cases) {
    const int kvw = fc.Hkv * dh;
    auto k = random_floats((size_t)fc.T * kvw, 20 + fc.T, -2, 2),
         v = random_floats((size_t)fc.T * kvw, 21 + fc.T);
    auto q = random_floats((size_t)fc.H * dh, 22);
    HostRows hk = encode_host(fc.st, k, kvw, fc.T), hv = encode_host(fc.st, v, kvw, fc.T);
    std::vector<float> want((size_t)fc.H * dh);
    ASSERT_TRUE(cpu::full_attention_decode_isa(cpu::CpuIsa::kScalar, {fc.H, fc.Hkv, dh},
                                               hk.rows(fc.st, kvw), hv.rows(fc.st, kvw), fc.T,
                                               q.data(), want.data())
                    .is_ok());
    for (int variant = 0; variant < 4;
         ++variant) {  // split kernel with 1/3/16 splits, subgroup kernel
      const int splits = variant == 0 ? 1 : variant == 1 ? 3 : 16;
      const int use_sg = variant == 3 ? 1 : 0;
      if (use_sg == 1 && !ctx->subgroup_arithmetic()) continue;
      Region kr, vr;
      VulkanBuffer kb = device_region(ctx, fc.st, k, kvw, fc.T, &kr),
                   vb = device_region(ctx, fc.st, v, kvw, fc.T, &vr);
      VulkanBuffer qb = to_device(ctx, q), out = device_buffer(ctx, want.size() * 4);
      VulkanBuffer part = device_buffer(ctx, decode_partial_words(fc.H, splits, dh) * 4);
      DecodeArgs a;
      a.q = qb.address();
      a.part = part.address();
      a.out = out.address();
      a.T = fc.T;
      a.H = fc.H;
      a.H_kv = fc.Hkv;
      a.dh = dh;
      a.splits = splits;
      a.w_max = dh;
      Recorder rec(ctx);
      ASSERT_TRUE(attention_decode_full(rec, a, kr, vr, use_sg).is_ok());
      ASSERT_TRUE(rec.submit("decode").is_ok());
      expect_near_all(from_device<float>(ctx, out, want.size()), want, 1e-4f, 1e-5f,
                      "full decode H " + std::to_string(fc.H) + "/" + std::to_string(fc.Hkv) +
                          " T " + std::to_string(fc.T) + " splits " + std::to_string(splits) +
                          " sg " + std::to_string(use_sg));
    }
  }
}

// Causal attention in double from decoded K/V (K already rotated).
std::vector<float> reference_prefill(const std::vector<float>& q, int qw, int n, int p0, int H,
                                     int Hkv, int dh, const std::vector<float>& K, int kld,
                                     const std::vector<float>& Vv, int vld, int vcol_per_kv,
                                     int w) {
  const int n_rep = H / Hkv;
  std::vector<float> out((size_t)n * H * w);
  for (int r = 0; r < n; ++r) {
    for (int h = 0; h < H; ++h) {
      const int j = h / n_rep, vis = p0 + r + 1;
      std::vector<double> s(vis);
      double mx = -1e300;
      for (int t = 0; t < vis; ++t) {
        double a = 0;
        for (int i = 0; i < dh; ++i)
          a += (double)q[(size_t)r * qw + h * dh + i] * K[(size_t)t * kld + j * dh + i];
        s[t] = a / std::sqrt((double)dh);
        mx = std::max(mx, s[t]);
      }
      double sum = 0;
      for (auto& x : s) sum += (x = std::exp(x - mx));
      for (int c = 0; c < w; ++c) {
        double acc = 0;
        for (int t = 0; t < vis; ++t) acc += s[t] * Vv[(size_t)t * vld + j * vcol_per_kv + c];
        out[(size_t)r * H * w + h * w + c] = (float)(acc / sum);
      }
    }
  }
  return out;
}

TEST(VulkanAttention, FullCachePrefillBothKernels) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  const int dh = 64;
  struct C {
    int H, Hkv, n, p0;
  };
  for (const C& c : {C{8, 8, 1, 0}, C{8, 2, 5, 20}, C{8, 2, 37, 0}, C{4, 4, 40, 30}}) {
    const int T = c.p0 + c.n, kvw = c.Hkv * dh, qw = c.H * dh;
    auto k = random_floats((size_t)T * kvw, 30 + T, -2, 2),
         v = random_floats((size_t)T * kvw, 31 + T);
    auto q = random_floats((size_t)c.n * qw, 32);
    const RowStorage st = RowStorage::kF16;
    HostRows hk = encode_host(st, k, kvw, T), hv = encode_host(st, v, kvw, T);
    const auto want = reference_prefill(q, qw, c.n, c.p0, c.H, c.Hkv, dh, hk.decoded(st, kvw, T),
                                        kvw, hv.decoded(st, kvw, T), kvw, dh, dh);
    for (int sg : {0, 1}) {
      if (sg == 1 && !ctx->subgroup_arithmetic()) continue;
      Region kr, vr;
      VulkanBuffer kb = device_region(ctx, st, k, kvw, T, &kr),
                   vb = device_region(ctx, st, v, kvw, T, &vr);
      VulkanBuffer qb = to_device(ctx, q), out = device_buffer(ctx, want.size() * 4);
      PrefillArgs a;
      a.q = qb.address();
      a.qw = qw;
      a.n = c.n;
      a.p0 = c.p0;
      a.H = c.H;
      a.H_kv = c.Hkv;
      a.dh = dh;
      a.out = out.address();
      a.ow = qw;
      Recorder rec(ctx);
      ASSERT_TRUE(attention_prefill(rec, a, kr, vr, dh, dh, 0, c.H, 0, sg).is_ok());
      ASSERT_TRUE(rec.submit("prefill").is_ok());
      expect_near_all(from_device<float>(ctx, out, want.size()), want, 1e-4f, 1e-5f,
                      "prefill n " + std::to_string(c.n) + " p0 " + std::to_string(c.p0) + " sg " +
                          std::to_string(sg));
    }
  }
}

struct LatentCase {
  int H, Hkv, s, rk, rv, T;
  RowStorage st;
  bool bias;
  WeightType wt;
};

class LatentDecode : public ::testing::TestWithParam<LatentCase> {};

TEST_P(LatentDecode, MatchesCpuScalar) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  const LatentCase c = GetParam();
  const int dh = 64, G = c.Hkv / c.s, N = c.s * dh, n_rep = c.H / c.Hkv;
  std::vector<float> inv_freq;
  const auto table = rope_table(dh, c.T, 10000.0, &inv_freq);
  const int half = dh / 2;
  auto q = random_floats((size_t)c.H * dh, 40);
  std::vector<std::vector<float>> zk(G), zv(G), bk(G), kbias(G);
  std::vector<HostRows> hk(G), hv(G);
  std::vector<cpu::LatentGroupCache> groups(G);
  for (int g = 0; g < G; ++g) {
    zk[g] = random_floats((size_t)c.T * c.rk, 41 + g, -3, 3);
    zv[g] = random_floats((size_t)c.T * c.rv, 51 + g, -2, 2);
    bk[g] = random_floats((size_t)N * c.rk, 61 + g, -0.2f, 0.2f);
    if (c.wt == WeightType::kF16) bk[g] = round_f16(bk[g]);
    kbias[g] = random_floats(N, 71 + g);
    hk[g] = encode_host(c.st, zk[g], c.rk, c.T);
    hv[g] = encode_host(c.st, zv[g], c.rv, c.T);
    groups[g].k = hk[g].rows(c.st, c.rk);
    groups[g].v = hv[g].rows(c.st, c.rv);
    groups[g].b_k = bk[g].data();
    if (c.bias) groups[g].k_bias = kbias[g].data();
  }
  cpu::LatentAttentionShape shape{c.H, c.Hkv, dh, c.s};
  const int width = cpu::latent_output_width(shape, groups.data());
  std::vector<float> want(width);
  cpu::LatentRopeTable rope{table.data(), table.data() + (size_t)c.T * half, c.T};
  ASSERT_TRUE(cpu::latent_attention_decode_isa(cpu::CpuIsa::kScalar, shape, groups.data(), c.T,
                                               c.T - 1, q.data(), inv_freq.data(), want.data(),
                                               &rope)
                  .is_ok());

  VulkanBuffer qb = to_device(ctx, q), tb = to_device(ctx, table),
               out = device_buffer(ctx, width * 4);
  const int splits = std::min(64, std::max(1, c.T / 64));
  VulkanBuffer part = device_buffer(ctx, decode_partial_words(c.H, splits, std::max(dh, c.rv)) * 4);
  std::vector<VulkanBuffer> keep;
  std::vector<LatentGroupArgs> ga(G);
  for (int g = 0; g < G; ++g) {
    keep.push_back(device_region(ctx, c.st, zk[g], c.rk, c.T, &ga[g].zk));
    keep.push_back(device_region(ctx, c.st, zv[g], c.rv, c.T, &ga[g].zv));
    keep.push_back(c.wt == WeightType::kF16 ? to_device(ctx, to_f16(transpose(bk[g], N, c.rk)))
                                            : to_device(ctx, transpose(bk[g], N, c.rk)));
    ga[g].bk = keep.back().address();
    keep.push_back(to_device(ctx, kbias[g]));
    ga[g].k_bias = c.bias ? keep.back().address() : 0;
    ga[g].wt = c.wt;
    ga[g].group = g;
    ga[g].s = c.s;
    ga[g].out_col = g * c.s * n_rep * c.rv;
  }
  DecodeArgs a;
  a.q = qb.address();
  a.rope = tb.address();
  a.sin_off = (uint32_t)((size_t)c.T * half);
  a.part = part.address();
  a.out = out.address();
  a.T = c.T;
  a.H = c.H;
  a.H_kv = c.Hkv;
  a.dh = dh;
  a.splits = splits;
  a.w_max = std::max(dh, c.rv);
  {
    Recorder rec(ctx);
    for (int g = 0; g < G; ++g) ASSERT_TRUE(attention_decode_latent(rec, a, ga[g], c.rk).is_ok());
    ASSERT_TRUE(rec.submit("latent decode").is_ok());
  }
  expect_near_all(from_device<float>(ctx, out, width), want, 1e-4f, 1e-5f, "latent decode");
}

std::vector<LatentCase> latent_cases() {
  using S = RowStorage;
  const auto F16 = WeightType::kF16, F32 = WeightType::kF32;
  return {
      {8, 2, 2, 32, 32, 1, S::kF16, false, F32},    {8, 2, 2, 64, 96, 63, S::kQ4, true, F32},
      {8, 8, 4, 256, 128, 65, S::kQ3, false, F16},  {4, 4, 2, 128, 256, 65, S::kQ2, false, F32},
      {8, 8, 2, 96, 64, 65, S::kQ8, true, F16},     {8, 2, 1, 160, 32, 65, S::kF32, false, F32},
      {8, 2, 2, 32, 224, 65, S::kBF16, false, F32}, {8, 2, 2, 256, 256, 4099, S::kQ4, false, F16},
      {8, 4, 2, 32, 64, 4099, S::kF16, true, F32},
  };
}

INSTANTIATE_TEST_SUITE_P(Cases, LatentDecode, ::testing::ValuesIn(latent_cases()),
                         [](const auto& info) {
                           const LatentCase& c = info.param;
                           return "H" + std::to_string(c.H) + "_Hkv" + std::to_string(c.Hkv) +
                                  "_s" + std::to_string(c.s) + "_rk" + std::to_string(c.rk) +
                                  "_rv" + std::to_string(c.rv) + "_T" + std::to_string(c.T) + "_" +
                                  row_storage_name(c.st) + (c.bias ? "_bias" : "") +
                                  (c.wt == WeightType::kF16 ? "_f16B" : "");
                         });

// What the latent kernels read with an f16 window: rows ≥ window_begin are the f16-rounded
// latents, earlier rows the decoded stored ones.
std::vector<float> windowed(std::vector<float> decoded, const std::vector<float>& z, int rank,
                            int window, int window_begin) {
  if (window <= 0) return decoded;
  for (size_t i = (size_t)window_begin * rank; i < decoded.size(); ++i)
    decoded[i] = f16_to_f32(f32_to_f16(z[i]));
  return decoded;
}

// The fused latent decode (latent_fold.comp + latent_decode.comp + attn_reduce.comp) against
// the CPU scalar reference, both variants: f16 arithmetic (where the device has shaderFloat16)
// and f32. The reference reads f32 rows holding exactly what the kernel decodes (the cache's
// decoding of the stored rows; the f16-rounded latents for positions in the f16 window).
// Tolerance: f32 variant 1e-4·max|out| (f32 math in another order); f16 variant 4e-3·max|out|
// (M and the key latents rounded to f16, products summed in f16 over 16 terms per lane before
// each f32 sum: worst 2.7e-3 on lavapipe and 1.7e-3 on the H100, at rank 512). Each case prints
// its measured error.
struct FusedCase {
  int H, Hkv, s, rk, rv, T;
  RowStorage st;
  bool bias;
  WeightType wt;
  int dh = 64;
  int window = 0, window_begin = 0;
};

// Runs case c through each of `kernels` against the CPU reference. A kernel the device does not
// offer must say UNIMPLEMENTED; then the test skips, printing why.
// all_groups: the groups through one attention_decode_latent_groups call (latent_decode_cmg.comp
// takes them in one dispatch where it can) instead of one call per group.
void run_fused_case(VulkanContext* ctx, const FusedCase& c, std::vector<LatentKernel> kernels,
                    bool all_groups = false) {
  const int dh = c.dh, G = c.Hkv / c.s, N = c.s * dh, n_rep = c.H / c.Hkv, half = dh / 2;
  std::vector<float> inv_freq;
  const auto table = rope_table(dh, c.T, 10000.0, &inv_freq);
  auto q = random_floats((size_t)c.H * dh, 140);
  std::vector<std::vector<float>> zk(G), zv(G), bk(G), kbias(G), zkd(G), zvd(G);
  std::vector<cpu::LatentGroupCache> groups(G);
  for (int g = 0; g < G; ++g) {
    zk[g] = random_floats((size_t)c.T * c.rk, 141 + g, -3, 3);
    zv[g] = random_floats((size_t)c.T * c.rv, 151 + g, -2, 2);
    bk[g] = random_floats((size_t)N * c.rk, 161 + g, -0.2f, 0.2f);
    if (c.wt == WeightType::kF16) bk[g] = round_f16(bk[g]);
    kbias[g] = random_floats(N, 171 + g);
    zkd[g] = windowed(encode_host(c.st, zk[g], c.rk, c.T).decoded(c.st, c.rk, c.T), zk[g], c.rk,
                      c.window, c.window_begin);
    zvd[g] = windowed(encode_host(c.st, zv[g], c.rv, c.T).decoded(c.st, c.rv, c.T), zv[g], c.rv,
                      c.window, c.window_begin);
    cpu::LatentRows kr, vr;
    kr.storage = vr.storage = RowStorage::kF32;
    kr.rows = reinterpret_cast<const uint8_t*>(zkd[g].data());
    vr.rows = reinterpret_cast<const uint8_t*>(zvd[g].data());
    kr.rank = c.rk;
    vr.rank = c.rv;
    kr.row_stride_bytes = (size_t)c.rk * 4;
    vr.row_stride_bytes = (size_t)c.rv * 4;
    groups[g].k = kr;
    groups[g].v = vr;
    groups[g].b_k = bk[g].data();
    if (c.bias) groups[g].k_bias = kbias[g].data();
  }
  cpu::LatentAttentionShape shape{c.H, c.Hkv, dh, c.s};
  const int width = cpu::latent_output_width(shape, groups.data());
  std::vector<float> want(width);
  cpu::LatentRopeTable rope{table.data(), table.data() + (size_t)c.T * half, c.T};
  ASSERT_TRUE(cpu::latent_attention_decode_isa(cpu::CpuIsa::kScalar, shape, groups.data(), c.T,
                                               c.T - 1, q.data(), inv_freq.data(), want.data(),
                                               &rope)
                  .is_ok());

  const int w_max = std::max(dh, c.rv);
  const int splits = std::min(64, std::max(1, c.T / 64));
  VulkanBuffer qb = to_device(ctx, q), tb = to_device(ctx, table),
               part = device_buffer(ctx, decode_partial_words(c.H, splits, w_max) * 4),
               fold = device_buffer(ctx, latent_fold_words(c.H, dh, c.rk) * 4);
  std::vector<VulkanBuffer> keep;
  std::vector<LatentGroupArgs> ga(G);
  for (int g = 0; g < G; ++g) {
    keep.push_back(device_region(ctx, c.st, zk[g], c.rk, c.T, &ga[g].zk, c.window, c.window_begin));
    keep.push_back(device_region(ctx, c.st, zv[g], c.rv, c.T, &ga[g].zv, c.window, c.window_begin));
    keep.push_back(c.wt == WeightType::kF16 ? to_device(ctx, to_f16(transpose(bk[g], N, c.rk)))
                                            : to_device(ctx, transpose(bk[g], N, c.rk)));
    ga[g].bk = keep.back().address();
    keep.push_back(to_device(ctx, kbias[g]));
    ga[g].k_bias = c.bias ? keep.back().address() : 0;
    ga[g].wt = c.wt;
    ga[g].group = g;
    ga[g].s = c.s;
    ga[g].out_col = g * c.s * n_rep * c.rv;
  }
  DecodeArgs a;
  a.q = qb.address();
  a.rope = tb.address();
  a.sin_off = (uint32_t)((size_t)c.T * half);
  a.part = part.address();
  a.fold = fold.address();
  a.T = c.T;
  a.H = c.H;
  a.H_kv = c.Hkv;
  a.dh = dh;
  a.splits = splits;
  a.w_max = w_max;
  for (LatentKernel k : kernels) {
    const bool coop = k == LatentKernel::kFusedCoopmat;
    const bool f16 = k == LatentKernel::kFused && ctx->shader_float16();
    VulkanBuffer out = device_buffer(ctx, width * 4);
    a.out = out.address();
    Recorder rec(ctx);
    for (int g = 0; g < (all_groups ? 1 : G); ++g) {
      Status st = all_groups ? attention_decode_latent_groups(rec, a, ga.data(), G, c.rk, k)
                             : attention_decode_latent(rec, a, ga[g], c.rk, k);
      if (!coop && !ctx->subgroup_arithmetic()) {
        EXPECT_EQ(st.code(), StatusCode::kUnimplemented);
        GTEST_SKIP() << "no subgroup arithmetic: the fused kernel is not offered";
      }
      if ((coop || k == LatentKernel::kFusedCoopmatHead) && !ctx->cooperative_matrix()) {
        ASSERT_EQ(st.code(), StatusCode::kUnimplemented) << st.to_string();
        EXPECT_NE(st.message().find(ctx->cooperative_matrix_note()), std::string::npos)
            << st.to_string();
        GTEST_SKIP() << "the coopmat kernel is not offered: " << ctx->cooperative_matrix_note();
      }
      ASSERT_TRUE(st.is_ok()) << st.to_string();
    }
    ASSERT_TRUE(rec.submit("fused latent decode").is_ok());
    const auto got = from_device<float>(ctx, out, width);
    float max_abs = 0, max_diff = 0;
    for (int i = 0; i < width; ++i) {
      max_abs = std::max(max_abs, std::fabs(want[i]));
      max_diff = std::max(max_diff, std::fabs(got[i] - want[i]));
    }
    const std::string what = k == LatentKernel::kFusedCoopmatHead ? "coopmat per head"
                             : coop ? (all_groups ? "coopmat, all groups" : "coopmat")
                             : f16  ? "f16"
                                    : "f32";
    std::printf("    fused %s: max|Δ| / max|out| = %.2e\n", what.c_str(),
                max_diff / std::max(max_abs, 1e-30f));
    expect_near_all(got, want, f16 || coop || k == LatentKernel::kFusedCoopmatHead ? 4e-3f : 1e-4f,
                    1e-5f, "fused latent decode " + what);
  }
}

class FusedLatentDecode : public ::testing::TestWithParam<FusedCase> {};

TEST_P(FusedLatentDecode, MatchesCpuScalar) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  run_fused_case(ctx, GetParam(), {LatentKernel::kFused, LatentKernel::kFusedF32});
}

// The tensor-core variant (latent_decode_cm.comp, VK_NV_cooperative_matrix) on the same cases;
// skips, naming why, where the device does not offer it (lavapipe). Tolerance as the f16
// variant: M and the key latents are rounded to f16 (the products are summed in f32).
class FusedLatentDecodeCoopmat : public ::testing::TestWithParam<FusedCase> {};

TEST_P(FusedLatentDecodeCoopmat, MatchesCpuScalar) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  run_fused_case(ctx, GetParam(), {LatentKernel::kFusedCoopmat, LatentKernel::kFusedCoopmatHead});
  run_fused_case(ctx, GetParam(), {LatentKernel::kFusedCoopmat}, true);
  // The same with one latent_fold_t dispatch per group (PALU_VULKAN_CMG bit 14; the default
  // folds all groups in one dispatch from a table of their addresses).
  const char* old = std::getenv("PALU_VULKAN_CMG");
  const std::string saved = old != nullptr ? old : "";
  setenv("PALU_VULKAN_CMG",
         std::to_string(std::strtoul(saved.c_str(), nullptr, 10) | 16384u).c_str(), 1);
  run_fused_case(ctx, GetParam(), {LatentKernel::kFusedCoopmat}, true);
  if (old != nullptr)
    setenv("PALU_VULKAN_CMG", saved.c_str(), 1);
  else
    unsetenv("PALU_VULKAN_CMG");
}

std::vector<FusedCase> fused_cases() {
  using S = RowStorage;
  const auto F16 = WeightType::kF16, F32 = WeightType::kF32;
  return {
      {8, 2, 2, 32, 32, 1, S::kF16, false, F32},
      {8, 2, 2, 64, 96, 63, S::kQ4, true, F32},
      {8, 8, 4, 256, 128, 65, S::kQ3, false, F16},
      {4, 4, 2, 128, 256, 65, S::kQ2, false, F32},
      {8, 8, 2, 96, 64, 65, S::kQ8, true, F16},
      {8, 2, 1, 160, 32, 65, S::kF32, false, F32},
      {8, 2, 2, 32, 224, 65, S::kBF16, false, F32},
      {8, 2, 2, 512, 384, 65, S::kQ4, true, F16},
      {4, 2, 2, 448, 512, 63, S::kF16, false, F16},
      {8, 8, 4, 256, 256, 65, S::kF16, true, F16, 128},
      {8, 2, 2, 256, 256, 4099, S::kQ4, false, F16},
      {8, 4, 2, 32, 64, 4099, S::kF16, true, F32},
      // the bench's 128/384 shape (4 heads × 128 per group): 64-token tiles with the value tile
      // in two halves (PALU_VULKAN_CMG bit 15 turns that off) (q4 and f16 chunks, and a window's chunk path)
      {8, 8, 4, 128, 384, 200, S::kQ4, true, F16, 128},
      {8, 8, 4, 128, 384, 200, S::kF16, false, F32, 128},
      {8, 8, 4, 128, 384, 200, S::kQ4, false, F32, 128, 64, 136},
      // f16 windows of packed storage: full (T − N), refilling after a truncation, all of T
      {8, 2, 2, 128, 128, 65, S::kQ4, false, F16, 64, 16, 49},
      {8, 2, 2, 96, 96, 63, S::kQ8, true, F32, 64, 8, 60},
      {8, 4, 2, 64, 64, 4099, S::kQ2, false, F16, 64, 64, 4035},
      {4, 4, 2, 224, 160, 65, S::kQ3, false, F32, 64, 128, 0},
  };
}

std::string fused_case_name(const ::testing::TestParamInfo<FusedCase>& info) {
  const FusedCase& c = info.param;
  return "H" + std::to_string(c.H) + "_Hkv" + std::to_string(c.Hkv) + "_s" + std::to_string(c.s) +
         "_dh" + std::to_string(c.dh) + "_rk" + std::to_string(c.rk) + "_rv" +
         std::to_string(c.rv) + "_T" + std::to_string(c.T) + "_" + row_storage_name(c.st) +
         (c.bias ? "_bias" : "") + (c.wt == WeightType::kF16 ? "_f16B" : "") +
         (c.window > 0 ? "_win" + std::to_string(c.window) + "from" + std::to_string(c.window_begin)
                       : "");
}
INSTANTIATE_TEST_SUITE_P(Cases, FusedLatentDecode, ::testing::ValuesIn(fused_cases()),
                         fused_case_name);
INSTANTIATE_TEST_SUITE_P(Cases, FusedLatentDecodeCoopmat, ::testing::ValuesIn(fused_cases()),
                         fused_case_name);

// Latent prefill: keys rebuilt from z^K (B^K z + b, RoPE at each position), causal attention
// whose values are the group's z^V latents; reference in double from the decoded latents.
TEST(VulkanAttention, LatentPrefillMatchesReference) {
  PALU_VK_CONTEXT_OR_SKIP(ctx);
  const int dh = 64, half = dh / 2;
  struct C {
    int H, Hkv, s, rk, rv, n, p0;
    RowStorage st;
    int window = 0, window_begin = 0;  // f16 window: positions ≥ window_begin read exact f16
  };
  for (const C& c :
       {C{8, 2, 2, 64, 32, 7, 10, RowStorage::kF16}, C{4, 4, 2, 32, 96, 20, 0, RowStorage::kQ4},
        C{8, 8, 4, 128, 64, 3, 40, RowStorage::kQ3},
        // windows: full (T − N), and refilling after a truncation (T − N < begin < T)
        C{4, 4, 2, 32, 96, 20, 8, RowStorage::kQ4, 12, 16},
        C{8, 2, 2, 64, 33, 7, 30, RowStorage::kQ2, 8, 33}}) {
    const int T = c.p0 + c.n, G = c.Hkv / c.s, N = c.s * dh, kvw = c.Hkv * dh, qw = c.H * dh,
              n_rep = c.H / c.Hkv;
    std::vector<float> inv_freq;
    const auto table = rope_table(dh, T, 10000.0, &inv_freq);
    auto q = random_floats((size_t)c.n * qw, 80);
    std::vector<float> want((size_t)c.n * c.H * c.rv);
    VulkanBuffer qb = to_device(ctx, q), tb = to_device(ctx, table);
    VulkanBuffer kt = device_buffer(ctx, (size_t)T * kvw * 4),
                 out = device_buffer(ctx, want.size() * 4);
    std::vector<VulkanBuffer> keep;
    std::vector<Region> zvr(G);
    {
      std::vector<Region> zkr(G);
      std::vector<std::vector<float>> K(1, std::vector<float>((size_t)T * kvw));
      for (int g = 0; g < G; ++g) {
        auto zk = random_floats((size_t)T * c.rk, 81 + g, -3, 3),
             zv = random_floats((size_t)T * c.rv, 91 + g);
        auto bk = random_floats((size_t)N * c.rk, 101 + g, -0.2f, 0.2f),
             kb = random_floats(N, 111 + g);
        keep.push_back(device_region(ctx, c.st, zk, c.rk, T, &zkr[g], c.window, c.window_begin));
        keep.push_back(device_region(ctx, c.st, zv, c.rv, T, &zvr[g], c.window, c.window_begin));
        keep.push_back(to_device(ctx, transpose(bk, N, c.rk)));
        const uint64_t bka = keep.back().address();
        keep.push_back(to_device(ctx, kb));
        Recorder rec(ctx);
        ASSERT_TRUE(latent_rebuild_keys(rec, zkr[g], bka, WeightType::kF32, keep.back().address(),
                                        c.s, dh, T, tb.address(), (uint32_t)(T * half),
                                        kt.address(), kvw, g * N)
                        .is_ok());
        ASSERT_TRUE(rec.submit("rebuild").is_ok());
        // Reference keys of this group.
        const auto zd = windowed(encode_host(c.st, zk, c.rk, T).decoded(c.st, c.rk, T), zk, c.rk,
                                 c.window, c.window_begin);
        for (int t = 0; t < T; ++t) {
          std::vector<float> k(N);
          for (int e = 0; e < N; ++e) {
            double a = 0;
            for (int p = 0; p < c.rk; ++p)
              a += (double)zd[(size_t)t * c.rk + p] * bk[(size_t)e * c.rk + p];
            k[e] = (float)a + kb[e];
          }
          for (int u = 0; u < c.s; ++u) {
            for (int i = 0; i < half; ++i) {
              const float co = table[(size_t)t * half + i],
                          si = table[(size_t)T * half + (size_t)t * half + i];
              const float x0 = k[u * dh + i], x1 = k[u * dh + i + half];
              K[0][(size_t)t * kvw + g * N + u * dh + i] = x0 * co - x1 * si;
              K[0][(size_t)t * kvw + g * N + u * dh + i + half] = x1 * co + x0 * si;
            }
          }
        }
        // Reference output of this group's heads (values = its z^V latents).
        const auto vd = windowed(encode_host(c.st, zv, c.rv, T).decoded(c.st, c.rv, T), zv, c.rv,
                                 c.window, c.window_begin);
        const int h0 = g * c.s * n_rep, nh = c.s * n_rep;
        std::vector<float> Kg((size_t)T * kvw, 0.f);
        // reference_prefill indexes K by KV head j = h / n_rep over all heads; run it on all
        // heads with this group's V and keep this group's heads.
        const auto all =
            reference_prefill(q, qw, c.n, c.p0, c.H, c.Hkv, dh, K[0], kvw, vd, c.rv, 0, c.rv);
        for (int r = 0; r < c.n; ++r)
          for (int h = h0; h < h0 + nh; ++h)
            for (int e = 0; e < c.rv; ++e)
              want[(size_t)r * c.H * c.rv + h * c.rv + e] =
                  all[(size_t)r * c.H * c.rv + h * c.rv + e];
      }
      auto got_k = from_device<float>(ctx, kt, (size_t)T * kvw);
      expect_near_all(got_k, K[0], 1e-5f, 1e-5f, "rebuilt keys");
    }
    for (int sg : {0, 1}) {
      if (sg == 1 && !ctx->subgroup_arithmetic()) continue;
      Region ktr{kt.address(), RowStorage::kF32, kvw, T};
      PrefillArgs a;
      a.q = qb.address();
      a.qw = qw;
      a.n = c.n;
      a.p0 = c.p0;
      a.H = c.H;
      a.H_kv = c.Hkv;
      a.dh = dh;
      a.out = out.address();
      a.ow = c.H * c.rv;
      Recorder rec(ctx);
      for (int g = 0; g < G; ++g) {
        ASSERT_TRUE(attention_prefill(rec, a, ktr, zvr[g], 0, c.rv, g * c.s * n_rep, c.s * n_rep,
                                      g * c.s * n_rep * c.rv, sg)
                        .is_ok());
      }
      ASSERT_TRUE(rec.submit("latent prefill").is_ok());
      expect_near_all(
          from_device<float>(ctx, out, want.size()), want, 1e-4f, 1e-5f,
          std::string("latent prefill ") + row_storage_name(c.st) + " sg " + std::to_string(sg));
    }
  }
}

}  // namespace
}  // namespace palu::backends::vulkan
