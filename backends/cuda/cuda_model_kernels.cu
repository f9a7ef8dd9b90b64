// Kernels of the whole-model forward (see cuda_model_kernels.h). Simple, bandwidth-bound code;
// the heavy lifting (GEMMs) is cuBLAS and the decode attention is attention_cuda.h's kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "backends/cuda/cuda_model_kernels.h"
#include "backends/cuda/cuda_status.h"

namespace palu::backends::cuda::detail {
namespace {

int grid_for(size_t n) {
  return (int)std::min<size_t>((n + 255) / 256, 8192);
}

__global__ void to_half_kernel(const float* x, __half* y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    y[i] = __float2half_rn(x[i]);
}

__global__ void half_to_float_kernel(const __half* x, float* y, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x)
    y[i] = __half2float(x[i]);
}

__global__ void add_bias_rows_kernel(float* y, const float* b, int n, int ld) {
  float* row = y + (size_t)blockIdx.x * ld;
  for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] += b[i];
}

__global__ void gather_kernel(const __half* table, const int32_t* ids, int d, float* out) {
  const __half* row = table + (size_t)ids[blockIdx.x] * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    out[(size_t)blockIdx.x * d + i] = __half2float(row[i]);
}

__global__ void rope_table_rows_kernel(float* x, int ld, int heads, int d_h, int pos0,
                                       const float* cs, const float* sn) {
  const int r = blockIdx.x, half = d_h / 2;
  const float* c = cs + (size_t)(pos0 + r) * half;
  const float* s = sn + (size_t)(pos0 + r) * half;
  float* row = x + (size_t)r * ld;
  for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
    const int h = idx / half, i = idx % half;
    float* v = row + h * d_h;
    const float x0 = v[i], x1 = v[i + half];
    // The CPU's x0·c − x1·s and x1·c + x0·s, without contraction into FMAs.
    v[i] = __fsub_rn(__fmul_rn(x0, c[i]), __fmul_rn(x1, s[i]));
    v[i + half] = __fadd_rn(__fmul_rn(x1, c[i]), __fmul_rn(x0, s[i]));
  }
}

