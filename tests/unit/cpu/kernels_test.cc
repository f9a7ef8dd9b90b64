// CPU kernels: each vector table (AVX2, AVX-512) against the scalar reference on random inputs
// of awkward lengths, the block GEMMs at the prefill attention's shapes and at awkward ones, the
// threaded GEMM against a float64 reference, and the PALU_CPU_ISA cap. A table the CPU lacks is
// skipped with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/kernels.h"
#include "backends/registry.h"

namespace palu::backends::cpu {
namespace {

std::vector<float> randv(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

float max_rel(const std::vector<float>& a, const std::vector<float>& b) {
  float m = 0.f, scale = 1e-6f;
  for (size_t i = 0; i < a.size(); ++i) scale = std::max(scale, std::fabs(b[i]));
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m / scale;
}

// The vector tables, each against the scalar one.
class KernelTableTest : public ::testing::TestWithParam<CpuIsa> {
 protected:
  void SetUp() override {
    if ((int)detect_cpu_isa() < (int)GetParam()) {
      GTEST_SKIP() << "this CPU has no " << cpu_isa_name(GetParam()) << " (it has "
                   << cpu_isa_name(detect_cpu_isa()) << "); that table is not tested here";
    }
  }
  const KernelTable& ref = scalar_kernels();
  const KernelTable& fast = kernels_for(GetParam());
};

TEST_P(KernelTableTest, TableIsTheAskedIsa) { EXPECT_EQ(fast.isa, GetParam()); }

TEST_P(KernelTableTest, ElementwiseKernelsMatchScalar) {
  for (size_t n : {1u, 5u, 7u, 8u, 9u, 15u, 16u, 17u, 63u, 64u, 100u, 512u, 1031u}) {
    SCOPED_TRACE(n);
    auto a = randv(n, 1), b = randv(n, 2), w = randv(n, 3);
    EXPECT_NEAR(fast.dot(a.data(), b.data(), n), ref.dot(a.data(), b.data(), n), 1e-4 * std::sqrt((double)n));
    std::vector<float> y1 = b, y2 = b;
    fast.axpy(0.5f, a.data(), y1.data(), n);
    ref.axpy(0.5f, a.data(), y2.data(), n);
    EXPECT_LT(max_rel(y1, y2), 1e-6);
    std::vector<float> r1(n), r2(n);
    fast.rms_norm(a.data(), w.data(), 1e-5f, r1.data(), n);
    ref.rms_norm(a.data(), w.data(), 1e-5f, r2.data(), n);
    EXPECT_LT(max_rel(r1, r2), 1e-5);
    std::vector<float> s1 = randv(n, 4, 5.f), s2 = s1;
    fast.softmax(s1.data(), n);
    ref.softmax(s2.data(), n);
    EXPECT_LT(max_rel(s1, s2), 1e-5);
    double total = 0;
    for (float v : s1) total += v;
    EXPECT_NEAR(total, 1.0, 1e-5);
    std::vector<float> e1 = randv(n + 1, 5, 5.f), e2 = e1;
    const float sum1 = fast.exp_sum(e1.data(), n, 2.5f), sum2 = ref.exp_sum(e2.data(), n, 2.5f);
    EXPECT_NEAR(sum1, sum2, 1e-5 * std::fabs(sum2));
    EXPECT_LT(max_rel(e1, e2), 1e-5);
    EXPECT_EQ(e1[n], e2[n]) << "exp_sum wrote past n";
    std::vector<float> g1(n), g2(n);
    fast.silu_mul(a.data(), b.data(), g1.data(), n);
    ref.silu_mul(a.data(), b.data(), g2.data(), n);
    EXPECT_LT(max_rel(g1, g2), 1e-5);
    std::vector<float> d1 = b, d2 = b;
    fast.add(a.data(), d1.data(), n);
    ref.add(a.data(), d2.data(), n);
    EXPECT_EQ(d1, d2);
    std::vector<uint16_t> h(n), bf(n);
    for (size_t i = 0; i < n; ++i) {
      h[i] = f32_to_f16(a[i]);
      bf[i] = f32_to_bf16(a[i]);
    }
    std::vector<float> c1(n + 1, 9.f), c2(n + 1, 9.f);
    fast.f16_to_f32(h.data(), c1.data(), n);
    ref.f16_to_f32(h.data(), c2.data(), n);
    EXPECT_EQ(c1, c2);
    fast.bf16_to_f32(bf.data(), c1.data(), n);
    ref.bf16_to_f32(bf.data(), c2.data(), n);
    EXPECT_EQ(c1, c2);
  }
}

TEST_P(KernelTableTest, SoftmaxHandlesExtremes) {
  std::vector<float> x = {-1e30f, 0.f, 80.f, -80.f, 88.f, -INFINITY, 3.f};
  std::vector<float> y = x;
  fast.softmax(x.data(), x.size());
  ref.softmax(y.data(), y.size());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], y[i], 1e-6) << i;
  // exp_sum on the online softmax's range: far below the max underflows to 0, as std::exp does.
  std::vector<float> e = {0.f, -1.f, -20.f, -87.f, -88.f, -100.f, -1e30f, -INFINITY, -0.5f};
  std::vector<float> f = e;
  const float s1 = fast.exp_sum(e.data(), e.size(), 0.f), s2 = ref.exp_sum(f.data(), f.size(), 0.f);
  EXPECT_NEAR(s1, s2, 1e-6);
  for (size_t i = 0; i < e.size(); ++i) EXPECT_NEAR(e[i], f[i], 1e-6 * std::max(1e-30f, f[i]) + 1e-37) << i;
}

// The block GEMM against the scalar one: the prefill attention's shapes (Q·Kᵀ 64×128×64, P·V
// 64×64×128), k across the packed-panel size, tails in every dimension, leading dims wider
// than the block, beta 0 (C not read: NaN there must not leak), 1 and 0.5.
TEST_P(KernelTableTest, GemmNtBlockMatchesScalar) {
  struct Shape { int m, n, k; };
  for (const Shape& sh : std::vector<Shape>{{64, 128, 64}, {64, 64, 128}, {1, 1, 1}, {1, 37, 19},
                                            {2, 9, 8}, {3, 17, 33}, {4, 16, 16}, {5, 7, 33},
                                            {6, 16, 7}, {7, 33, 300}, {13, 31, 257}, {16, 64, 512},
                                            {17, 100, 600}}) {
    for (float beta : {0.f, 1.f, 0.5f}) {
      SCOPED_TRACE(::testing::Message() << sh.m << "x" << sh.n << "x" << sh.k << " beta " << beta);
      const int lda = sh.k + 3, ldb = sh.k + 5, ldc = sh.n + 2;
      auto a = randv((size_t)sh.m * lda, 30), b = randv((size_t)sh.n * ldb, 31);
      std::vector<float> c0 = randv((size_t)sh.m * ldc, 32);
      if (beta == 0.f)
        for (float& x : c0) x = NAN;
      std::vector<float> c1 = c0, c2 = c0;
      fast.gemm_nt(sh.m, sh.n, sh.k, a.data(), lda, b.data(), ldb, c1.data(), ldc, beta);
      ref.gemm_nt(sh.m, sh.n, sh.k, a.data(), lda, b.data(), ldb, c2.data(), ldc, beta);
      for (int i = 0; i < sh.m; ++i) {
        for (int j = 0; j < ldc; ++j) {
          const size_t o = (size_t)i * ldc + j;
          if (j >= sh.n) {
            // Outside the block: untouched (NaN stays NaN).
            EXPECT_TRUE(std::isnan(c0[o]) ? std::isnan(c1[o]) : c1[o] == c0[o]) << i << "," << j;
          } else {
            ASSERT_NEAR(c1[o], c2[o], 1e-4 * std::sqrt((double)sh.k)) << i << "," << j;
          }
        }
      }
    }
  }
}

std::string isa_name(const ::testing::TestParamInfo<CpuIsa>& info) { return cpu_isa_name(info.param); }

INSTANTIATE_TEST_SUITE_P(Isa, KernelTableTest, ::testing::Values(CpuIsa::kAvx2, CpuIsa::kAvx512),
                         isa_name);

// PALU_CPU_ISA caps the detected ISA; an unknown value is an error naming it (and, through
// active_cpu_isa(), one line on stderr).
TEST(CpuIsaTest, CapNeverRaisesAndNamesAnUnknownValue) {
  for (CpuIsa detected : {CpuIsa::kScalar, CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    SCOPED_TRACE(cpu_isa_name(detected));
    EXPECT_EQ(*cap_cpu_isa(nullptr, detected), detected);
    EXPECT_EQ(*cap_cpu_isa("", detected), detected);
    EXPECT_EQ(*cap_cpu_isa("scalar", detected), CpuIsa::kScalar);
    EXPECT_EQ(*cap_cpu_isa("avx2", detected),
              detected == CpuIsa::kScalar ? CpuIsa::kScalar : CpuIsa::kAvx2);
    EXPECT_EQ(*cap_cpu_isa("avx512", detected), detected);
    Result<CpuIsa> bad = cap_cpu_isa("avx3", detected);
    ASSERT_FALSE(bad.is_ok());
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(bad.status().message().find("\"avx3\""), std::string::npos) << bad.status().message();
    EXPECT_NE(bad.status().message().find("scalar, avx2 or avx512"), std::string::npos);
  }
}

TEST(CpuIsaTest, EnvironmentCapsActiveIsa) {
  const char* old = std::getenv("PALU_CPU_ISA");
  const std::string saved = old != nullptr ? old : "";
  const CpuIsa detected = detect_cpu_isa();
  setenv("PALU_CPU_ISA", "avx2", 1);
  EXPECT_EQ(active_cpu_isa(), detected == CpuIsa::kScalar ? CpuIsa::kScalar : CpuIsa::kAvx2);
  setenv("PALU_CPU_ISA", "scalar", 1);
  EXPECT_EQ(active_cpu_isa(), CpuIsa::kScalar);
  EXPECT_TRUE(cpu_isa_forced_scalar());
  setenv("PALU_CPU_ISA", "bogus-isa", 1);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(active_cpu_isa(), detected);
  EXPECT_EQ(active_cpu_isa(), detected);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("\"bogus-isa\""), std::string::npos) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "one line, once: " << err;
  if (old != nullptr) {
    setenv("PALU_CPU_ISA", saved.c_str(), 1);
  } else {
    unsetenv("PALU_CPU_ISA");
  }
}

void gemm_reference(int m, int n, int k, const float* a, const float* b, bool trans_b, std::vector<double>* c) {
  c->assign((size_t)m * n, 0.0);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j) {
      double s = 0;
      for (int p = 0; p < k; ++p) s += (double)a[(size_t)i * k + p] * (trans_b ? b[(size_t)j * k + p] : b[(size_t)p * n + j]);
      (*c)[(size_t)i * n + j] = s;
    }
}

