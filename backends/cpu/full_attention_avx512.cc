// AVX-512 building blocks of the full-cache decode attention (the driver is shared, in
// full_attention_scalar.cc). This translation unit alone is compiled with -mavx512f/bw/vl/dq,
// -mfma and -mf16c; nothing here runs unless detect_cpu_isa() returned kAvx512.
//
// scores: 16 (query head, token) dot products per pass (R heads × 16/R tokens), the K chunk
// converted to f32 in registers once and used by all R heads, the 16 accumulators reduced
// together by a transposing shuffle tree (45 shuffles/adds instead of 16 full reductions).
// accumulate: 64 output columns × up to 4 query heads in registers across the token loop.
// exp: Cephes-style range reduction and degree-6 polynomial (≤ 2 ulp on the softmax's range).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "backends/cpu/full_attention.h"

// GCC 12 warns that the deliberately undefined sources inside _mm512_shuffle_f32x4 and
// _mm512_reduce_add_ps are uninitialized; they are never read (full masks).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace palu::backends::cpu::detail {
namespace {

inline __mmask16 tail_mask(int r) {
  return r >= 16 ? (__mmask16)0xffff : r <= 0 ? (__mmask16)0 : (__mmask16)((1u << r) - 1u);
}

// 16 values (masked) of a row of storage S from element index i, as float32.
template <LatentStorage S>
inline __m512 load16(const void* row, size_t i, __mmask16 m) {
  if constexpr (S == LatentStorage::kF32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + i);
  } else if constexpr (S == LatentStorage::kF16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + i));
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// The same, 16 values without a mask (lets the compiler fold the load into the conversion).
template <LatentStorage S>
inline __m512 load16(const void* row, size_t i) {
  if constexpr (S == LatentStorage::kF32) {
    return _mm512_loadu_ps(static_cast<const float*>(row) + i);
  } else if constexpr (S == LatentStorage::kF16) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(
        reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + i)));
  } else {
    const __m256i h =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
}

// Masked when kMasked, else a full 16-value load.
template <LatentStorage S, bool kMasked>
inline __m512 load16m(const void* row, size_t i, __mmask16 m) {
  if constexpr (kMasked) {
    return load16<S>(row, i, m);
  } else {
    return load16<S>(row, i);
  }
}

template <LatentStorage S>
constexpr int kElemBytes = S == LatentStorage::kF32 ? 4 : 2;