// One block per row: min/max (packed), codes, bit packing — cache::encode_row's math.
__global__ void encode_kernel(const float* z, int ld_z, int rank, int storage, int bits,
                              uint8_t* dst, size_t row_bytes, float* scale, float* zero, int t0) {
  extern __shared__ uint8_t codes[];  // [rank]
  __shared__ float s_lo[32], s_hi[32];
  __shared__ float s_scale, s_zero;
  const float* zr = z + (size_t)blockIdx.x * ld_z;
  uint8_t* out = dst + (size_t)(t0 + blockIdx.x) * row_bytes;
  if (storage == (int)RowStorage::kF32) {
    for (int i = threadIdx.x; i < rank; i += blockDim.x) reinterpret_cast<float*>(out)[i] = zr[i];
    return;
  }
  if (storage == (int)RowStorage::kF16) {
    for (int i = threadIdx.x; i < rank; i += blockDim.x)
      reinterpret_cast<__half*>(out)[i] = __float2half_rn(zr[i]);
    return;
  }
  if (storage == (int)RowStorage::kBF16) {
    for (int i = threadIdx.x; i < rank; i += blockDim.x)
      reinterpret_cast<__nv_bfloat16*>(out)[i] = __float2bfloat16_rn(zr[i]);
    return;
  }
  float lo = INFINITY, hi = -INFINITY;
  for (int i = threadIdx.x; i < rank; i += blockDim.x) {
    lo = fminf(lo, zr[i]);
    hi = fmaxf(hi, zr[i]);
  }
  for (int o = 16; o > 0; o >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
  if ((threadIdx.x & 31) == 0) {
    s_lo[threadIdx.x >> 5] = lo;
    s_hi[threadIdx.x >> 5] = hi;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = s_lo[0], b = s_hi[0];
    for (int w = 1; w < (int)(blockDim.x + 31) / 32; ++w) {
      a = fminf(a, s_lo[w]);
      b = fmaxf(b, s_hi[w]);
    }
    const float levels = (float)((1 << bits) - 1);
    s_zero = a;
    s_scale = b > a ? __fdiv_rn(__fsub_rn(b, a), levels) : 0.f;
    scale[t0 + blockIdx.x] = s_scale;
    zero[t0 + blockIdx.x] = s_zero;
  }
  __syncthreads();
  const float sc = s_scale, zo = s_zero, levels = (float)((1 << bits) - 1);
  const float inv = sc == 0.f ? 0.f : __fdiv_rn(1.0f, sc);
  for (int i = threadIdx.x; i < rank; i += blockDim.x) {
    float q = 0.f;
    if (sc != 0.f) q = fminf(levels, fmaxf(0.f, nearbyintf(__fmul_rn(__fsub_rn(zr[i], zo), inv))));
    codes[i] = (uint8_t)q;
  }
  __syncthreads();
  for (size_t b = threadIdx.x; b < row_bytes; b += blockDim.x) {
    // Codes overlapping bits [8b, 8b + 8) of the row's little-endian bit string.
    uint32_t v = 0;
    const int first = (int)(8 * b / bits), last = (int)((8 * b + 7) / bits);
    for (int i = first; i <= last && i < rank; ++i) {
      const int shift = i * bits - (int)(8 * b);
      v |= shift >= 0 ? (uint32_t)codes[i] << shift : (uint32_t)codes[i] >> (-shift);
    }
    out[b] = (uint8_t)(v & 0xffu);
  }
}

__global__ void decode_kernel(const uint8_t* src, size_t row_bytes, const float* scale,
                              const float* zero, int storage, int bits, int rank, float* out,
                              int ld_out, int col0) {
  const uint8_t* row = src + (size_t)blockIdx.x * row_bytes;
  float* o = out + (size_t)blockIdx.x * ld_out + col0;
  const float sc = bits ? scale[blockIdx.x] : 0.f, zo = bits ? zero[blockIdx.x] : 0.f;
  for (int i = threadIdx.x; i < rank; i += blockDim.x) {
    float v;
    if (storage == (int)RowStorage::kF32) {
      v = reinterpret_cast<const float*>(row)[i];
    } else if (storage == (int)RowStorage::kF16) {
      v = __half2float(reinterpret_cast<const __half*>(row)[i]);
    } else if (storage == (int)RowStorage::kBF16) {
      v = __uint_as_float((uint32_t) reinterpret_cast<const uint16_t*>(row)[i] << 16);
    } else {
      const int bit = i * bits, byte = bit >> 3, off = bit & 7;
      uint32_t w = row[byte];
      if (off + bits > 8) w |= (uint32_t)row[byte + 1] << 8;
      const uint32_t q = (w >> off) & ((1u << bits) - 1u);
      v = sc == 0.f ? zo : __fadd_rn(__fmul_rn((float)q, sc), zo);
    }
    o[i] = v;
  }
}

__global__ void causal_softmax_kernel(float* S, int rows, int keys, int first_visible) {
  const int i = blockIdx.x, h = blockIdx.y;
  float* row = S + ((size_t)h * rows + i) * keys;
  const int visible = min(keys, first_visible + i + 1);
  __shared__ float red[32];
  __shared__ float bcast;
  float m = -INFINITY;
  for (int t = threadIdx.x; t < visible; t += blockDim.x) m = fmaxf(m, row[t]);
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = red[0];
    for (int w = 1; w < (int)blockDim.x / 32; ++w) a = fmaxf(a, red[w]);
    bcast = a;
  }
  __syncthreads();
  m = bcast;
  float s = 0.f;
  for (int t = threadIdx.x; t < keys; t += blockDim.x) {
    const float p = t < visible ? expf(row[t] - m) : 0.f;
    row[t] = p;
    s += p;
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float a = 0.f;
    for (int w = 0; w < (int)blockDim.x / 32; ++w) a += red[w];
    bcast = 1.0f / a;
  }
  __syncthreads();
  const float inv = bcast;
  for (int t = threadIdx.x; t < visible; t += blockDim.x) row[t] *= inv;
}

__global__ void store_window_kernel(const float* z, int ld_z, int rank, __half* ring, int slots,
                                    int t0, int first) {
  const int pos = t0 + (int)blockIdx.x;
  if (pos < first) return;
  const float* src = z + (size_t)blockIdx.x * ld_z;
  __half* dst = ring + (size_t)(pos % slots) * rank;
  for (int i = threadIdx.x; i < rank; i += blockDim.x) dst[i] = __float2half_rn(src[i]);
}

__global__ void load_window_kernel(const __half* ring, int slots, int rank, int begin, float* out,
                                   int ld_out, int col0) {
  const int pos = begin + (int)blockIdx.x;
  const __half* src = ring + (size_t)(pos % slots) * rank;
  float* dst = out + (size_t)pos * ld_out + col0;
  for (int i = threadIdx.x; i < rank; i += blockDim.x) dst[i] = __half2float(src[i]);
}

