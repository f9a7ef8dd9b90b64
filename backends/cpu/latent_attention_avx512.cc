// AVX-512 building blocks of the fused latent decode attention (the driver is shared, in
// latent_attention_scalar.cc). This translation unit alone is compiled with -mavx512f/bw/vl/dq,
// -mfma and -mf16c; nothing here runs unless detect_cpu_isa() returned kAvx512.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backends/cpu/latent_attention.h"

namespace palu::backends::cpu::detail {
namespace {

inline __mmask16 tail_mask(int r) {
  return r >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << r) - 1u);
}

inline uint32_t packed_code(const uint8_t* row, int i, int bits) {
  const size_t bit = (size_t)i * (size_t)bits;
  const size_t byte = bit >> 3;
  const unsigned off = (unsigned)(bit & 7);
  uint32_t v = row[byte];
  if (off + (unsigned)bits > 8) v |= (uint32_t)row[byte + 1] << 8;
  return (v >> off) & ((1u << bits) - 1u);
}

// 16 codes of B ≤ 4 bits starting at a byte boundary: the 64-bit word x holds them in its low
// 16·B bits; lane l gets (x >> l·B) & mask.
inline __m512i unpack16(uint64_t x, int bits) {
  const __m512i vx = _mm512_set1_epi64((long long)x);
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  const __m512i vb = _mm512_set1_epi64(bits);
  const __m512i sh_lo = _mm512_mullo_epi64(lanes, vb);
  const __m512i sh_hi = _mm512_add_epi64(sh_lo, _mm512_set1_epi64(8 * bits));
  const __m512i mask = _mm512_set1_epi64((1ll << bits) - 1);
  const __m256i lo = _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srlv_epi64(vx, sh_lo), mask));
  const __m256i hi = _mm512_cvtepi64_epi32(_mm512_and_si512(_mm512_srlv_epi64(vx, sh_hi), mask));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

void decode_rows_avx512(const LatentRows& r, int t0, int n, float* out) {
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
      case LatentStorage::kF16:
        for (; i < rank; i += 16) {
          const __mmask16 m = tail_mask(rank - i);
          const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * (size_t)i);
          _mm512_mask_storeu_ps(o + i, m, _mm512_cvtph_ps(h));
        }
        break;
      case LatentStorage::kBF16:
        for (; i < rank; i += 16) {
          const __mmask16 m = tail_mask(rank - i);
          const __m256i h = _mm256_maskz_loadu_epi16(m, row + 2 * (size_t)i);
          _mm512_mask_storeu_ps(
              o + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
        }
        break;
      default: {
        const float scale = r.scale[t0 + t], zero = r.zero[t0 + t];
        const __m512 vs = _mm512_set1_ps(scale), vz = _mm512_set1_ps(zero);
        if (bits == 8) {
          for (; i < rank; i += 16) {
            const __mmask16 m = tail_mask(rank - i);
            const __m512 c =
                _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, row + i)));
            _mm512_mask_storeu_ps(o + i, m, _mm512_add_ps(_mm512_mul_ps(c, vs), vz));
          }
        } else {
          // 16 codes = 2·B bytes, always starting on a byte boundary; read 8 bytes while they
          // stay inside the row, finish with the scalar unpacking.
          for (; i + 16 <= rank && (size_t)i * bits / 8 + 8 <= row_bytes; i += 16) {
            uint64_t x;
            std::memcpy(&x, row + (size_t)i * bits / 8, 8);
            const __m512 c = _mm512_cvtepi32_ps(unpack16(x, bits));
            _mm512_storeu_ps(o + i, _mm512_add_ps(_mm512_mul_ps(c, vs), vz));
          }
          for (; i < rank; ++i) o[i] = std::fma((float)packed_code(row, i, bits), scale, zero);
        }
      }
    }
  }
}

