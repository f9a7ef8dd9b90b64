// Helpers of the Vulkan tests: one context per process (skipped with the reason when there is
// no usable Vulkan device), host↔device vectors, f16 rounding, comparison with a tolerance.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backends/base/dtype.h"
#include "backends/vulkan/vulkan_context.h"
#include "backends/vulkan/vulkan_ops.h"
#include "tests/common/logit_rows.h"

namespace palu::backends::vulkan::testing {

// The shared context, or null with *why set. The static is initialised by the lambda that
// creates the context, so its destructor is registered after the driver's own exit handlers
// (NVIDIA's ICD registers them when vkCreateInstance loads it) and runs before them: a static
// declared first and filled in later is destroyed after the driver has torn itself down, and
// its vkDestroyBuffer/vkFreeMemory then crash at exit (seen on the H100, driver 580).
struct SharedContext {
  std::unique_ptr<VulkanContext> ctx;
  std::string reason;
};
inline VulkanContext* context(std::string* why) {
  static SharedContext shared = [] {
    SharedContext s;
    auto c = VulkanContext::create();
    if (c.is_ok()) {
      s.ctx = std::move(c).value();
      std::printf("[vulkan] %s\n", s.ctx->info().name.c_str());
    } else {
      s.reason = c.status().to_string();
    }
    return s;
  }();
  *why = shared.reason;
  return shared.ctx.get();
}

#define PALU_VK_CONTEXT_OR_SKIP(var)                                              \
  std::string palu_vk_why_;                                                       \
  VulkanContext* var = ::palu::backends::vulkan::testing::context(&palu_vk_why_); \
  if (var == nullptr) GTEST_SKIP() << "no Vulkan device: " << palu_vk_why_

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline VulkanBuffer device_buffer(VulkanContext* ctx, size_t bytes) {
  auto b = ctx->alloc(bytes, MemoryKind::kDevice, "test buffer");
  EXPECT_TRUE(b.is_ok()) << b.status().to_string();
  return b.is_ok() ? std::move(b).value() : VulkanBuffer();
}

template <typename T>
VulkanBuffer to_device(VulkanContext* ctx, const std::vector<T>& v) {
  VulkanBuffer b = device_buffer(ctx, std::max<size_t>(v.size() * sizeof(T), 4));
  if (!v.empty()) {
    EXPECT_TRUE(ctx->upload(b, 0, v.data(), v.size() * sizeof(T)).is_ok());
  }
  return b;
}

template <typename T>
std::vector<T> from_device(VulkanContext* ctx, const VulkanBuffer& b, size_t n,
                           size_t offset_bytes = 0) {
  std::vector<T> v(n);
  EXPECT_TRUE(ctx->download(b, offset_bytes, v.data(), n * sizeof(T)).is_ok());
  return v;
}

// f16 bits of a vector (round to nearest even) and the values they hold.
inline std::vector<uint16_t> to_f16(const std::vector<float>& v) {
  std::vector<uint16_t> h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = f32_to_f16(v[i]);
  return h;
}
inline std::vector<float> round_f16(const std::vector<float>& v) {
  std::vector<float> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = f16_to_f32(f32_to_f16(v[i]));
  return r;
}

// max |got − want| ≤ atol + rtol · max |want|.
inline void expect_near_all(const std::vector<float>& got, const std::vector<float>& want,
                            float rtol, float atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  float max_abs = 0.f, max_diff = 0.f;
  size_t worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_abs = std::max(max_abs, std::fabs(want[i]));
    const float d = std::fabs(got[i] - want[i]);
    if (!(d <= max_diff)) {
      max_diff = d;
      worst = i;
    }
  }
  EXPECT_LE(max_diff, atol + rtol * max_abs)
      << what << ": worst at " << worst << " got " << got[worst] << " want " << want[worst]
      << " (max |want| " << max_abs << ")";
}

// One row of logits against a reference row (tests/common/logit_rows.h).
using palu::testing::LogitRowDiff;
using palu::testing::logit_row_diff;

}  // namespace palu::backends::vulkan::testing