// Lane i of the result = Σ of the 16 lanes of v[i].
inline __m512 reduce16(const __m512* v) {
  __m512 a[8], b[4], c[2];
  // [x0+x2, y0+y2, x1+x3, y1+y3] per 128-bit lane, x = v[2k], y = v[2k+1]
  for (int k = 0; k < 8; ++k)
    a[k] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * k], v[2 * k + 1]),
                         _mm512_unpackhi_ps(v[2 * k], v[2 * k + 1]));
  // [v4m, v4m+1, v4m+2, v4m+3] partial sums of each 128-bit lane
  for (int m = 0; m < 4; ++m) {
    const __m512d x = _mm512_castps_pd(a[2 * m]), y = _mm512_castps_pd(a[2 * m + 1]);
    b[m] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // [b0 L0+L1, b0 L2+L3, b1 L0+L1, b1 L2+L3]
  for (int n = 0; n < 2; ++n)
    c[n] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * n], b[2 * n + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(b[2 * n], b[2 * n + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// acc[r·TT + tt] += q_r[c, c+16) · row_tt[c, c+16) for one 16-value chunk.
template <LatentStorage S, int R, int TT, bool kMasked>
inline void dot_chunk(const uint8_t* const* rp, const float* q, int d, int c, __mmask16 m,
                      __m512* acc) {
  __m512 qv[R];
  for (int r = 0; r < R; ++r) {
    qv[r] = kMasked ? _mm512_maskz_loadu_ps(m, q + (size_t)r * d + c)
                    : _mm512_loadu_ps(q + (size_t)r * d + c);
  }
  for (int tt = 0; tt < TT; ++tt) {
    const __m512 kv = load16m<S, kMasked>(rp[tt], (size_t)c, m);
    for (int r = 0; r < R; ++r) acc[r * TT + tt] = _mm512_fmadd_ps(qv[r], kv, acc[r * TT + tt]);
  }
}

// R query heads × TT tokens per pass (R·TT = 16). Token tails reuse the last row and drop the
// extra lanes.
template <LatentStorage S, int R>
void scores_tile(const void* const* rows, int nt, size_t off, const float* q, int d, float scale,
                 float* s, int lds) {
  constexpr int TT = 16 / R;
  alignas(64) float out[16];
  for (int t0 = 0; t0 < nt; t0 += TT) {
    const int nv = std::min(TT, nt - t0);
    const uint8_t* rp[TT];
    for (int tt = 0; tt < TT; ++tt)
      rp[tt] = static_cast<const uint8_t*>(rows[t0 + std::min(tt, nv - 1)]) + off * kElemBytes<S>;
    __m512 acc[16];
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    int c = 0;
    for (; c + 16 <= d; c += 16) dot_chunk<S, R, TT, false>(rp, q, d, c, 0xffff, acc);
    if (c < d) dot_chunk<S, R, TT, true>(rp, q, d, c, tail_mask(d - c), acc);
    _mm512_store_ps(out, _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(scale)));
    for (int r = 0; r < R; ++r)
      for (int tt = 0; tt < nv; ++tt) s[(size_t)r * lds + t0 + tt] = out[r * TT + tt];
  }
}

template <LatentStorage S>
void scores_s(const void* const* rows, int nt, size_t off, const float* q, int nq, int d,
              float scale, float* s, int lds) {
  int r0 = 0;
  while (r0 < nq) {
    const int left = nq - r0;
    const float* qr = q + (size_t)r0 * d;
    float* sr = s + (size_t)r0 * lds;
    if (left >= 16) {
      scores_tile<S, 16>(rows, nt, off, qr, d, scale, sr, lds);
      r0 += 16;
    } else if (left >= 8) {
      scores_tile<S, 8>(rows, nt, off, qr, d, scale, sr, lds);
      r0 += 8;
    } else if (left >= 4) {
      scores_tile<S, 4>(rows, nt, off, qr, d, scale, sr, lds);
      r0 += 4;
    } else if (left >= 2) {
      scores_tile<S, 2>(rows, nt, off, qr, d, scale, sr, lds);
      r0 += 2;
    } else {
      scores_tile<S, 1>(rows, nt, off, qr, d, scale, sr, lds);
      r0 += 1;
    }
  }
}

void scores_avx512(LatentStorage st, const void* const* rows, int nt, size_t off, const float* q,
                   int nq, int d, float scale, float* s, int lds) {
  switch (st) {
    case LatentStorage::kF32:
      return scores_s<LatentStorage::kF32>(rows, nt, off, q, nq, d, scale, s, lds);
    case LatentStorage::kF16:
      return scores_s<LatentStorage::kF16>(rows, nt, off, q, nq, d, scale, s, lds);
    default:
      return scores_s<LatentStorage::kBF16>(rows, nt, off, q, nq, d, scale, s, lds);
  }
}

// exp(x) for x ≤ 0 (the softmax's range; larger x also works up to 88).
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-104.f));  // exp(−104) underflows to 0 through scalef
  x = _mm512_min_ps(x, _mm512_set1_ps(88.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

float exp_sum_avx512(float* x, int n, float m) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm));
    _mm512_mask_storeu_ps(x + i, k, e);
    sum = _mm512_mask_add_ps(sum, k, sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// acc[r, c..c+64) for R ≤ 4 query heads, held in registers across the token loop.
template <LatentStorage S, int R, bool kMasked>
void accumulate_tile(const void* const* rows, int nt, size_t off, const float* p, int ldp,
                     const float* corr, int d, int c, float* acc) {
  __mmask16 m[4];
  for (int v = 0; v < 4; ++v) m[v] = tail_mask(d - c - 16 * v);
  __m512 a[R][4];
  for (int r = 0; r < R; ++r) {
    const __m512 cr = _mm512_set1_ps(corr[r]);
    for (int v = 0; v < 4; ++v)
      a[r][v] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m[v], acc + (size_t)r * d + c + 16 * v), cr);
  }
  for (int t = 0; t < nt; ++t) {
    __m512 x[4];
    for (int v = 0; v < 4; ++v)
      x[v] = load16m<S, kMasked>(rows[t], off + (size_t)(c + 16 * v), m[v]);
    for (int r = 0; r < R; ++r) {
      const __m512 pt = _mm512_set1_ps(p[(size_t)r * ldp + t]);
      for (int v = 0; v < 4; ++v) a[r][v] = _mm512_fmadd_ps(pt, x[v], a[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v)
      _mm512_mask_storeu_ps(acc + (size_t)r * d + c + 16 * v, m[v], a[r][v]);
}

template <LatentStorage S, bool kMasked>
void accumulate_cols(const void* const* rows, int nt, size_t off, const float* p, int ldp,
                     const float* corr, int nq, int d, int c, float* acc) {
  for (int r0 = 0; r0 < nq; r0 += 4) {
    const float* pr = p + (size_t)r0 * ldp;
    float* ar = acc + (size_t)r0 * d;
    switch (std::min(4, nq - r0)) {
      case 4:
        accumulate_tile<S, 4, kMasked>(rows, nt, off, pr, ldp, corr + r0, d, c, ar);
        break;
      case 3:
        accumulate_tile<S, 3, kMasked>(rows, nt, off, pr, ldp, corr + r0, d, c, ar);
        break;
      case 2:
        accumulate_tile<S, 2, kMasked>(rows, nt, off, pr, ldp, corr + r0, d, c, ar);
        break;
      default:
        accumulate_tile<S, 1, kMasked>(rows, nt, off, pr, ldp, corr + r0, d, c, ar);
    }
  }
}

template <LatentStorage S>
void accumulate_s(const void* const* rows, int nt, size_t off, const float* p, int ldp,
                  const float* corr, int nq, int d, float* acc) {
  int c = 0;
  for (; c + 64 <= d; c += 64)
    accumulate_cols<S, false>(rows, nt, off, p, ldp, corr, nq, d, c, acc);
  if (c < d) accumulate_cols<S, true>(rows, nt, off, p, ldp, corr, nq, d, c, acc);
}

void accumulate_avx512(LatentStorage st, const void* const* rows, int nt, size_t off,
                       const float* p, int ldp, const float* corr, int nq, int d, float* acc) {
  switch (st) {
    case LatentStorage::kF32:
      return accumulate_s<LatentStorage::kF32>(rows, nt, off, p, ldp, corr, nq, d, acc);
    case LatentStorage::kF16:
      return accumulate_s<LatentStorage::kF16>(rows, nt, off, p, ldp, corr, nq, d, acc);
    default:
      return accumulate_s<LatentStorage::kBF16>(rows, nt, off, p, ldp, corr, nq, d, acc);
  }
}

}  // namespace

const FullAttentionPrims& full_prims_avx512() {
  static const FullAttentionPrims prims{scores_avx512, exp_sum_avx512, accumulate_avx512};
  return prims;
}

}  // namespace palu::backends::cpu::detail
