// Forward-pass ops on the GPU (backends/cuda/forward_ops.h) against the CPU scalar reference
// (backends/cpu/kernels.h) and the model's RoPE rounding; bad input → errors. Skips without a GPU.
// Tolerances: element-wise ops 1e-6 relative (f32 math, expf vs std::exp); the GEMM rounds x to
// f16 as it rounds W (the reference gets both rounded), so only accumulation order differs: 1e-4
// of Σ|x·w|.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/cpu/kernels.h"
#include "backends/cuda/cuda_allocator.h"
#include "backends/cuda/cuda_device.h"
#include "backends/cuda/forward_ops.h"

namespace palu::backends::cuda {
namespace {

#define PALU_SKIP_WITHOUT_GPU()                                                               \
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device: no GPU or no driver visible"

template <typename T>
CudaBuffer up(CudaAllocator* a, const std::vector<T>& v) {
  auto b = CudaBuffer::make(a, v.size() * sizeof(T));
  EXPECT_TRUE(b.is_ok());
  EXPECT_TRUE(b->upload(v.data(), v.size() * sizeof(T)).is_ok());
  return std::move(b).value();
}

template <typename T>
std::vector<T> down(const CudaBuffer& b, size_t n) {
  std::vector<T> v(n);
  EXPECT_TRUE(b.download(v.data(), n * sizeof(T)).is_ok());
  return v;
}

std::vector<float> randn(size_t n, unsigned seed, float s = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, s);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(CudaForwardOps, RmsNormSiluAddMatchCpu) {
  PALU_SKIP_WITHOUT_GPU();
  CudaAllocator a(0);
  const int rows = 7, n = 4099;
  auto x = randn((size_t)rows * n, 1, 2.f), w = randn(n, 2), g = randn((size_t)rows * n, 3, 3.f);
  CudaBuffer dx = up(&a, x), dw = up(&a, w), dg = up(&a, g), dy = up(&a, std::vector<float>(x.size()));
  Status st = rms_norm_cuda(dx.as<float>(), dw.as<float>(), 1e-5f, dy.as<float>(), rows, n, nullptr);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  auto y = down<float>(dy, x.size());
  std::vector<float> ref(x.size());
  for (int r = 0; r < rows; ++r)
    cpu::scalar_kernels().rms_norm(x.data() + (size_t)r * n, w.data(), 1e-5f, ref.data() + (size_t)r * n, n);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-5f * (1.f + std::fabs(ref[i]))) << i;

  ASSERT_TRUE(silu_mul_cuda(dg.as<float>(), dx.as<float>(), dy.as<float>(), x.size(), nullptr).is_ok());
  y = down<float>(dy, x.size());
  cpu::scalar_kernels().silu_mul(g.data(), x.data(), ref.data(), x.size());
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-6f * (1.f + std::fabs(ref[i]))) << i;

  ref = y;  // y += x from the GPU's own silu output: exact in f32
  ASSERT_TRUE(add_cuda(dx.as<float>(), dy.as<float>(), x.size(), nullptr).is_ok());
  y = down<float>(dy, x.size());
  cpu::scalar_kernels().add(x.data(), ref.data(), x.size());
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], ref[i]) << i;
}

TEST(CudaForwardOps, RopeMatchesModelRounding) {
  PALU_SKIP_WITHOUT_GPU();
  CudaAllocator a(0);
  const int tokens = 5, heads = 3, d = 128, half = 64;
  auto x = randn((size_t)tokens * heads * d, 4);
  std::vector<int32_t> pos = {0, 1, 4095, 65535, 131071};
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) inv[i] = 1.0f / (float)std::pow(10000.0, (double)(2 * i) / d);
  CudaBuffer dx = up(&a, x);
  ASSERT_TRUE(rope_cuda(dx.as<float>(), tokens, heads, d, pos.data(), inv.data(), &a, nullptr).is_ok());
  auto y = down<float>(dx, x.size());
  for (int t = 0; t < tokens; ++t)
    for (int h = 0; h < heads; ++h)
      for (int i = 0; i < half; ++i) {
        const float ang = (float)pos[t] * inv[i];
        const float c = (float)std::cos((double)ang), s = (float)std::sin((double)ang);
        const float* v = x.data() + ((size_t)t * heads + h) * d;
        const float r0 = v[i] * c - v[i + half] * s, r1 = v[i + half] * c + v[i] * s;
        const float* o = y.data() + ((size_t)t * heads + h) * d;
        ASSERT_NEAR(o[i], r0, 1e-6f * (1.f + std::fabs(r0)));
        ASSERT_NEAR(o[i + half], r1, 1e-6f * (1.f + std::fabs(r1)));
      }
  const std::vector<int32_t> bad = {0, -1, 2, 3, 4};
  EXPECT_EQ(rope_cuda(dx.as<float>(), tokens, heads, d, bad.data(), inv.data(), &a, nullptr).code(),
            StatusCode::kInvalidArgument);
}

