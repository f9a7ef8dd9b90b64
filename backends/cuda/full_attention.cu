// Flash-decoding over a full f16 cache (the baseline the latent kernel is measured against; see
// attention_cuda.h). One thread block = one KV head and one split of the token axis, 4 warps. A
// warp takes 8 tokens per step: each half-warp one token at a time, a lane 8 of its 128 values
// (one 16-byte load), so a step keeps 8 K and 8 V loads per lane in flight. Scores reduce over
// the 16 lanes of a half-warp; the online softmax keeps one max per warp and per query head
// (GQA: the NREP query heads of the KV head share every load). Warps and then splits are merged
// with the (max, sum, acc) rule.
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "backends/cuda/attention_cuda.h"
#include "backends/cuda/attention_cuda_internal.h"
#include "backends/cuda/cuda_status.h"

namespace palu::backends::cuda {
namespace {

constexpr int kHD = 128;
constexpr int kWarps = 4;
constexpr int kStep = 8;  // tokens per warp step

struct FullParams {
  const uint16_t* k;
  const uint16_t* v;
  const float* q;
  int T, row_halves, splits, tokens_per_split;
  float inv_sqrt_d;
  float *pm, *pl, *pacc;
};

__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 x = __half22float2(h[i]);
    f[2 * i] = x.x;
    f[2 * i + 1] = x.y;
  }
}

template <int NREP>
__global__ void __launch_bounds__(kWarps * 32) full_decode_kernel(const __grid_constant__ FullParams P) {
  __shared__ float sm_m[kWarps][NREP], sm_l[kWarps][NREP];
  __shared__ float sm_acc[kWarps][NREP][kHD];
  const int j = blockIdx.y, split = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, hw = lane >> 4, l16 = lane & 15;
  const int tb = split * P.tokens_per_split, te = min(P.T, tb + P.tokens_per_split);
  float q[NREP][8];
#pragma unroll
  for (int r = 0; r < NREP; ++r)
#pragma unroll
    for (int d = 0; d < 8; ++d) q[r][d] = P.q[(size_t)(j * NREP + r) * kHD + l16 * 8 + d] * P.inv_sqrt_d;
  float m[NREP], l[NREP], acc[NREP][8];
#pragma unroll
  for (int r = 0; r < NREP; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.f;
#pragma unroll
    for (int d = 0; d < 8; ++d) acc[r][d] = 0.f;
  }
  const size_t col = (size_t)j * kHD + l16 * 8;
  for (int base = tb + warp * kStep; base < te; base += kWarps * kStep) {
    uint4 kr[kStep / 2], vr[kStep / 2];
#pragma unroll
    for (int i = 0; i < kStep / 2; ++i) {
      const int t = base + 2 * i + hw;
      if (t < te) {
        kr[i] = __ldcs(reinterpret_cast<const uint4*>(P.k + (size_t)t * P.row_halves + col));
        vr[i] = __ldcs(reinterpret_cast<const uint4*>(P.v + (size_t)t * P.row_halves + col));
      } else {
        kr[i] = make_uint4(0, 0, 0, 0);
        vr[i] = make_uint4(0, 0, 0, 0);
      }
    }
    float s[NREP][kStep / 2];
#pragma unroll
    for (int i = 0; i < kStep / 2; ++i) {
      float kf[8];
      unpack8(kr[i], kf);
      const bool valid = base + 2 * i + hw < te;
#pragma unroll
      for (int r = 0; r < NREP; ++r) {
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) d += q[r][e] * kf[e];
        d += __shfl_xor_sync(0xffffffffu, d, 8);
        d += __shfl_xor_sync(0xffffffffu, d, 4);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        s[r][i] = valid ? d : -INFINITY;
      }
    }
#pragma unroll
    for (int r = 0; r < NREP; ++r) {
      float mx = s[r][0];
#pragma unroll
      for (int i = 1; i < kStep / 2; ++i) mx = fmaxf(mx, s[r][i]);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      const float m_new = fmaxf(m[r], mx);
      const float corr = __expf(m[r] - m_new);
      float psum = 0.f;
#pragma unroll
      for (int d = 0; d < 8; ++d) acc[r][d] *= corr;
#pragma unroll
      for (int i = 0; i < kStep / 2; ++i) {
        const float p = __expf(s[r][i] - m_new);
        psum += p;
        float vf[8];
        unpack8(vr[i], vf);
#pragma unroll
        for (int d = 0; d < 8; ++d) acc[r][d] += p * vf[d];
      }
      l[r] = l[r] * corr + psum;
      m[r] = m_new;
    }
  }
  // the two half-warps share m; add their sums and accumulators
#pragma unroll
  for (int r = 0; r < NREP; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 16);
#pragma unroll
    for (int d = 0; d < 8; ++d) acc[r][d] += __shfl_xor_sync(0xffffffffu, acc[r][d], 16);
    if (lane == 0) {
      sm_m[warp][r] = m[r];
      sm_l[warp][r] = l[r];
    }
    if (hw == 0)
