// AVX2 kernels. This translation unit alone is compiled with -mavx2, -mfma and -mf16c; nothing
// here runs unless detect_cpu_isa() returned kAvx2 or better.
//
// gemm_nt (the block GEMM the prefill attention runs on, C = A·Bᵀ with A and B both k-contiguous)
// packs a panel of 16 rows of B transposed ([k, 16], 8×8 register transposes) so the micro-kernel
// is an outer product: 6 rows of A × 16 columns of C in 12 YMM accumulators, one broadcast of
// A and two loads of the packed panel per k step (12 FMAs per 3 loads), k in panels of 256 so the
// packed block (16 KiB) stays in L1. Fewer than 4 rows of A do not repay the packing: they take
// dot products, 2 rows × 4 columns at a time, reduced together.
#include <algorithm>
#include <cmath>

#include "backends/cpu/kernels.h"
#include "backends/cpu/simd_avx2.h"

namespace palu::backends::cpu {
namespace {

using avx2::exp_ps;
using avx2::hmax;
using avx2::hsum;
using avx2::tail_mask;

float dot_avx2(const float* a, const float* b, size_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  }
  if (i < n) {
    const __m256i m = tail_mask((long)(n - i));
    acc1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), acc1);
  }
  return hsum(_mm256_add_ps(acc0, acc1));
}

void axpy_avx2(float alpha, const float* x, float* y, size_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  }
  if (i < n) {
    const __m256i m = tail_mask((long)(n - i));
    _mm256_maskstore_ps(
        y + i, m, _mm256_fmadd_ps(va, _mm256_maskload_ps(x + i, m), _mm256_maskload_ps(y + i, m)));
  }
}

void rms_norm_avx2(const float* x, const float* w, float eps, float* y, size_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
    acc0 = _mm256_fmadd_ps(v0, v0, acc0);
    acc1 = _mm256_fmadd_ps(v1, v1, acc1);
  }
  if (i < n) {
    for (; i < n; i += 8) {
      const __m256 v = _mm256_maskload_ps(x + i, tail_mask((long)(n - i)));
      acc0 = _mm256_fmadd_ps(v, v, acc0);
    }
  }
  const float ss = hsum(_mm256_add_ps(acc0, acc1));
  const float inv = 1.0f / std::sqrt(ss / (float)n + eps);
  const __m256 vi = _mm256_set1_ps(inv);
  i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(
        y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vi), _mm256_loadu_ps(w + i)));
  }
  if (i < n) {
    const __m256i m = tail_mask((long)(n - i));
    _mm256_maskstore_ps(y + i, m,
                        _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(x + i, m), vi),
                                      _mm256_maskload_ps(w + i, m)));
  }
}

float exp_sum_avx2(float* x, size_t n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 sum = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (i < n) {
    const __m256i k = tail_mask((long)(n - i));
    const __m256 e = _mm256_and_ps(exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), vm)),
                                   _mm256_castsi256_ps(k));
    _mm256_maskstore_ps(x + i, k, e);
    sum = _mm256_add_ps(sum, e);
  }
  return hsum(sum);
}

void softmax_avx2(float* x, size_t n) {
  if (n == 0) return;
  __m256 vmax = _mm256_set1_ps(-INFINITY);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
  float mx = hmax(vmax);
  for (; i < n; ++i) mx = std::max(mx, x[i]);
  const __m256 inv = _mm256_set1_ps(1.0f / exp_sum_avx2(x, n, mx));
  i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
  if (i < n) {
    const __m256i m = tail_mask((long)(n - i));
    _mm256_maskstore_ps(x + i, m, _mm256_mul_ps(_mm256_maskload_ps(x + i, m), inv));
  }
}

void silu_mul_avx2(const float* gate, const float* up, float* y, size_t n) {
  const __m256 one = _mm256_set1_ps(1.0f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 s =
        _mm256_div_ps(g, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_storeu_ps(y + i, _mm256_mul_ps(s, _mm256_loadu_ps(up + i)));
  }
  if (i < n) {
    const __m256i m = tail_mask((long)(n - i));
    const __m256 g = _mm256_maskload_ps(gate + i, m);
    const __m256 s =
        _mm256_div_ps(g, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(_mm256_setzero_ps(), g))));
    _mm256_maskstore_ps(y + i, m, _mm256_mul_ps(s, _mm256_maskload_ps(up + i, m)));
  }
}

void add_avx2(const float* x, float* y, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
  }
  if (i < n) {
    const __m256i m = tail_mask((long)(n - i));
    _mm256_maskstore_ps(y + i, m,
                        _mm256_add_ps(_mm256_maskload_ps(y + i, m), _mm256_maskload_ps(x + i, m)));
  }
}

