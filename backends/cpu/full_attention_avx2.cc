// AVX2 building blocks of the full-cache decode attention (the driver is shared, in
// full_attention_scalar.cc). This translation unit alone is compiled with -mavx2, -mfma and
// -mf16c; nothing here runs unless detect_cpu_isa() returned kAvx2 or better.
//
// The AVX-512 file's structure at 8 lanes: scores take 8 (query head, token) dot products per
// pass (R heads × 8/R tokens), the K chunk converted to f32 in registers once and used by all R
// heads, the 8 accumulators reduced together by a transposing hadd tree; accumulate keeps 32
// output columns × up to 2 query heads in registers across the token loop; exp is the same
// Cephes-style polynomial (simd_avx2.h).
#include <algorithm>
#include <cstdint>

#include "backends/cpu/full_attention.h"
#include "backends/cpu/simd_avx2.h"

namespace palu::backends::cpu::detail {
namespace {

using avx2::tail_mask;

template <LatentStorage S>
constexpr int kElemBytes = S == LatentStorage::kF32 ? 4 : 2;

// 8 values of a row of storage S from element index i, as float32.
template <LatentStorage S>
inline __m256 load8(const void* row, size_t i) {
  if constexpr (S == LatentStorage::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(row) + i);
  } else if constexpr (S == LatentStorage::kF16) {
    return avx2::load_f16x8(static_cast<const uint16_t*>(row) + i);
  } else {
    return avx2::load_bf16x8(static_cast<const uint16_t*>(row) + i);
  }
}

// The first `rem` of them (rem < 8 when kMasked; the other lanes 0, nothing read past them).
template <LatentStorage S, bool kMasked>
inline __m256 load8m(const void* row, size_t i, int rem) {
  if constexpr (!kMasked) {
    return load8<S>(row, i);
  } else if constexpr (S == LatentStorage::kF32) {
    return _mm256_maskload_ps(static_cast<const float*>(row) + i, tail_mask(rem));
  } else if constexpr (S == LatentStorage::kF16) {
    return avx2::load_f16_tail(static_cast<const uint16_t*>(row) + i, rem);
  } else {
    return avx2::load_bf16_tail(static_cast<const uint16_t*>(row) + i, rem);
  }
}

// acc[r·TT + tt] += q_r[c, c+8) · row_tt[c, c+8) for one 8-value chunk.
template <LatentStorage S, int R, int TT, bool kMasked>
inline void dot_chunk(const uint8_t* const* rp, const float* q, int d, int c, int rem,
                      __m256* acc) {
  __m256 qv[R];
  for (int r = 0; r < R; ++r) {
    qv[r] = kMasked ? _mm256_maskload_ps(q + (size_t)r * d + c, tail_mask(rem))
                    : _mm256_loadu_ps(q + (size_t)r * d + c);
  }
  for (int tt = 0; tt < TT; ++tt) {
    const __m256 kv = load8m<S, kMasked>(rp[tt], (size_t)c, rem);
    for (int r = 0; r < R; ++r) acc[r * TT + tt] = _mm256_fmadd_ps(qv[r], kv, acc[r * TT + tt]);
  }
}

// R query heads × TT tokens per pass (R·TT = 8). Token tails reuse the last row and drop the
// extra lanes.
template <LatentStorage S, int R>
void scores_tile(const void* const* rows, int nt, size_t off, const float* q, int d, float scale,
                 float* s, int lds) {
  constexpr int TT = 8 / R;
  alignas(32) float out[8];
  for (int t0 = 0; t0 < nt; t0 += TT) {
    const int nv = std::min(TT, nt - t0);
    const uint8_t* rp[TT];
    for (int tt = 0; tt < TT; ++tt)
      rp[tt] = static_cast<const uint8_t*>(rows[t0 + std::min(tt, nv - 1)]) + off * kElemBytes<S>;
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= d; c += 8) dot_chunk<S, R, TT, false>(rp, q, d, c, 8, acc);
    if (c < d) dot_chunk<S, R, TT, true>(rp, q, d, c, d - c, acc);
    _mm256_store_ps(out, _mm256_mul_ps(avx2::reduce8(acc), _mm256_set1_ps(scale)));
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
    if (left >= 8) {
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

void scores_avx2(LatentStorage st, const void* const* rows, int nt, size_t off, const float* q,
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

float exp_sum_avx2(float* x, int n, float m) {
  const __m256 vm = _mm256_set1_ps(m);
  __m256 sum = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = avx2::exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
    _mm256_storeu_ps(x + i, e);
    sum = _mm256_add_ps(sum, e);
  }
  if (i < n) {
    const __m256i k = tail_mask(n - i);
    const __m256 e = _mm256_and_ps(avx2::exp_ps(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), vm)),
                                   _mm256_castsi256_ps(k));
    _mm256_maskstore_ps(x + i, k, e);
    sum = _mm256_add_ps(sum, e);
  }
  return avx2::hsum(sum);
}

constexpr int kColVecs = 4;  // 32 output columns per pass

// acc[r, c..c+32) for R ≤ 2 query heads, held in registers across the token loop.
template <LatentStorage S, int R, bool kMasked>
void accumulate_tile(const void* const* rows, int nt, size_t off, const float* p, int ldp,
                     const float* corr, int d, int c, float* acc) {
  int rem[kColVecs];
  __m256i m[kColVecs];
  for (int v = 0; v < kColVecs; ++v) {
    rem[v] = std::max(0, std::min(8, d - c - 8 * v));
    m[v] = tail_mask(rem[v]);
  }
  __m256 a[R][kColVecs];
  for (int r = 0; r < R; ++r) {
    const __m256 cr = _mm256_set1_ps(corr[r]);
    for (int v = 0; v < kColVecs; ++v)
      a[r][v] = _mm256_mul_ps(_mm256_maskload_ps(acc + (size_t)r * d + c + 8 * v, m[v]), cr);
  }
  for (int t = 0; t < nt; ++t) {
    __m256 x[kColVecs];
    for (int v = 0; v < kColVecs; ++v) {
      x[v] = kMasked && rem[v] == 0
                 ? _mm256_setzero_ps()
                 : load8m<S, kMasked>(rows[t], off + (size_t)(c + 8 * v), rem[v]);
    }
    for (int r = 0; r < R; ++r) {
      const __m256 pt = _mm256_set1_ps(p[(size_t)r * ldp + t]);
      for (int v = 0; v < kColVecs; ++v) a[r][v] = _mm256_fmadd_ps(pt, x[v], a[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < kColVecs; ++v)
      _mm256_maskstore_ps(acc + (size_t)r * d + c + 8 * v, m[v], a[r][v]);
}

template <LatentStorage S, bool kMasked>
void accumulate_cols(const void* const* rows, int nt, size_t off, const float* p, int ldp,
                     const float* corr, int nq, int d, int c, float* acc) {
  for (int r0 = 0; r0 < nq; r0 += 2) {
    const float* pr = p + (size_t)r0 * ldp;
    float* ar = acc + (size_t)r0 * d;
    if (nq - r0 >= 2) {
      accumulate_tile<S, 2, kMasked>(rows, nt, off, pr, ldp, corr + r0, d, c, ar);
    } else {
      accumulate_tile<S, 1, kMasked>(rows, nt, off, pr, ldp, corr + r0, d, c, ar);
    }
  }
}

template <LatentStorage S>
void accumulate_s(const void* const* rows, int nt, size_t off, const float* p, int ldp,
                  const float* corr, int nq, int d, float* acc) {
  int c = 0;
  for (; c + 8 * kColVecs <= d; c += 8 * kColVecs)
    accumulate_cols<S, false>(rows, nt, off, p, ldp, corr, nq, d, c, acc);
  if (c < d) accumulate_cols<S, true>(rows, nt, off, p, ldp, corr, nq, d, c, acc);
}

void accumulate_avx2(LatentStorage st, const void* const* rows, int nt, size_t off, const float* p,
                     int ldp, const float* corr, int nq, int d, float* acc) {
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

const FullAttentionPrims& full_prims_avx2() {
  static const FullAttentionPrims prims{scores_avx2, exp_sum_avx2, accumulate_avx2};
  return prims;
}

}  // namespace palu::backends::cpu::detail