#pragma unroll
      for (int d = 0; d < 8; ++d) sm_acc[warp][r][l16 * 8 + d] = acc[r][d];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < NREP * kHD; i += blockDim.x) {
    const int r = i / kHD, c = i % kHD;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w][r]);
    float L = 0.f, A = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      if (sm_l[w][r] == 0.f) continue;
      const float e = __expf(sm_m[w][r] - M);
      L += e * sm_l[w][r];
      A += e * sm_acc[w][r][c];
    }
    const int h = j * NREP + r;
    if (c == 0) {
      P.pm[(size_t)h * P.splits + split] = M;
      P.pl[(size_t)h * P.splits + split] = L;
    }
    P.pacc[(size_t)h * kHD * P.splits + (size_t)split * kHD + c] = A;
  }
}

}  // namespace

size_t full_decode_scratch_bound(const CudaAttentionShape& sh, int T) {
  if (sh.num_heads <= 0 || T <= 0) return 0;
  // splits ≤ the token steps of kWarps·kStep tokens.
  const size_t splits = (size_t)(T + kWarps * kStep - 1) / (kWarps * kStep);
  return ((size_t)sh.num_heads * kHD * splits + 2 * (size_t)sh.num_heads * splits) * sizeof(float) + 256;
}

Status full_attention_decode_cuda(const CudaAttentionShape& sh, const uint16_t* k, const uint16_t* v, int T,
                                  const float* q, float* out, CudaAllocator* workspace, void* stream,
                                  const CudaDecodeOptions& options) {
  if (sh.num_heads <= 0 || sh.num_kv_heads <= 0 || sh.num_heads % sh.num_kv_heads != 0)
    return invalid_argument("cuda full attention: num_heads must be a positive multiple of num_kv_heads, found " +
                            std::to_string(sh.num_heads) + " and " + std::to_string(sh.num_kv_heads));
  if (sh.head_dim != kHD)
    return unimplemented("cuda full attention: head_dim must be 128, found " + std::to_string(sh.head_dim));
  const int n_rep = sh.num_heads / sh.num_kv_heads;
  if (n_rep != 1 && n_rep != 2 && n_rep != 4 && n_rep != 8)
    return unimplemented("cuda full attention: num_heads / num_kv_heads must be 1, 2, 4 or 8, found " +
                         std::to_string(n_rep));
  if (T <= 0) return invalid_argument("cuda full attention: T must be ≥ 1, found " + std::to_string(T));
  if (k == nullptr || v == nullptr || q == nullptr || out == nullptr)
    return invalid_argument("cuda full attention: k, v, q and out must not be null");
  if (reinterpret_cast<uintptr_t>(k) % 16 != 0 || reinterpret_cast<uintptr_t>(v) % 16 != 0)
    return invalid_argument("cuda full attention: k and v must be 16-byte aligned");
  if (workspace == nullptr && options.scratch == nullptr)
    return invalid_argument("cuda full attention: workspace allocator and scratch are both null");
  PALU_ASSIGN_OR_RETURN(const detail::DeviceLimits lim, detail::device_limits());
  const int step = kWarps * kStep;
  int splits = options.splits > 0 ? options.splits : std::max(1, lim.sms * 8 / sh.num_kv_heads);
  splits = std::min(splits, (T + step - 1) / step);
  const int tps = ((T + splits - 1) / splits + step - 1) / step * step;
  splits = (T + tps - 1) / tps;
  const size_t need = ((size_t)sh.num_heads * kHD * splits + 2 * (size_t)sh.num_heads * splits) * sizeof(float);
  CudaBuffer ws;
  float* base = static_cast<float*>(options.scratch);
  if (base != nullptr) {
    if (options.scratch_bytes < need)
      return invalid_argument("cuda full attention: scratch_bytes must be ≥ " + std::to_string(need) + ", found " +
                              std::to_string(options.scratch_bytes));
  } else {
    PALU_ASSIGN_OR_RETURN(ws, CudaBuffer::make(workspace, need));
    base = ws.as<float>();
  }
  FullParams P{};
  P.k = k;
  P.v = v;
  P.q = q;
  P.T = T;
  P.row_halves = sh.num_kv_heads * kHD;
  P.splits = splits;
  P.tokens_per_split = tps;
  P.inv_sqrt_d = 1.0f / std::sqrt((float)kHD);
  P.pacc = base;
  P.pm = base + (size_t)sh.num_heads * kHD * splits;
  P.pl = P.pm + (size_t)sh.num_heads * splits;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const dim3 grid(splits, sh.num_kv_heads);
  switch (n_rep) {
    case 1: full_decode_kernel<1><<<grid, kWarps * 32, 0, st>>>(P); break;
    case 2: full_decode_kernel<2><<<grid, kWarps * 32, 0, st>>>(P); break;
    case 4: full_decode_kernel<4><<<grid, kWarps * 32, 0, st>>>(P); break;
    default: full_decode_kernel<8><<<grid, kWarps * 32, 0, st>>>(P); break;
  }
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  PALU_RETURN_IF_ERROR(detail::launch_merge_splits(P.pm, P.pl, P.pacc, splits, 0, sh.num_heads, 0, kHD, out, st,
                                                   lim.cc_major >= 9));
  if (options.scratch == nullptr) PALU_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  return Status::ok();
}

}  // namespace palu::backends::cuda