void f16_to_f32_avx2(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, avx2::load_f16x8(src + i));
  if (i < n) {
    _mm256_maskstore_ps(dst + i, tail_mask((long)(n - i)),
                        avx2::load_f16_tail(src + i, (int)(n - i)));
  }
}

void bf16_to_f32_avx2(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, avx2::load_bf16x8(src + i));
  if (i < n) {
    _mm256_maskstore_ps(dst + i, tail_mask((long)(n - i)),
                        avx2::load_bf16_tail(src + i, (int)(n - i)));
  }
}

// ---- gemm_nt --------------------------------------------------------------------------------

constexpr int kNR = 16;   // columns of C per packed panel (2 YMM)
constexpr int kMR = 6;    // rows of A per micro-tile (6 × 2 accumulators)
constexpr int kKC = 256;  // k per packed panel: 16 KiB, in L1
constexpr int kPackMinRows = 4;

// bp[p·16 + j] = B[j, p] for j < nr (rows of B), p < kc; columns j ≥ nr are 0.
void pack_b(const float* b, int ldb, int nr, int kc, float* bp) {
  for (int g = 0; g < kNR; g += 8) {
    const int rows = std::min(8, nr - g);
    float* dst = bp + g;
    if (rows <= 0) {
      for (int p = 0; p < kc; ++p) _mm256_storeu_ps(dst + (size_t)p * kNR, _mm256_setzero_ps());
      continue;
    }
    const float* src = b + (size_t)g * ldb;
    int p = 0;
    if (rows == 8) {
      for (; p + 8 <= kc; p += 8) {
        __m256 r[8];
        for (int q = 0; q < 8; ++q) r[q] = _mm256_loadu_ps(src + (size_t)q * ldb + p);
        const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
        const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
        const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
        const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
        const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        float* d = dst + (size_t)p * kNR;
        _mm256_storeu_ps(d + 0 * kNR, _mm256_permute2f128_ps(s0, s4, 0x20));
        _mm256_storeu_ps(d + 1 * kNR, _mm256_permute2f128_ps(s1, s5, 0x20));
        _mm256_storeu_ps(d + 2 * kNR, _mm256_permute2f128_ps(s2, s6, 0x20));
        _mm256_storeu_ps(d + 3 * kNR, _mm256_permute2f128_ps(s3, s7, 0x20));
        _mm256_storeu_ps(d + 4 * kNR, _mm256_permute2f128_ps(s0, s4, 0x31));
        _mm256_storeu_ps(d + 5 * kNR, _mm256_permute2f128_ps(s1, s5, 0x31));
        _mm256_storeu_ps(d + 6 * kNR, _mm256_permute2f128_ps(s2, s6, 0x31));
        _mm256_storeu_ps(d + 7 * kNR, _mm256_permute2f128_ps(s3, s7, 0x31));
      }
    }
    for (; p < kc; ++p) {
      float* d = dst + (size_t)p * kNR;
      for (int q = 0; q < 8; ++q) d[q] = q < rows ? src[(size_t)q * ldb + p] : 0.f;
    }
  }
}

// One row of a micro-tile: C[0, nr) (nr ≤ 16) from the two accumulators. first: = acc + beta·C
// (C not read when beta is 0); later k panels: += acc.
inline void store_row(float* cr, __m256 v0, __m256 v1, int nr, float beta, bool first) {
  const __m256 vb = _mm256_set1_ps(beta);
  if (nr >= 16) {
    if (!first) {
      v0 = _mm256_add_ps(_mm256_loadu_ps(cr), v0);
      v1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), v1);
    } else if (beta != 0.f) {
      v0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr), v0);
      v1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(cr + 8), v1);
    }
    _mm256_storeu_ps(cr, v0);
    _mm256_storeu_ps(cr + 8, v1);
    return;
  }
  const __m256i m0 = tail_mask(nr), m1 = tail_mask(nr - 8);
  if (!first) {
    v0 = _mm256_add_ps(_mm256_maskload_ps(cr, m0), v0);
    v1 = _mm256_add_ps(_mm256_maskload_ps(cr + 8, m1), v1);
  } else if (beta != 0.f) {
    v0 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr, m0), v0);
    v1 = _mm256_fmadd_ps(vb, _mm256_maskload_ps(cr + 8, m1), v1);
  }
  _mm256_maskstore_ps(cr, m0, v0);
  _mm256_maskstore_ps(cr + 8, m1, v1);
}

// C[MR, nr] (first panel: = acc + beta·C; later panels: += acc), A rows at a (stride lda), the
// panel packed at bp, kc steps. The loops over MR are unrolled so the 2·MR accumulators live in
// registers (GCC keeps an array it cannot fully unroll in memory: a store per FMA).
template <int MR>
void micro_tile(int kc, const float* a, int lda, const float* bp, float* c, int ldc, int nr,
                float beta, bool first) {
  __m256 acc0[MR], acc1[MR];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  for (int p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(bp + (size_t)p * kNR);
    const __m256 b1 = _mm256_load_ps(bp + (size_t)p * kNR + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + (size_t)r * lda + p);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) store_row(c + (size_t)r * ldc, acc0[r], acc1[r], nr, beta, first);
}