TEST(CudaForwardOps, EmbeddingGatherAndBadIds) {
  PALU_SKIP_WITHOUT_GPU();
  CudaAllocator a(0);
  const int vocab = 1000, d = 96;
  auto tf = randn((size_t)vocab * d, 5);
  std::vector<uint16_t> table(tf.size());
  for (size_t i = 0; i < tf.size(); ++i) table[i] = f32_to_f16(tf[i]);
  CudaBuffer dt = up(&a, table), dout = up(&a, std::vector<float>(4 * d));
  const std::vector<int32_t> ids = {0, 999, 17, 17};
  ASSERT_TRUE(embedding_gather_cuda(dt.as<uint16_t>(), vocab, d, ids.data(), 4, dout.as<float>(), &a, nullptr).is_ok());
  auto out = down<float>(dout, 4 * d);
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < d; ++i) ASSERT_EQ(out[(size_t)t * d + i], f16_to_f32(table[(size_t)ids[t] * d + i]));
  const std::vector<int32_t> bad = {3, 1000};
  Status st = embedding_gather_cuda(dt.as<uint16_t>(), vocab, d, bad.data(), 2, dout.as<float>(), &a, nullptr);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("ids[1] = 1000"), std::string::npos) << st.message();
}

TEST(CudaForwardOps, GemmF16WeightsMatchesCpu) {
  PALU_SKIP_WITHOUT_GPU();
  CudaAllocator a(0);
  auto blas = CublasHandle::make(0);
  ASSERT_TRUE(blas.is_ok()) << blas.status().to_string();
  for (auto [m, n, k] : {std::tuple{1, 4096, 4096}, std::tuple{7, 1000, 288}, std::tuple{33, 65, 1024}}) {
    auto x = randn((size_t)m * k, 6), wf = randn((size_t)n * k, 7, 0.05f), y0 = randn((size_t)m * n, 8);
    std::vector<uint16_t> w(wf.size());
    std::vector<float> xr(x.size()), wr(wf.size());
    for (size_t i = 0; i < wf.size(); ++i) w[i] = f32_to_f16(wf[i]), wr[i] = f16_to_f32(w[i]);
    for (size_t i = 0; i < x.size(); ++i) xr[i] = f16_to_f32(f32_to_f16(x[i]));
    CudaBuffer dx = up(&a, x), dw = up(&a, w), dy = up(&a, y0);
    ASSERT_TRUE(gemm_f16w_cuda(*blas, dx.as<float>(), dw.as<uint16_t>(), dy.as<float>(), m, n, k, 0.5f, &a, nullptr)
                    .is_ok());
    auto y = down<float>(dy, y0.size());
    std::vector<float> ref = y0;
    cpu::scalar_kernels().gemm_nt(m, n, k, xr.data(), k, wr.data(), k, ref.data(), n, 0.5f);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) {
        double mag = std::fabs(0.5 * y0[(size_t)i * n + j]);
        for (int p = 0; p < k; ++p) mag += std::fabs((double)xr[(size_t)i * k + p] * wr[(size_t)j * k + p]);
        ASSERT_NEAR(y[(size_t)i * n + j], ref[(size_t)i * n + j], 1e-4 * mag + 1e-6) << m << "x" << n << "x" << k;
      }
  }
  EXPECT_EQ(gemm_f16w_cuda(*blas, nullptr, nullptr, nullptr, 1, 1, 1, 0.f, &a, nullptr).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::backends::cuda
