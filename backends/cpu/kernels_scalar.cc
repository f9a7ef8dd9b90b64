// Reference kernels: plain C++, no intrinsics, float32 math in the obvious order.
#include <algorithm>
#include <cmath>

#include "backends/base/dtype.h"
#include "backends/cpu/kernels.h"

namespace palu::backends::cpu {
namespace {

float dot_scalar(const float* a, const float* b, size_t n) {
  float s = 0.f;
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy_scalar(float alpha, const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

void rms_norm_scalar(const float* x, const float* w, float eps, float* y, size_t n) {
  double ss = 0.0;
  for (size_t i = 0; i < n; ++i) ss += (double)x[i] * x[i];
  const float inv = 1.0f / std::sqrt((float)(ss / (double)n) + eps);
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * inv * w[i];
}

void softmax_scalar(float* x, size_t n) {
  if (n == 0) return;
  float mx = x[0];
  for (size_t i = 1; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = (float)(1.0 / sum);
  for (size_t i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul_scalar(const float* gate, const float* up, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const float g = gate[i];
    y[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void add_scalar(const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += x[i];
}

void f16_to_f32_scalar(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = f16_to_f32(src[i]);
}

void bf16_to_f32_scalar(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(src[i]);
}

void gemm_nt_scalar(int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                    float* c, int ldc, float beta) {
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      const float v = dot_scalar(a + (size_t)i * lda, b + (size_t)j * ldb, (size_t)k);
      float* out = c + (size_t)i * ldc + j;
      *out = beta == 0.f ? v : v + beta * *out;
    }
  }
}

float exp_sum_scalar(float* x, size_t n, float m) {
  float sum = 0.f;
  for (size_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    sum += x[i];
  }
  return sum;
}

}  // namespace

const KernelTable& scalar_kernels() {
  static const KernelTable table = {
      CpuIsa::kScalar, dot_scalar,          axpy_scalar,         rms_norm_scalar,
      softmax_scalar,  silu_mul_scalar,     add_scalar,          f16_to_f32_scalar,
      bf16_to_f32_scalar, gemm_nt_scalar,   exp_sum_scalar,
  };
  return table;
}

const KernelTable& kernels_for(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kScalar: return scalar_kernels();
    case CpuIsa::kAvx2: return avx2_kernels();
    case CpuIsa::kAvx512: return avx512_kernels();
  }
  return scalar_kernels();
}

const KernelTable& kernels() {
  static const KernelTable& table = kernels_for(active_cpu_isa());
  return table;
}

}  // namespace palu::backends::cpu