inline void store_c(float* out, float v, float beta) {
  *out = beta == 0.f ? v : v + beta * *out;
}

// R ≤ 2 rows × 4 columns of dot products over k, reduced together.
template <int R>
void dot_rows(int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc,
              float beta) {
  const int kv = k & ~7;
  const __m256i km = tail_mask(k - kv);
  int j = 0;
  for (; j + 4 <= n; j += 4) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r)
      for (int s = 0; s < 4; ++s) acc[r][s] = _mm256_setzero_ps();
    const float* b0 = b + (size_t)j * ldb;
    for (int p = 0; p < kv; p += 8) {
      __m256 bv[4];
      for (int s = 0; s < 4; ++s) bv[s] = _mm256_loadu_ps(b0 + (size_t)s * ldb + p);
      for (int r = 0; r < R; ++r) {
        const __m256 av = _mm256_loadu_ps(a + (size_t)r * lda + p);
        for (int s = 0; s < 4; ++s) acc[r][s] = _mm256_fmadd_ps(av, bv[s], acc[r][s]);
      }
    }
    if (kv < k) {
      __m256 bv[4];
      for (int s = 0; s < 4; ++s) bv[s] = _mm256_maskload_ps(b0 + (size_t)s * ldb + kv, km);
      for (int r = 0; r < R; ++r) {
        const __m256 av = _mm256_maskload_ps(a + (size_t)r * lda + kv, km);
        for (int s = 0; s < 4; ++s) acc[r][s] = _mm256_fmadd_ps(av, bv[s], acc[r][s]);
      }
    }
    for (int r = 0; r < R; ++r) {
      alignas(16) float v[4];
      _mm_store_ps(v, avx2::reduce4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
      for (int s = 0; s < 4; ++s) store_c(c + (size_t)r * ldc + j + s, v[s], beta);
    }
  }
  for (; j < n; ++j)
    for (int r = 0; r < R; ++r)
      store_c(c + (size_t)r * ldc + j,
              dot_avx2(a + (size_t)r * lda, b + (size_t)j * ldb, (size_t)k), beta);
}

void gemm_nt_avx2(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                  int ldc, float beta) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) store_c(c + (size_t)i * ldc + j, 0.f, beta);
    return;
  }
  if (m < kPackMinRows) {
    int i = 0;
    for (; i + 2 <= m; i += 2)
      dot_rows<2>(n, k, a + (size_t)i * lda, lda, b, ldb, c + (size_t)i * ldc, ldc, beta);
    if (i < m) dot_rows<1>(n, k, a + (size_t)i * lda, lda, b, ldb, c + (size_t)i * ldc, ldc, beta);
    return;
  }
  alignas(32) float bp[kKC * kNR];
  for (int j0 = 0; j0 < n; j0 += kNR) {
    const int nr = std::min(kNR, n - j0);
    for (int p0 = 0; p0 < k; p0 += kKC) {
      const int kc = std::min(kKC, k - p0);
      pack_b(b + (size_t)j0 * ldb + p0, ldb, nr, kc, bp);
      const bool first = p0 == 0;
      const float* ap = a + p0;
      float* cp = c + j0;
      int i = 0;
      for (; i + kMR <= m; i += kMR)
        micro_tile<kMR>(kc, ap + (size_t)i * lda, lda, bp, cp + (size_t)i * ldc, ldc, nr, beta,
                        first);
      const float* ai = ap + (size_t)i * lda;
      float* ci = cp + (size_t)i * ldc;
      switch (m - i) {
        case 5:
          micro_tile<5>(kc, ai, lda, bp, ci, ldc, nr, beta, first);
          break;
        case 4:
          micro_tile<4>(kc, ai, lda, bp, ci, ldc, nr, beta, first);
          break;
        case 3:
          micro_tile<3>(kc, ai, lda, bp, ci, ldc, nr, beta, first);
          break;
        case 2:
          micro_tile<2>(kc, ai, lda, bp, ci, ldc, nr, beta, first);
          break;
        case 1:
          micro_tile<1>(kc, ai, lda, bp, ci, ldc, nr, beta, first);
          break;
        default:
          break;
      }
    }
  }
}

}  // namespace

const KernelTable& avx2_kernels() {
  static const KernelTable table = {
      CpuIsa::kAvx2, dot_avx2,        axpy_avx2,        rms_norm_avx2, softmax_avx2, silu_mul_avx2,
      add_avx2,      f16_to_f32_avx2, bf16_to_f32_avx2, gemm_nt_avx2,  exp_sum_avx2,
  };
  return table;
}

}  // namespace palu::backends::cpu
