// Device helpers shared by the latent decode kernels (latent_attention.cu for sm_80,
// latent_attention_sm90.cu for sm_90a): latent row decoding exactly as the CPU decodes it, and
// the cp.async wrappers. Not a public header; included by .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "backends/base/row_storage.h"

namespace palu::backends::cuda::detail {

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ float bf16_bits_to_float(uint32_t bits) { return __uint_as_float(bits << 16); }

// Code i of a little-endian bit string (B ≤ 8: at most two bytes), as the CPU's packed_code.
__device__ __forceinline__ uint32_t packed_code(const uint8_t* row, int i, int bits) {
  const int bit = i * bits;
  const int byte = bit >> 3;
  const int off = bit & 7;
  uint32_t v = row[byte];
  if (off + bits > 8) v |= (uint32_t)row[byte + 1] << 8;
  return (v >> off) & ((1u << bits) - 1u);
}

// Element i of one row, decoded exactly as the CPU (packed: q·scale then + zero, no FMA).
__device__ __forceinline__ float decode1(int stor, const uint8_t* row, int i, float scale, float zero) {
  switch (stor) {
    case (int)RowStorage::kF32: return reinterpret_cast<const float*>(row)[i];
    case (int)RowStorage::kF16: return __half2float(reinterpret_cast<const __half*>(row)[i]);
    case (int)RowStorage::kBF16: return bf16_bits_to_float(reinterpret_cast<const uint16_t*>(row)[i]);
    case (int)RowStorage::kQ8: return __fadd_rn(__fmul_rn((float)row[i], scale), zero);
    case (int)RowStorage::kQ4: return __fadd_rn(__fmul_rn((float)((row[i >> 1] >> ((i & 1) * 4)) & 15u), scale), zero);
    case (int)RowStorage::kQ3: return __fadd_rn(__fmul_rn((float)packed_code(row, i, 3), scale), zero);
    default: return __fadd_rn(__fmul_rn((float)((row[i >> 2] >> ((i & 3) * 2)) & 3u), scale), zero);
  }
}

// Elements i0..i0+7 (i0 % 8 == 0) of one row → 8 halves (for the MMA).
__device__ __forceinline__ uint4 decode8_half(int stor, const uint8_t* row, int i0, float scale, float zero) {
  float f[8];
  if (stor == (int)RowStorage::kQ4) {
    const uint32_t w = *reinterpret_cast<const uint32_t*>(row + i0 / 2);
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = __fadd_rn(__fmul_rn((float)((w >> (4 * j)) & 15u), scale), zero);
  } else if (stor == (int)RowStorage::kQ2) {
    const uint32_t w = *reinterpret_cast<const uint16_t*>(row + i0 / 4);
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = __fadd_rn(__fmul_rn((float)((w >> (2 * j)) & 3u), scale), zero);
  } else if (stor == (int)RowStorage::kQ3) {
    const uint8_t* b = row + i0 * 3 / 8;
    const uint32_t w = (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16);
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = __fadd_rn(__fmul_rn((float)((w >> (3 * j)) & 7u), scale), zero);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) f[j] = decode1(stor, row, i0 + j, scale, zero);
  }
  uint4 out;
  __half2* h = reinterpret_cast<__half2*>(&out);
#pragma unroll
  for (int j = 0; j < 4; ++j) h[j] = __floats2half2_rn(f[2 * j], f[2 * j + 1]);
  return out;
}

// q folded into one pair of B^K rows (or key-bias entries) of frequency i: a = q_i·b_i +
// q_{i+64}·b_{i+64}, b = q_{i+64}·b_i − q_i·b_{i+64} (fold_q_kernel and the sm_90a kernel's
// per-block fold compute M and α, β with it, so both give the same values).
__device__ __forceinline__ float2 fold_q_pair(float q0, float q1, float b0, float b1) {
  return make_float2(q0 * b0 + q1 * b1, q1 * b0 - q0 * b1);
}

// cos/sin of a non-negative f32 angle (the reference's rounded fl(t·inv_freq)): reduce by 2π in
// two FMA steps (|error| ≲ 2.5e-7), then the hardware sin/cos on [−π, π] (|error| ≤ 2^-21.4).
// The RoPE table kernel (sm_80 path) and the sm_90a kernel (in registers) share it: same bits.
__device__ __forceinline__ void rope_sincos(float x, float* s, float* c) {
  // k = rint(x / 2π) by the 1.5·2^23 shift (two adds on the FMA pipe: FRND runs on the quarter-rate
  // pipe that MUFU.SIN / COS need too); the same value as rintf for |x / 2π| < 2^22 (x ≤ 2.6e7)
  const float k = __fsub_rn(__fadd_rn(__fmul_rn(x, 0.159154943091895336f), 12582912.f), 12582912.f);
  float r = fmaf(-k, 6.28318548202514648f, x);
  r = fmaf(-k, -1.74845553146951720e-7f, r);
  __sincosf(r, s, c);
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(smem)), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

}  // namespace palu::backends::cuda::detail