// C[MR rows, n] = A[MR, k] · B[k, n], 32 columns at a time.
template <int MR>
void gemm_rows(int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  for (int j = 0; j < n; j += 32) {
    const __mmask16 m0 = tail_mask(n - j), m1 = tail_mask(n - j - 16 > 0 ? n - j - 16 : 0);
    __m512 acc0[MR], acc1[MR];
    for (int r = 0; r < MR; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int p = 0; p < k; ++p) {
      const float* bp = b + (size_t)p * ldb + j;
      const __m512 b0 = _mm512_maskz_loadu_ps(m0, bp);
      const __m512 b1 = _mm512_maskz_loadu_ps(m1, bp + 16);
      for (int r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[(size_t)r * lda + p]);
        acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
      }
    }
    for (int r = 0; r < MR; ++r) {
      _mm512_mask_storeu_ps(c + (size_t)r * ldc + j, m0, acc0[r]);
      _mm512_mask_storeu_ps(c + (size_t)r * ldc + j + 16, m1, acc1[r]);
    }
  }
}

void gemm_nn_avx512(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                    int ldc) {
  int i = 0;
  for (; i + 8 <= m; i += 8)
    gemm_rows<8>(n, k, a + (size_t)i * lda, lda, b, ldb, c + (size_t)i * ldc, ldc);
  const float* ai = a + (size_t)i * lda;
  float* ci = c + (size_t)i * ldc;
  switch (m - i) {
    case 7:
      gemm_rows<7>(n, k, ai, lda, b, ldb, ci, ldc);
      break;
    case 6:
      gemm_rows<6>(n, k, ai, lda, b, ldb, ci, ldc);
      break;
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

void rope_avx512(float* x, int heads, int d_h, const float* cs, const float* sn) {
  const int half = d_h / 2;
  for (int h = 0; h < heads; ++h) {
    float* v = x + (size_t)h * d_h;
    for (int i = 0; i < half; i += 16) {
      const __mmask16 m = tail_mask(half - i);
      const __m512 x0 = _mm512_maskz_loadu_ps(m, v + i),
                   x1 = _mm512_maskz_loadu_ps(m, v + i + half);
      const __m512 c = _mm512_maskz_loadu_ps(m, cs + i), s = _mm512_maskz_loadu_ps(m, sn + i);
      _mm512_mask_storeu_ps(v + i, m, _mm512_fmsub_ps(x0, c, _mm512_mul_ps(x1, s)));
      _mm512_mask_storeu_ps(v + i + half, m, _mm512_fmadd_ps(x1, c, _mm512_mul_ps(x0, s)));
    }
  }
}

float dot_avx512(const float* a, const float* b, int n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

// y = y·c + Σ_t p[t]·x[t, :], 64 outputs held in registers across the token loop.
void scale_accumulate_avx512(float c, const float* p, int nt, const float* x, int ldx, float* y,
                             int n) {
  const __m512 vc = _mm512_set1_ps(c);
  for (int i = 0; i < n; i += 64) {
    __mmask16 m[4];
    __m512 acc[4];
    for (int v = 0; v < 4; ++v) {
      const int rem = n - i - 16 * v;
      m[v] = tail_mask(rem > 0 ? rem : 0);
      acc[v] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m[v], y + i + 16 * v), vc);
    }
    for (int t = 0; t < nt; ++t) {
      const __m512 pt = _mm512_set1_ps(p[t]);
      const float* xt = x + (size_t)t * ldx + i;
      for (int v = 0; v < 4; ++v)
        acc[v] = _mm512_fmadd_ps(pt, _mm512_maskz_loadu_ps(m[v], xt + 16 * v), acc[v]);
    }
    for (int v = 0; v < 4; ++v) _mm512_mask_storeu_ps(y + i + 16 * v, m[v], acc[v]);
  }
}

}  // namespace

const LatentAttentionPrims& latent_prims_avx512() {
  static const LatentAttentionPrims prims{decode_rows_avx512, gemm_nn_avx512, rope_avx512,
                                          dot_avx512, scale_accumulate_avx512};
  return prims;
}

}  // namespace palu::backends::cpu::detail
