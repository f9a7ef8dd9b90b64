// AVX2 building blocks of the fused latent decode attention (the driver is shared, in
// latent_attention_scalar.cc). This translation unit alone is compiled with -mavx2, -mfma and
// -mf16c; nothing here runs unless detect_cpu_isa() returned kAvx2 or better.
//
// The AVX-512 file's structure at 8 lanes: the key rebuild GEMM keeps 6 rows × 16 columns of C
// in 12 YMM accumulators; packed codes of B ≤ 4 bits are unpacked 8 at a time from one 32-bit
// word with per-lane variable shifts.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "backends/cpu/latent_attention.h"
#include "backends/cpu/simd_avx2.h"

namespace palu::backends::cpu::detail {
namespace {

using avx2::tail_mask;

inline uint32_t packed_code(const uint8_t* row, int i, int bits) {
  const size_t bit = (size_t)i * (size_t)bits;
  const size_t byte = bit >> 3;
  const unsigned off = (unsigned)(bit & 7);
  uint32_t v = row[byte];
  if (off + (unsigned)bits > 8) v |= (uint32_t)row[byte + 1] << 8;
  return (v >> off) & ((1u << bits) - 1u);
}

// 8 codes of B ≤ 4 bits starting at a byte boundary: the 32-bit word x holds them in its low
// 8·B bits; lane l gets (x >> l·B) & mask.
inline __m256 unpack8(uint32_t x, int bits) {
  const __m256i shifts =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(bits));
  const __m256i v = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)x), shifts),
                                     _mm256_set1_epi32((1 << bits) - 1));
  return _mm256_cvtepi32_ps(v);
}

void decode_rows_avx2(const LatentRows& r, int t0, int n, float* out) {
  const size_t row_bytes = latent_row_bytes(r.storage, r.rank);
  const size_t stride = r.row_stride_bytes != 0 ? r.row_stride_bytes : row_bytes;
  const int bits = latent_storage_bits(r.storage);
  const int rank = r.rank;
  for (int t = 0; t < n; ++t) {
    const uint8_t* row = static_cast<const uint8_t*>(r.rows) + (size_t)(t0 + t) * stride;
    float* o = out + (size_t)t * rank;
    int i = 0;
    switch (r.storage) {
      case LatentStorage::kF32:
        std::memcpy(o, row, (size_t)rank * 4);
        break;
      case LatentStorage::kF16: {
        const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
        for (; i + 8 <= rank; i += 8) _mm256_storeu_ps(o + i, avx2::load_f16x8(h + i));
        if (i < rank)
          _mm256_maskstore_ps(o + i, tail_mask(rank - i), avx2::load_f16_tail(h + i, rank - i));
        break;
      }
      case LatentStorage::kBF16: {
        const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
        for (; i + 8 <= rank; i += 8) _mm256_storeu_ps(o + i, avx2::load_bf16x8(h + i));
        if (i < rank)
          _mm256_maskstore_ps(o + i, tail_mask(rank - i), avx2::load_bf16_tail(h + i, rank - i));
        break;
      }
      default: {
        const float scale = r.scale[t0 + t], zero = r.zero[t0 + t];
        const __m256 vs = _mm256_set1_ps(scale), vz = _mm256_set1_ps(zero);
        if (bits == 8) {
          for (; i + 8 <= rank; i += 8) {
            const __m256 c = _mm256_cvtepi32_ps(
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + i))));
            _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_mul_ps(c, vs), vz));
          }
        } else {
          // 8 codes = B bytes, always starting on a byte boundary; read 4 bytes while they stay
          // inside the row.
          for (; i + 8 <= rank && (size_t)i * bits / 8 + 4 <= row_bytes; i += 8) {
            uint32_t x;
            std::memcpy(&x, row + (size_t)i * bits / 8, 4);
            _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_mul_ps(unpack8(x, bits), vs), vz));
          }
        }
        for (; i < rank; ++i) o[i] = std::fma((float)packed_code(row, i, bits), scale, zero);
      }
    }
  }
}

