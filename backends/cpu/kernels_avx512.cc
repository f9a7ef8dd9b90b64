// AVX-512 kernels. This translation unit alone is compiled with -mavx512f/bw/vl/dq, -mfma and
// -mf16c; nothing here runs unless detect_cpu_isa() returned kAvx512.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "backends/cpu/kernels.h"

namespace palu::backends::cpu {
namespace {

inline __mmask16 tail_mask(size_t r) { return (__mmask16)((1u << r) - 1u); }

float dot_avx512(const float* a, const float* b, size_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void axpy_avx512(float alpha, const float* x, float* y, size_t n) {
  const __m512 va = _mm512_set1_ps(alpha);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(
        y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

// exp(x) for x ≤ 0 mostly (softmax) but valid on the float range: x = k·ln2 + r, |r| ≤ ln2/2,
// degree-6 polynomial for exp(r), then scale by 2^k. Max relative error ≈ 2 ulp.
inline __m512 exp_avx512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-88.0f));
  x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, k);
}

void rms_norm_avx512(const float* x, const float* w, float eps, float* y, size_t n) {
  __m512 acc = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  float ss = _mm512_reduce_add_ps(acc);
  for (; i < n; ++i) ss += x[i] * x[i];
  const float inv = 1.0f / std::sqrt(ss / (float)n + eps);
  const __m512 vi = _mm512_set1_ps(inv);
  i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), vi), _mm512_loadu_ps(w + i)));
  }
  for (; i < n; ++i) y[i] = x[i] * inv * w[i];
}

float exp_sum_avx512(float* x, size_t n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(x + i, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (i < n) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 e = exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
    _mm512_mask_storeu_ps(x + i, k, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(k, e));
  }
  return _mm512_reduce_add_ps(sum);
}

void softmax_avx512(float* x, size_t n) {
  if (n == 0) return;
  __m512 vmax = _mm512_set1_ps(-INFINITY);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
  float mx = _mm512_reduce_max_ps(vmax);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  const __m512 inv = _mm512_set1_ps(1.0f / exp_sum_avx512(x, n, mx));
  i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
  }
}

void silu_mul_avx512(const float* gate, const float* up, float* y, size_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 g = _mm512_loadu_ps(gate + i);
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g))));
    _mm512_storeu_ps(y + i, _mm512_mul_ps(s, _mm512_loadu_ps(up + i)));
  }
  for (; i < n; ++i) y[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void add_avx512(const float* x, float* y, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_loadu_ps(x + i)));
  }
  for (; i < n; ++i) y[i] += x[i];
}

void f16_to_f32_avx512(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(src + i))));
  }
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

void bf16_to_f32_avx512(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(src + i)));
    _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
  for (; i < n; ++i) {
    const uint32_t bits = (uint32_t)src[i] << 16;
    float f;
    __builtin_memcpy(&f, &bits, 4);
    dst[i] = f;
  }
}

// 4×4 register block of dot products; K is streamed in 16-wide vectors.
void gemm_nt_avx512(int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                    float* c, int ldc, float beta) {
  const int kv = k & ~15;
  const __mmask16 km = tail_mask((size_t)(k - kv));
  int i = 0;
  for (; i + 4 <= m; i += 4) {
    int j = 0;
    for (; j + 4 <= n; j += 4) {
      __m512 acc[4][4];
      for (int r = 0; r < 4; ++r)
        for (int s = 0; s < 4; ++s) acc[r][s] = _mm512_setzero_ps();
      const float* a0 = a + (size_t)i * lda;
      const float* b0 = b + (size_t)j * ldb;
      for (int p = 0; p < kv; p += 16) {
        __m512 bv[4];
        for (int s = 0; s < 4; ++s) bv[s] = _mm512_loadu_ps(b0 + (size_t)s * ldb + p);
        for (int r = 0; r < 4; ++r) {
          const __m512 av = _mm512_loadu_ps(a0 + (size_t)r * lda + p);
          for (int s = 0; s < 4; ++s) acc[r][s] = _mm512_fmadd_ps(av, bv[s], acc[r][s]);
        }
      }
      if (kv < k) {
        __m512 bv[4];
        for (int s = 0; s < 4; ++s) bv[s] = _mm512_maskz_loadu_ps(km, b0 + (size_t)s * ldb + kv);
        for (int r = 0; r < 4; ++r) {
          const __m512 av = _mm512_maskz_loadu_ps(km, a0 + (size_t)r * lda + kv);
          for (int s = 0; s < 4; ++s) acc[r][s] = _mm512_fmadd_ps(av, bv[s], acc[r][s]);
        }
      }
      for (int r = 0; r < 4; ++r) {
        for (int s = 0; s < 4; ++s) {
          float* out = c + (size_t)(i + r) * ldc + j + s;
          const float v = _mm512_reduce_add_ps(acc[r][s]);
          *out = beta == 0.f ? v : v + beta * *out;
        }
      }
    }
    for (; j < n; ++j) {
      for (int r = 0; r < 4; ++r) {
        float* out = c + (size_t)(i + r) * ldc + j;
        const float v = dot_avx512(a + (size_t)(i + r) * lda, b + (size_t)j * ldb, (size_t)k);
        *out = beta == 0.f ? v : v + beta * *out;
      }
    }
  }
  for (; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      float* out = c + (size_t)i * ldc + j;
      const float v = dot_avx512(a + (size_t)i * lda, b + (size_t)j * ldb, (size_t)k);
      *out = beta == 0.f ? v : v + beta * *out;
    }
  }
}

}  // namespace

const KernelTable& avx512_kernels() {
  static const KernelTable table = {
      CpuIsa::kAvx512,   dot_avx512,      axpy_avx512,        rms_norm_avx512,
      softmax_avx512,    silu_mul_avx512, add_avx512,         f16_to_f32_avx512,
      bf16_to_f32_avx512, gemm_nt_avx512, exp_sum_avx512,
  };
  return table;
}

}  // namespace palu::backends::cpu