TEST(GemmTest, MatchesFloat64Reference) {
  for (auto [m, n, k] : std::vector<std::tuple<int, int, int>>{{1, 1, 1}, {1, 513, 64}, {5, 7, 33}, {64, 64, 64},
                                                                {130, 77, 129}, {3, 1000, 512}}) {
    SCOPED_TRACE(::testing::Message() << m << "x" << n << "x" << k);
    auto a = randv((size_t)m * k, 10), b = randv((size_t)n * k, 11);
    std::vector<double> want;
    gemm_reference(m, n, k, a.data(), b.data(), true, &want);
    std::vector<float> c((size_t)m * n, 7.f);
    gemm_nt(m, n, k, a.data(), k, b.data(), k, c.data(), n);
    for (size_t i = 0; i < c.size(); ++i) ASSERT_NEAR(c[i], want[i], 1e-4 * std::sqrt((double)k)) << i;
    // beta = 1 accumulates.
    std::vector<float> c2((size_t)m * n, 1.f);
    gemm_nt(m, n, k, a.data(), k, b.data(), k, c2.data(), n, 1.f);
    for (size_t i = 0; i < c2.size(); ++i) ASSERT_NEAR(c2[i], want[i] + 1.0, 1e-4 * std::sqrt((double)k)) << i;
    // NN layout: B is [k, n].
    std::vector<float> bt((size_t)k * n);
    for (int j = 0; j < n; ++j)
      for (int p = 0; p < k; ++p) bt[(size_t)p * n + j] = b[(size_t)j * k + p];
    std::vector<float> c3((size_t)m * n);
    gemm_nn(m, n, k, a.data(), k, bt.data(), n, c3.data(), n);
    for (size_t i = 0; i < c3.size(); ++i) ASSERT_NEAR(c3[i], want[i], 1e-4 * std::sqrt((double)k)) << i;
  }
}