// C[MR rows, n] = A[MR, k] · B[k, n], 16 columns at a time.
template <int MR>
void gemm_rows(int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  for (int j = 0; j < n; j += 16) {
    const __m256i m0 = tail_mask(n - j), m1 = tail_mask(n - j - 8);
    const bool full = j + 16 <= n;
    __m256 acc0[MR], acc1[MR];
    for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
    if (full) {
      for (int p = 0; p < k; ++p) {
        const float* bp = b + (size_t)p * ldb + j;
        const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
        for (int r = 0; r < MR; ++r) {
          const __m256 av = _mm256_broadcast_ss(a + (size_t)r * lda + p);
          acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
          acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
        }
      }
    } else {
      for (int p = 0; p < k; ++p) {
        const float* bp = b + (size_t)p * ldb + j;
        const __m256 b0 = _mm256_maskload_ps(bp, m0), b1 = _mm256_maskload_ps(bp + 8, m1);
        for (int r = 0; r < MR; ++r) {
          const __m256 av = _mm256_broadcast_ss(a + (size_t)r * lda + p);
          acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
          acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
        }
      }
    }
    for (int r = 0; r < MR; ++r) {
      _mm256_maskstore_ps(c + (size_t)r * ldc + j, m0, acc0[r]);
      _mm256_maskstore_ps(c + (size_t)r * ldc + j + 8, m1, acc1[r]);
    }
  }
}

void gemm_nn_avx2(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                  int ldc) {
  int i = 0;
  for (; i + 6 <= m; i += 6)
    gemm_rows<6>(n, k, a + (size_t)i * lda, lda, b, ldb, c + (size_t)i * ldc, ldc);
  const float* ai = a + (size_t)i * lda;
  float* ci = c + (size_t)i * ldc;
  switch (m - i) {
    case 5:
      gemm_rows<5>(n, k, ai, lda, b, ldb, ci, ldc);
      break;
    case 4:
      gemm_rows<4>(n, k, ai, lda, b, ldb, ci, ldc);
      break;
    case 3:
      gemm_rows<3>(n, k, ai, lda, b, ldb, ci, ldc);
      break;
    case 2:
      gemm_rows<2>(n, k, ai, lda, b, ldb, ci, ldc);
      break;
    case 1:
      gemm_rows<1>(n, k, ai, lda, b, ldb, ci, ldc);
      break;
    default:
      break;
  }
}

void rope_avx2(float* x, int heads, int d_h, const float* cs, const float* sn) {
  const int half = d_h / 2;
  for (int h = 0; h < heads; ++h) {
    float* v = x + (size_t)h * d_h;
    for (int i = 0; i < half; i += 8) {
      const __m256i m = tail_mask(half - i);
      const __m256 x0 = _mm256_maskload_ps(v + i, m), x1 = _mm256_maskload_ps(v + i + half, m);
      const __m256 c = _mm256_maskload_ps(cs + i, m), s = _mm256_maskload_ps(sn + i, m);
      _mm256_maskstore_ps(v + i, m, _mm256_fmsub_ps(x0, c, _mm256_mul_ps(x1, s)));
      _mm256_maskstore_ps(v + i + half, m, _mm256_fmadd_ps(x1, c, _mm256_mul_ps(x0, s)));
    }
  }
}

float dot_avx2(const float* a, const float* b, int n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i < n; i += 8) {
    const __m256i m = tail_mask(n - i);
    acc0 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), acc0);
  }
  return avx2::hsum(_mm256_add_ps(acc0, acc1));
}

// y = y·c + Σ_t p[t]·x[t, :], 32 outputs held in registers across the token loop.
void scale_accumulate_avx2(float c, const float* p, int nt, const float* x, int ldx, float* y,
                           int n) {
  const __m256 vc = _mm256_set1_ps(c);
  for (int i = 0; i < n; i += 32) {
    __m256i m[4];
    __m256 acc[4];
    for (int v = 0; v < 4; ++v) {
      m[v] = tail_mask(n - i - 8 * v);
      acc[v] = _mm256_mul_ps(_mm256_maskload_ps(y + i + 8 * v, m[v]), vc);
    }
    if (i + 32 <= n) {
      for (int t = 0; t < nt; ++t) {
        const __m256 pt = _mm256_set1_ps(p[t]);
        const float* xt = x + (size_t)t * ldx + i;
        for (int v = 0; v < 4; ++v)
          acc[v] = _mm256_fmadd_ps(pt, _mm256_loadu_ps(xt + 8 * v), acc[v]);
      }
    } else {
      for (int t = 0; t < nt; ++t) {
        const __m256 pt = _mm256_set1_ps(p[t]);
        const float* xt = x + (size_t)t * ldx + i;
        for (int v = 0; v < 4; ++v)
          acc[v] = _mm256_fmadd_ps(pt, _mm256_maskload_ps(xt + 8 * v, m[v]), acc[v]);
      }
    }
    for (int v = 0; v < 4; ++v) _mm256_maskstore_ps(y + i + 8 * v, m[v], acc[v]);
  }
}

}  // namespace

const LatentAttentionPrims& latent_prims_avx2() {
  static const LatentAttentionPrims prims{decode_rows_avx2, gemm_nn_avx2, rope_avx2, dot_avx2,
                                          scale_accumulate_avx2};
  return prims;
}

}  // namespace palu::backends::cpu::detail
