// Shared inline helpers of the AVX2 translation units (kernels_avx2.cc, full_attention_avx2.cc,
// latent_attention_avx2.cc). Include only from files compiled with -mavx2 -mfma -mf16c: the
// intrinsics below need those flags, and nothing here may run unless detect_cpu_isa() ≥ kAvx2.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace palu::backends::cpu::avx2 {

// Lane mask for _mm256_maskload_ps / _mm256_maskstore_ps: lanes [0, r) set (r clamped to 0..8).
inline __m256i tail_mask(long r) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const int n = r <= 0 ? 0 : r >= 8 ? 8 : (int)r;
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes);
}

// Σ of the 8 lanes.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Largest of the 8 lanes.
inline float hmax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lane i of the result = Σ of the 8 lanes of v[i] (a transposing hadd tree: 7 hadds, 2 permutes
// and an add instead of 8 full reductions).
inline __m256 reduce8(const __m256* v) {
  const __m256 a0 = _mm256_hadd_ps(v[0], v[1]), a1 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 a2 = _mm256_hadd_ps(v[4], v[5]), a3 = _mm256_hadd_ps(v[6], v[7]);
  // b0 = [Σv0, Σv1, Σv2, Σv3] low and high halves separately; b1 the same for v4..v7
  const __m256 b0 = _mm256_hadd_ps(a0, a1), b1 = _mm256_hadd_ps(a2, a3);
  return _mm256_add_ps(_mm256_permute2f128_ps(b0, b1, 0x20), _mm256_permute2f128_ps(b0, b1, 0x31));
}

// Lane i of the result (i < 4) = Σ of the 8 lanes of v[i].
inline __m128 reduce4(__m256 v0, __m256 v1, __m256 v2, __m256 v3) {
  const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(v0, v1), _mm256_hadd_ps(v2, v3));
  return _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1));
}

// exp(x) on the float range (the kernels use it for x ≤ 0: softmax, silu): x = n·ln2 + r,
// |r| ≤ ln2/2 (Cody–Waite split of ln2), Cephes' degree-6 polynomial for exp(r), then 2^n built
// in the exponent field. Max relative error ≈ 2 ulp, as the AVX-512 kernels. x below
// −87.3 (where 2^n would leave the normal range) gives 0, as e^x does to within 1e-38; x above
// 88 gives e^88 (the softmax and silu never get there).
inline __m256 exp_ps(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f);
  const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);  // NaN and x < lo → 0
  x = _mm256_max_ps(x, lo);
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));  // n ≤ 127
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  // 2^n for n in [−126, 127]: (n + 127) << 23.
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

// 8 IEEE halves / bfloat16 bit patterns at src → 8 floats.
inline __m256 load_f16x8(const uint16_t* src) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
}
inline __m256 load_bf16x8(const uint16_t* src) {
  const __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
// The first n < 8 of them (the rest of the lanes 0), without reading past src + n.
inline __m256 load_f16_tail(const uint16_t* src, int n) {
  alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, src, sizeof(uint16_t) * (size_t)(n < 0 ? 0 : n));
  return load_f16x8(buf);
}
inline __m256 load_bf16_tail(const uint16_t* src, int n) {
  alignas(16) uint16_t buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::memcpy(buf, src, sizeof(uint16_t) * (size_t)(n < 0 ? 0 : n));
  return load_bf16x8(buf);
}

}  // namespace palu::backends::cpu::avx2
