// CUDA: the toolchain end to end (a kernel against the CPU reference). Skips with the reason
// when no GPU is visible, so the test list is the same on every machine.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "backends/cpu/kernels.h"
#include "backends/cuda/cuda_device.h"

namespace palu::backends::cuda {
namespace {

TEST(CudaSmoke, RmsNormMatchesCpuReference) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible (no GPU or no driver)";
  const int rows = 37, n = 4099;
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.f, 2.f);
  std::vector<float> x((size_t)rows * n), w(n), y((size_t)rows * n), ref((size_t)rows * n);
  for (auto& v : x) v = d(rng);
  for (auto& v : w) v = d(rng);
  Status st = rms_norm_on_gpu(0, x.data(), w.data(), 1e-5f, y.data(), rows, n);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  for (int r = 0; r < rows; ++r) cpu::scalar_kernels().rms_norm(x.data() + (size_t)r * n, w.data(), 1e-5f, ref.data() + (size_t)r * n, n);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_NEAR(y[i], ref[i], 1e-4f * (1.f + std::fabs(ref[i]))) << i;
}

TEST(CudaSmoke, BadArgumentsAreErrors) {
  if (cuda_device_count() == 0) GTEST_SKIP() << "no CUDA device visible (no GPU or no driver)";
  float x = 1.f, w = 1.f, y = 0.f;
  EXPECT_FALSE(rms_norm_on_gpu(0, &x, &w, 1e-5f, &y, 0, 1).is_ok());
  EXPECT_FALSE(rms_norm_on_gpu(9999, &x, &w, 1e-5f, &y, 1, 1).is_ok());
}

}  // namespace
}  // namespace palu::backends::cuda
