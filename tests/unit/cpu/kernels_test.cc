// CPU kernels: the AVX-512 table against the scalar reference on random inputs of awkward
// lengths, and the threaded GEMM against a float64 reference. Skips (with the reason) the
// AVX-512 comparison on CPUs without AVX-512.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
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

class KernelTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (detect_cpu_isa() != CpuIsa::kAvx512) GTEST_SKIP() << "this CPU has no AVX-512; only the scalar table is used";
  }
  const KernelTable& ref = scalar_kernels();
  const KernelTable& fast = avx512_kernels();
};

TEST_F(KernelTableTest, ElementwiseKernelsMatchScalar) {
  for (size_t n : {1u, 7u, 15u, 16u, 17u, 63u, 64u, 100u, 512u, 1031u}) {
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
    std::vector<float> g1(n), g2(n);
    fast.silu_mul(a.data(), b.data(), g1.data(), n);
    ref.silu_mul(a.data(), b.data(), g2.data(), n);
    EXPECT_LT(max_rel(g1, g2), 1e-5);
    std::vector<uint16_t> h(n), bf(n);
    for (size_t i = 0; i < n; ++i) {
      h[i] = f32_to_f16(a[i]);
      bf[i] = f32_to_bf16(a[i]);
    }
    std::vector<float> c1(n), c2(n);
    fast.f16_to_f32(h.data(), c1.data(), n);
    ref.f16_to_f32(h.data(), c2.data(), n);
    EXPECT_EQ(c1, c2);
    fast.bf16_to_f32(bf.data(), c1.data(), n);
    ref.bf16_to_f32(bf.data(), c2.data(), n);
    EXPECT_EQ(c1, c2);
  }
}

TEST_F(KernelTableTest, SoftmaxHandlesExtremes) {
  std::vector<float> x = {-1e30f, 0.f, 80.f, -80.f, 88.f, -INFINITY, 3.f};
  std::vector<float> y = x;
  fast.softmax(x.data(), x.size());
  ref.softmax(y.data(), y.size());
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], y[i], 1e-6) << i;
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
  if (detect_cpu_isa() == CpuIsa::kAvx512) {
    std::vector<float> c2(54);
    avx512_kernels().gemm_nt(6, 9, 37, a.data(), 37, b.data(), 37, c2.data(), 9, 0.f);
    for (size_t i = 0; i < c2.size(); ++i) EXPECT_NEAR(c2[i], want[i], 1e-4);
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