Status launched(const char* what) {
  return cuda_status(cudaGetLastError(), what);
}

}  // namespace

Status to_half(const float* x, uint16_t* y, size_t n, void* stream) {
  if (n == 0) return Status::ok();
  to_half_kernel<<<grid_for(n), 256, 0, (cudaStream_t)stream>>>(x, reinterpret_cast<__half*>(y), n);
  return launched("cuda model: to_half");
}

Status half_to_float(const uint16_t* x, float* y, size_t n, void* stream) {
  if (n == 0) return Status::ok();
  half_to_float_kernel<<<grid_for(n), 256, 0, (cudaStream_t)stream>>>(
      reinterpret_cast<const __half*>(x), y, n);
  return launched("cuda model: half_to_float");
}

Status add_bias_rows(float* y, const float* b, int rows, int n, int ld, void* stream) {
  if (rows <= 0 || n <= 0) return Status::ok();
  add_bias_rows_kernel<<<rows, 256, 0, (cudaStream_t)stream>>>(y, b, n, ld);
  return launched("cuda model: add_bias_rows");
}

Status gather_rows_f16(const uint16_t* table, const int32_t* ids, int n, int d, float* out,
                       void* stream) {
  gather_kernel<<<n, 256, 0, (cudaStream_t)stream>>>(reinterpret_cast<const __half*>(table), ids, d,
                                                     out);
  return launched("cuda model: embedding gather");
}

Status rope_rows_table(float* x, int rows, int ld, int heads, int d_h, int pos0, const float* cos,
                       const float* sin, void* stream) {
  if (rows <= 0) return Status::ok();
  rope_table_rows_kernel<<<rows, 256, 0, (cudaStream_t)stream>>>(x, ld, heads, d_h, pos0, cos, sin);
  return launched("cuda model: rope");
}

Status encode_latent_rows(const float* z, int ld_z, int rows, int rank, RowStorage storage,
                          uint8_t* dst, size_t row_bytes, float* scale, float* zero, int t0,
                          void* stream) {
  if (rows <= 0) return Status::ok();
  encode_kernel<<<rows, 128, (size_t)rank, (cudaStream_t)stream>>>(
      z, ld_z, rank, (int)storage, row_storage_bits(storage), dst, row_bytes, scale, zero, t0);
  return launched("cuda model: encode latent rows");
}

Status decode_latent_rows(const uint8_t* src, size_t row_bytes, const float* scale,
                          const float* zero, RowStorage storage, int rank, int T, float* out,
                          int ld_out, int col0, void* stream) {
  if (T <= 0) return Status::ok();
  decode_kernel<<<T, 128, 0, (cudaStream_t)stream>>>(src, row_bytes, scale, zero, (int)storage,
                                                     row_storage_bits(storage), rank, out, ld_out,
                                                     col0);
  return launched("cuda model: decode latent rows");
}

Status store_window_rows(const float* z, int ld_z, int rows, int rank, uint16_t* ring, int slots,
                         int t0, int first, void* stream) {
  if (rows <= 0 || rank <= 0 || slots <= 0 || t0 + rows <= first) return Status::ok();
  store_window_kernel<<<rows, 128, 0, (cudaStream_t)stream>>>(
      z, ld_z, rank, reinterpret_cast<__half*>(ring), slots, t0, first);
  return launched("cuda model: store window rows");
}

Status load_window_rows(const uint16_t* ring, int slots, int rank, int begin, int end, float* out,
                        int ld_out, int col0, void* stream) {
  if (end <= begin || rank <= 0 || slots <= 0) return Status::ok();
  load_window_kernel<<<end - begin, 128, 0, (cudaStream_t)stream>>>(
      reinterpret_cast<const __half*>(ring), slots, rank, begin, out, ld_out, col0);
  return launched("cuda model: load window rows");
}

Status causal_softmax(float* S, int heads, int rows, int keys, int first_visible, void* stream) {
  if (heads <= 0 || rows <= 0 || keys <= 0) return Status::ok();
  causal_softmax_kernel<<<dim3(rows, heads), 256, 0, (cudaStream_t)stream>>>(S, rows, keys,
                                                                             first_visible);
  return launched("cuda model: causal softmax");
}

}  // namespace palu::backends::cuda::detail