TEST(GemmTest, OwnKernelsMatchReferenceWhenForcedScalar) {
  const KernelTable& ref = scalar_kernels();
  auto a = randv(6 * 37, 20), b = randv(9 * 37, 21);
  std::vector<double> want;
  gemm_reference(6, 9, 37, a.data(), b.data(), true, &want);
  std::vector<float> c(54);
  ref.gemm_nt(6, 9, 37, a.data(), 37, b.data(), 37, c.data(), 9, 0.f);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_NEAR(c[i], want[i], 1e-4);
  for (CpuIsa isa : {CpuIsa::kAvx2, CpuIsa::kAvx512}) {
    if ((int)detect_cpu_isa() < (int)isa) {
      std::printf("skipping the %s table: this CPU has no %s\n", cpu_isa_name(isa), cpu_isa_name(isa));
      continue;
    }
    std::vector<float> c2(54);
    kernels_for(isa).gemm_nt(6, 9, 37, a.data(), 37, b.data(), 37, c2.data(), 9, 0.f);
    for (size_t i = 0; i < c2.size(); ++i) EXPECT_NEAR(c2[i], want[i], 1e-4) << cpu_isa_name(isa);
  }
}

TEST(RegistryTest, CpuAlwaysPresentAndMissingGpusAreOneLogLineEach) {
  DeviceList list = enumerate_devices();
  ASSERT_FALSE(list.devices.empty());
  EXPECT_EQ(list.devices[0]->info().kind, DeviceKind::kCpu);
  EXPECT_TRUE(list.devices[0]->supports(OpKind::kMatMul));
  EXPECT_GE(list.log.size(), 3u);  // cpu + cuda + vulkan lines
  for (const auto& line : list.log) std::printf("  %s\n", line.c_str());
}

}  // namespace
}  // namespace palu::backends::cpu
