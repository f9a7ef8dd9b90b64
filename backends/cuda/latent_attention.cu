// The fused latent decode kernel (see attention_cuda.h for the math and the contract).
//
// One thread block = one group g, a chunk of HPC (1 or 2) of its KV heads, and one split of the
// token axis; 4 warps per KV head (HPC·128 threads). The block keeps that chunk's B^K rows
// [HPC·128, r_k] (f16, rows padded by 16 B so ldmatrix is conflict-free) in shared memory for
// its whole life and walks its tokens in tiles of 64:
//   1. the tile's raw rows (z^K, z^V, scales) were prefetched into registers during the previous
//      tile's MMA; they are stored to shared memory (f16 z^K straight into the MMA tile, other
//      storages into a raw buffer and dequantized to f16: q·scale then + zero, as the CPU);
//   2. keys [64 tokens × HPC·128] = Z^K · B^Kᵀ with mma.sync m16n8k16 (f32 accumulators). Warp
//      (u, quarter) owns columns [16·qd, 16·qd+16) and the same +64, so each thread holds both
//      halves of its rotate-half pairs: RoPE and q·k need no data exchange but a quad shuffle;
//   3. scores of every query head sharing the KV head, summed over the 4 warps in a fixed
//      order (deterministic), online softmax per query head (one warp per head);
//   4. acc_h = acc_h·corr_h + Σ_t p_h,t · z^V_t in f32, z^V decoded exactly as the CPU decodes.
// A second kernel merges the splits: o = Σ_s e^{m_s−M} acc_s / Σ_s e^{m_s−M} l_s.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "backends/cuda/attention_cuda.h"
#include "backends/cuda/attention_cuda_internal.h"
#include "backends/cuda/cuda_status.h"

namespace palu::backends::cuda {
namespace {

constexpr int kTT = 64;          // tokens per tile
constexpr int kHD = 128;         // head_dim
constexpr int kPadHalves = 8;    // 16 B of padding per smem row of halves
constexpr int kPrefetch = 12;    // uint4 per thread held in registers across the MMA phase
constexpr int kMaxBatch = 16;    // groups per launch
constexpr int kMaxRep = 8;       // query heads per KV head
constexpr int kThreadsMax = 256;

struct GroupPtrs {
  const uint8_t* zk;
  const uint8_t* zv;
  const float* sk;
  const float* zrk;
  const float* sv;
  const float* zrv;
  const __half* bk;
  const float* kbias;
  int first_head;  // global index of the group's first query head
  int out_off;     // float offset of the group's first head in out
};

struct LatentParams {
  GroupPtrs g[kMaxBatch];
  int T;
  int rk, rv;
  int stor_k, stor_v;  // RowStorage values
  int row_bytes_k, row_bytes_v;
  int n_rep;           // query heads per KV head
  int hpc;             // KV heads per block
  int chunks;          // s / hpc
  int splits;
  int tiles_per_split;
  float inv_sqrt_d;
  const float* q;         // [H, 128]
  const float* inv_freq;  // [64]
  float* pm;              // [H, splits]
  float* pl;              // [H, splits]
  float* pacc;            // [width · splits]
};

struct SmemLayout {
  size_t bs, zk, rawk, rawv, sc, qs, invf, red, p, stat, acc, total;
};

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) / 16 * 16; }

__host__ __device__ inline SmemLayout smem_layout(int hpc, int n_rep, int rk, int rv, int stor_k, int row_bytes_k,
                                                  int row_bytes_v) {
  SmemLayout L{};
  const int hq = hpc * n_rep;
  size_t o = 0;
  L.bs = o;
  o += align16((size_t)hpc * kHD * (rk + kPadHalves) * 2);
  L.zk = o;
  o += align16((size_t)kTT * (rk + kPadHalves) * 2);
  L.rawk = o;
  if (stor_k != (int)RowStorage::kF16) o += align16((size_t)kTT * row_bytes_k + 16);
  L.rawv = o;
  o += align16((size_t)kTT * row_bytes_v + 16);
  L.sc = o;
  o += 4 * kTT * 4;
  L.qs = o;
  o += align16((size_t)hq * kHD * 4);
  L.invf = o;
  o += kHD / 2 * 4;
  L.red = o;
  o += align16((size_t)4 * hq * kTT * 4);
  L.p = o;
  o += align16((size_t)hq * kTT * 4);
  L.stat = o;
  o += align16((size_t)3 * hq * 4);
  L.acc = o;
  o += align16((size_t)hq * rv * 4);
  L.total = o;
  return L;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

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

__global__ void __launch_bounds__(kThreadsMax, 1) latent_decode_kernel(const __grid_constant__ LatentParams P) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid = threadIdx.x, nthr = blockDim.x;
  const int warp = tid >> 5, lane = tid & 31;
  const int split = blockIdx.x;
  const int gl = blockIdx.y / P.chunks, chunk = blockIdx.y % P.chunks;
  const GroupPtrs& G = P.g[gl];
  const int hpc = P.hpc, n_rep = P.n_rep, hq = hpc * n_rep;
  const int rk = P.rk, rv = P.rv, ldk = rk + kPadHalves;
  const SmemLayout L = smem_layout(hpc, n_rep, rk, rv, P.stor_k, P.row_bytes_k, P.row_bytes_v);
  __half* Bs = reinterpret_cast<__half*>(smem + L.bs);
  __half* Zk = reinterpret_cast<__half*>(smem + L.zk);
  uint8_t* rawk = smem + L.rawk;
  uint8_t* rawv = smem + L.rawv;
  float* sck = reinterpret_cast<float*>(smem + L.sc);
  float* zrk = sck + kTT;
  float* scv = sck + 2 * kTT;
  float* zrv = sck + 3 * kTT;
  float* qs = reinterpret_cast<float*>(smem + L.qs);
  float* invf = reinterpret_cast<float*>(smem + L.invf);
  float* red = reinterpret_cast<float*>(smem + L.red);
  float* Ps = reinterpret_cast<float*>(smem + L.p);
  float* m_s = reinterpret_cast<float*>(smem + L.stat);
  float* l_s = m_s + hq;
  float* c_s = m_s + 2 * hq;
  float* acc_s = reinterpret_cast<float*>(smem + L.acc);

  const int u0 = chunk * hpc;                      // first KV head (in the group) of this block
  const int head0 = G.first_head + u0 * n_rep;     // first global query head of this block
  const bool k_f16 = P.stor_k == (int)RowStorage::kF16;
  const bool k_packed = P.stor_k >= (int)RowStorage::kQ8;
  const bool v_packed = P.stor_v >= (int)RowStorage::kQ8;

  // ---- once per block: B^K rows, q, inv_freq, state
  {
    const int row16 = rk / 8;  // uint4 per B row
    const int n16 = hpc * kHD * row16;
    const uint4* src = reinterpret_cast<const uint4*>(G.bk + (size_t)u0 * kHD * rk);
    for (int i = tid; i < n16; i += nthr) {
      const int r = i / row16, c = i % row16;
      *reinterpret_cast<uint4*>(Bs + (size_t)r * ldk + c * 8) = __ldg(src + i);
    }
    for (int i = tid; i < hq * kHD; i += nthr) qs[i] = P.q[(size_t)head0 * kHD + i];
    if (tid < kHD / 2) invf[tid] = P.inv_freq[tid];
    for (int i = tid; i < hq; i += nthr) {
      m_s[i] = -INFINITY;
      l_s[i] = 0.f;
    }
    for (int i = tid; i < hq * rv; i += nthr) acc_s[i] = 0.f;
  }

  const int tiles_total = (P.T + kTT - 1) / kTT;
  const int tile_begin = split * P.tiles_per_split;
  const int tile_end = min(tiles_total, tile_begin + P.tiles_per_split);

  // Raw bytes of a tile: k chunks then v chunks (16 B each), tails of 4 B words.
  uint4 pf[kPrefetch];
  auto tile_geom = [&](int tile, int& nvalid, int& nk16, int& nv16, int& nk_tail, int& nv_tail) {
    nvalid = min(kTT, P.T - tile * kTT);
    const int bk = nvalid * P.row_bytes_k, bv = nvalid * P.row_bytes_v;
    nk16 = bk / 16;
    nv16 = bv / 16;
    nk_tail = (bk % 16) / 4;
    nv_tail = (bv % 16) / 4;
  };
  auto chunk_src = [&](int tile, int c, int nk16) -> const uint4* {
    if (c < nk16) return reinterpret_cast<const uint4*>(G.zk + (size_t)tile * kTT * P.row_bytes_k) + c;
    return reinterpret_cast<const uint4*>(G.zv + (size_t)tile * kTT * P.row_bytes_v) + (c - nk16);
  };
  auto prefetch = [&](int tile) {
    int nvalid, nk16, nv16, nkt, nvt;
    tile_geom(tile, nvalid, nk16, nv16, nkt, nvt);
    const int n = nk16 + nv16;
#pragma unroll
    for (int i = 0; i < kPrefetch; ++i) {
      const int c = tid + i * nthr;
      if (c < n) pf[i] = __ldcs(chunk_src(tile, c, nk16));
    }
  };
  auto store_chunk = [&](int c, int nk16, const uint4& val) {
    if (c < nk16) {
      const int o = c * 16;
      if (k_f16) {
        const int t = o / P.row_bytes_k, cb = o % P.row_bytes_k;
        *reinterpret_cast<uint4*>(reinterpret_cast<uint8_t*>(Zk + (size_t)t * ldk) + cb) = val;
      } else {
        *reinterpret_cast<uint4*>(rawk + o) = val;
      }
    } else {
      *reinterpret_cast<uint4*>(rawv + (size_t)(c - nk16) * 16) = val;
    }
  };

  if (tile_begin < tile_end) prefetch(tile_begin);

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    int nvalid, nk16, nv16, nkt, nvt;
    tile_geom(tile, nvalid, nk16, nv16, nkt, nvt);
    const int t0 = tile * kTT;
    __syncthreads();  // the previous tile's readers are done
    {
      const int n = nk16 + nv16;
#pragma unroll
      for (int i = 0; i < kPrefetch; ++i) {
        const int c = tid + i * nthr;
        if (c < n) store_chunk(c, nk16, pf[i]);
      }
      for (int c = tid + kPrefetch * nthr; c < n; c += nthr) store_chunk(c, nk16, __ldcs(chunk_src(tile, c, nk16)));
      if (tid < nkt) {  // k tail words (never for f16)
        const uint32_t* s = reinterpret_cast<const uint32_t*>(G.zk + (size_t)tile * kTT * P.row_bytes_k + nk16 * 16);
        reinterpret_cast<uint32_t*>(rawk + nk16 * 16)[tid] = s[tid];
      }
      if (tid < nvt) {
        const uint32_t* s = reinterpret_cast<const uint32_t*>(G.zv + (size_t)tile * kTT * P.row_bytes_v + nv16 * 16);
        reinterpret_cast<uint32_t*>(rawv + nv16 * 16)[tid] = s[tid];
      }
      if (tid < nvalid) {
        if (k_packed) {
          sck[tid] = G.sk[t0 + tid];
          zrk[tid] = G.zrk[t0 + tid];
        }
        if (v_packed) {
          scv[tid] = G.sv[t0 + tid];
          zrv[tid] = G.zrv[t0 + tid];
        }
      }
    }
    if (tile + 1 < tile_end) prefetch(tile + 1);
    __syncthreads();
    if (!k_f16) {  // dequantize z^K to f16 rows of the MMA tile
      const int per_row = rk / 8;
      for (int i = tid; i < nvalid * per_row; i += nthr) {
        const int t = i / per_row, i0 = (i % per_row) * 8;
        const float sc = k_packed ? sck[t] : 0.f, zr = k_packed ? zrk[t] : 0.f;
        *reinterpret_cast<uint4*>(Zk + (size_t)t * ldk + i0) =
            decode8_half(P.stor_k, rawk + (size_t)t * P.row_bytes_k, i0, sc, zr);
      }
      __syncthreads();
    }

    // ---- keys = Z^K · B^Kᵀ for this warp's 64 tokens × 32 columns
    const int ul = warp >> 2, qd = warp & 3;
    float acc[4][4][4];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;
    {
      const __half* a_base = Zk + (size_t)(lane & 15) * ldk + (lane >> 4) * 8;
      const int brow = (lane & 7) + ((lane >> 4) << 3);
      const int bcol = ((lane >> 3) & 1) * 8;
      const __half* b_lo = Bs + (size_t)(ul * kHD + qd * 16 + brow) * ldk + bcol;
      const __half* b_hi = b_lo + (size_t)64 * ldk;
      const int mt_count = (nvalid + 15) / 16;
#pragma unroll 2
      for (int k0 = 0; k0 < rk; k0 += 16) {
        uint32_t bl[4], bh[4];
        ldmatrix_x4(bl, b_lo + k0);
        ldmatrix_x4(bh, b_hi + k0);
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
          if (mt < mt_count) {
            uint32_t a[4];
            ldmatrix_x4(a, a_base + (size_t)mt * 16 * ldk + k0);
            mma_16816(acc[mt][0], a, bl[0], bl[1]);
            mma_16816(acc[mt][1], a, bl[2], bl[3]);
            mma_16816(acc[mt][2], a, bh[0], bh[1]);
            mma_16816(acc[mt][3], a, bh[2], bh[3]);
          }
        }
      }
    }
    // ---- RoPE, then partial q·k of this warp's columns for every query head of KV head ul
    {
      const int u_global = u0 + ul;
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          const int row = mt * 16 + (lane >> 2) + rh * 8;
          const float tpos = (float)(t0 + row);
          float rlo[4], rhi[4];
#pragma unroll
          for (int f = 0; f < 4; ++f) {
            const int nt = f >> 1, c = f & 1;
            const int j = qd * 16 + nt * 8 + (lane & 3) * 2 + c;
            float klo = acc[mt][nt][rh * 2 + c], khi = acc[mt][nt + 2][rh * 2 + c];
            if (G.kbias != nullptr) {
              klo += G.kbias[u_global * kHD + j];
              khi += G.kbias[u_global * kHD + j + 64];
            }
            float sn, cs;
            sincosf(__fmul_rn(tpos, invf[j]), &sn, &cs);
            rlo[f] = klo * cs - khi * sn;
            rhi[f] = khi * cs + klo * sn;
          }
          for (int rr = 0; rr < n_rep; ++rr) {
            const int lh = ul * n_rep + rr;
            const float* qh = qs + lh * kHD;
            float part = 0.f;
#pragma unroll
            for (int f = 0; f < 4; ++f) {
              const int j = qd * 16 + (f >> 1) * 8 + (lane & 3) * 2 + (f & 1);
              part += qh[j] * rlo[f] + qh[j + 64] * rhi[f];
            }
            part += __shfl_xor_sync(0xffffffffu, part, 1);
            part += __shfl_xor_sync(0xffffffffu, part, 2);
            if ((lane & 3) == 0) red[(qd * hq + lh) * kTT + row] = part;
          }
        }
      }
    }
    __syncthreads();
    // ---- online softmax, one warp per query head
    for (int lh = warp; lh < hq; lh += nthr / 32) {
      float s[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int t = lane + 32 * i;
        s[i] = t < nvalid ? (((red[(0 * hq + lh) * kTT + t] + red[(1 * hq + lh) * kTT + t]) +
                              red[(2 * hq + lh) * kTT + t]) +
                             red[(3 * hq + lh) * kTT + t]) *
                                P.inv_sqrt_d
                          : -INFINITY;
      }
      float mx = fmaxf(s[0], s[1]);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = m_s[lh];
      const float m_new = fmaxf(m_old, mx);
      const float corr = expf(m_old - m_new);
      const float p0 = expf(s[0] - m_new), p1 = expf(s[1] - m_new);
      Ps[lh * kTT + lane] = p0;
      Ps[lh * kTT + lane + 32] = p1;
      float sum = p0 + p1;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane == 0) {
        l_s[lh] = l_s[lh] * corr + sum;
        m_s[lh] = m_new;
        c_s[lh] = corr;
      }
    }
    __syncthreads();
    // ---- acc = acc·corr + Σ_t p_t · z^V_t
    for (int c = tid; c < rv; c += nthr) {
      for (int h0 = 0; h0 < hq; h0 += kMaxRep) {
        float a[kMaxRep];
#pragma unroll
        for (int hh = 0; hh < kMaxRep; ++hh) a[hh] = (h0 + hh < hq) ? acc_s[(h0 + hh) * rv + c] * c_s[h0 + hh] : 0.f;
        for (int t = 0; t < nvalid; ++t) {
          const float z = decode1(P.stor_v, rawv + (size_t)t * P.row_bytes_v, c, v_packed ? scv[t] : 0.f,
                                  v_packed ? zrv[t] : 0.f);
#pragma unroll
          for (int hh = 0; hh < kMaxRep; ++hh)
            if (h0 + hh < hq) a[hh] += Ps[(h0 + hh) * kTT + t] * z;
        }
#pragma unroll
        for (int hh = 0; hh < kMaxRep; ++hh)
          if (h0 + hh < hq) acc_s[(h0 + hh) * rv + c] = a[hh];
      }
    }
  }
  __syncthreads();
  // ---- this split's partials
  for (int lh = tid; lh < hq; lh += nthr) {
    P.pm[(size_t)(head0 + lh) * P.splits + split] = m_s[lh];
    P.pl[(size_t)(head0 + lh) * P.splits + split] = l_s[lh];
  }
  for (int i = tid; i < hq * rv; i += nthr) {
    const int lh = i / rv, c = i % rv;
    const size_t out_off = (size_t)G.out_off + (size_t)(u0 * n_rep + lh) * rv;
    P.pacc[out_off * P.splits + (size_t)split * rv + c] = acc_s[i];
  }
}

int storage_int(RowStorage s) { return (int)s; }

Status check_rows(const CudaLatentRows& r, const char* what, int g) {
  const std::string name = "cuda latent attention: group " + std::to_string(g) + " " + what;
  const int s = (int)r.storage;
  if (s < 0 || s > (int)RowStorage::kQ2) return invalid_argument(name + ".storage is not a storage type: " + std::to_string(s));
  if (r.rows == nullptr) return invalid_argument(name + ".rows is null");
  if (r.rank <= 0 || r.rank % 32 != 0 || r.rank > 512)
    return unimplemented(name + ".rank must be a multiple of 32 in [32, 512], found " + std::to_string(r.rank));
  const size_t rb = row_storage_bytes(r.storage, (size_t)r.rank);
  if (r.row_stride_bytes != 0 && r.row_stride_bytes != rb)
    return unimplemented(name + ".row_stride_bytes must be 0 or " + std::to_string(rb) + " (dense rows), found " +
                         std::to_string(r.row_stride_bytes));
  if (reinterpret_cast<uintptr_t>(r.rows) % 16 != 0) return invalid_argument(name + ".rows must be 16-byte aligned");
  if (row_storage_bits(r.storage) != 0 && (r.scale == nullptr || r.zero == nullptr))
    return invalid_argument(name + ": packed storage needs per-row scale and zero, found null");
  return Status::ok();
}

int pick_hpc(const CudaAttentionShape& sh, const CudaLatentGroup& g, int max_smem, size_t* smem) {
  const int n_rep = sh.num_heads / sh.num_kv_heads;
  for (int hpc : {2, 1}) {
    if (sh.group_size % hpc != 0) continue;
    const SmemLayout L = smem_layout(hpc, n_rep, g.k.rank, g.v.rank, storage_int(g.k.storage),
                                     (int)row_storage_bytes(g.k.storage, g.k.rank),
                                     (int)row_storage_bytes(g.v.storage, g.v.rank));
    if (L.total <= (size_t)max_smem) {
      *smem = L.total;
      return hpc;
    }
  }
  return 0;
}

}  // namespace

namespace detail {
namespace {
__global__ void merge_splits_kernel(const float* pm, const float* pl, const float* pacc, int splits, int first_head,
                                    int heads_per_group, int out_off0, int rv, float* out) {
  // blockIdx.x: query head inside the batch (group-major), rv values per head
  const int h = first_head + blockIdx.x;
  const size_t off = (size_t)out_off0 + (size_t)blockIdx.x * rv;
  (void)heads_per_group;
  float M = -INFINITY;
  for (int s = 0; s < splits; ++s) M = fmaxf(M, pm[(size_t)h * splits + s]);
  double l = 0.0;
  for (int s = 0; s < splits; ++s) {
    const float ls = pl[(size_t)h * splits + s];
    if (ls != 0.f) l += exp((double)pm[(size_t)h * splits + s] - (double)M) * ls;
  }
  for (int c = threadIdx.x; c < rv; c += blockDim.x) {
    double o = 0.0;
    for (int s = 0; s < splits; ++s) {
      const float ls = pl[(size_t)h * splits + s];
      if (ls == 0.f) continue;
      o += exp((double)pm[(size_t)h * splits + s] - (double)M) * pacc[off * splits + (size_t)s * rv + c];
    }
    out[off + c] = (float)(o / l);
  }
}
}  // namespace

Status launch_merge_splits(const float* pm, const float* pl, const float* pacc, int splits, int first_head,
                           int heads, int out_off0, int rv, float* out, cudaStream_t stream) {
  merge_splits_kernel<<<heads, 128, 0, stream>>>(pm, pl, pacc, splits, first_head, heads, out_off0, rv, out);
  PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return Status::ok();
}

Result<DeviceLimits> device_limits() {
  DeviceLimits d;
  PALU_CUDA_RETURN_IF_ERROR(cudaGetDevice(&d.device));
  PALU_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, d.device));
  PALU_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&d.max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, d.device));
  return d;
}

}  // namespace detail

LatentLaunchPlan plan_latent_launch(const CudaAttentionShape& shape, const CudaLatentGroup& group) {
  LatentLaunchPlan p;
  auto lim = detail::device_limits();
  if (!lim.is_ok()) return p;
  p.heads_per_block = pick_hpc(shape, group, lim->max_smem_optin, &p.smem_bytes);
  p.threads = p.heads_per_block * 128;
  return p;
}

Status latent_attention_decode_cuda(const CudaAttentionShape& sh, const CudaLatentGroup* groups, int T, int pos_q,
                                    const float* q, const float* inv_freq, float* out, CudaAllocator* workspace,
                                    void* stream, const CudaDecodeOptions& options) {
  if (sh.num_heads <= 0 || sh.num_kv_heads <= 0 || sh.head_dim <= 0 || sh.group_size <= 0)
    return invalid_argument("cuda latent attention: num_heads, num_kv_heads, head_dim, group_size must be > 0");
  if (sh.num_heads % sh.num_kv_heads != 0)
    return invalid_argument("cuda latent attention: num_heads (" + std::to_string(sh.num_heads) +
                            ") must be a multiple of num_kv_heads (" + std::to_string(sh.num_kv_heads) + ")");
  if (sh.num_kv_heads % sh.group_size != 0)
    return invalid_argument("cuda latent attention: group_size (" + std::to_string(sh.group_size) +
                            ") must divide num_kv_heads (" + std::to_string(sh.num_kv_heads) + ")");
  if (sh.head_dim != kHD)
    return unimplemented("cuda latent attention: head_dim must be 128, found " + std::to_string(sh.head_dim));
  const int n_rep = sh.num_heads / sh.num_kv_heads;
  if (n_rep > kMaxRep)
    return unimplemented("cuda latent attention: num_heads / num_kv_heads must be ≤ 8, found " + std::to_string(n_rep));
  if (T <= 0) return invalid_argument("cuda latent attention: T (cached tokens) must be ≥ 1, found " + std::to_string(T));
  if (pos_q < T - 1)
    return invalid_argument("cuda latent attention: pos_q must be ≥ T−1 = " + std::to_string(T - 1) +
                            " (causal), found " + std::to_string(pos_q));
  if (groups == nullptr || q == nullptr || inv_freq == nullptr || out == nullptr)
    return invalid_argument("cuda latent attention: groups, q, inv_freq and out must not be null");
  if (workspace == nullptr && options.scratch == nullptr)
    return invalid_argument("cuda latent attention: workspace allocator and scratch are both null");
  const int G = sh.num_kv_heads / sh.group_size;
  const int hq = sh.group_size * n_rep;
  for (int g = 0; g < G; ++g) {
    if (groups[g].b_k == nullptr) return invalid_argument("cuda latent attention: group " + std::to_string(g) + " b_k is null");
    if (reinterpret_cast<uintptr_t>(groups[g].b_k) % 16 != 0)
      return invalid_argument("cuda latent attention: group " + std::to_string(g) + " b_k must be 16-byte aligned");
    PALU_RETURN_IF_ERROR(check_rows(groups[g].k, "k", g));
    PALU_RETURN_IF_ERROR(check_rows(groups[g].v, "v", g));
  }
  PALU_ASSIGN_OR_RETURN(const detail::DeviceLimits lim, detail::device_limits());

  // Batches of groups with one configuration (≤ kMaxBatch each), in group order.
  struct Batch {
    std::vector<int> gs;
    int hpc = 0, splits = 0, tiles_per_split = 0;
    size_t smem = 0, part_off = 0, stat_off = 0;
  };
  std::vector<Batch> batches;
  auto same = [&](int a, int b) {
    const auto &x = groups[a], &y = groups[b];
    return x.k.rank == y.k.rank && x.v.rank == y.v.rank && x.k.storage == y.k.storage && x.v.storage == y.v.storage;
  };
  std::vector<bool> taken(G, false);
  for (int g = 0; g < G; ++g) {
    if (taken[g]) continue;
    Batch b;
    for (int h = g; h < G && (int)b.gs.size() < kMaxBatch; ++h)
      if (!taken[h] && same(g, h)) {
        b.gs.push_back(h);
        taken[h] = true;
      }
    batches.push_back(b);
  }
  std::vector<int> out_off(G + 1, 0);
  for (int g = 0; g < G; ++g) out_off[g + 1] = out_off[g] + hq * groups[g].v.rank;

  const int tiles_total = (T + kTT - 1) / kTT;
  size_t part_floats = 0, stat_floats = 0;
  for (Batch& b : batches) {
    const CudaLatentGroup& g0 = groups[b.gs[0]];
    b.hpc = pick_hpc(sh, g0, lim.max_smem_optin, &b.smem);
    if (b.hpc == 0)
      return unimplemented("cuda latent attention: group " + std::to_string(b.gs[0]) + " (key rank " +
                           std::to_string(g0.k.rank) + " " + row_storage_name(g0.k.storage) + ", value rank " +
                           std::to_string(g0.v.rank) + " " + row_storage_name(g0.v.storage) +
                           ") needs more shared memory than the device's " + std::to_string(lim.max_smem_optin) + " B");
    PALU_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(latent_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)b.smem));
    int per_sm = 0;
    PALU_CUDA_RETURN_IF_ERROR(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, latent_decode_kernel, b.hpc * 128, b.smem));
    const int blocks_y = (int)b.gs.size() * (sh.group_size / b.hpc);
    int splits = options.splits > 0 ? options.splits : std::max(1, lim.sms * std::max(per_sm, 1) / blocks_y);
    splits = std::min(splits, tiles_total);
    b.tiles_per_split = (tiles_total + splits - 1) / splits;
    b.splits = (tiles_total + b.tiles_per_split - 1) / b.tiles_per_split;
    b.part_off = part_floats;
    b.stat_off = stat_floats;
    size_t width = 0;
    for (int g : b.gs) width += (size_t)hq * groups[g].v.rank;
    (void)width;
    part_floats += (size_t)out_off[G] * b.splits;  // indexed by the global out offset
    stat_floats += (size_t)sh.num_heads * b.splits;
  }
  const size_t need = (part_floats + 2 * stat_floats) * sizeof(float);
  CudaBuffer ws;
  float* base = static_cast<float*>(options.scratch);
  if (base != nullptr) {
    if (options.scratch_bytes < need)
      return invalid_argument("cuda latent attention: scratch_bytes must be ≥ " + std::to_string(need) + ", found " +
                              std::to_string(options.scratch_bytes));
  } else {
    PALU_ASSIGN_OR_RETURN(ws, CudaBuffer::make(workspace, need));
    base = ws.as<float>();
  }
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  for (const Batch& b : batches) {
    LatentParams P{};
    const CudaLatentGroup& g0 = groups[b.gs[0]];
    for (size_t i = 0; i < b.gs.size(); ++i) {
      const CudaLatentGroup& g = groups[b.gs[i]];
      P.g[i] = GroupPtrs{static_cast<const uint8_t*>(g.k.rows), static_cast<const uint8_t*>(g.v.rows), g.k.scale,
                         g.k.zero, g.v.scale, g.v.zero, reinterpret_cast<const __half*>(g.b_k), g.k_bias,
                         b.gs[i] * hq, out_off[b.gs[i]]};
    }
    P.T = T;
    P.rk = g0.k.rank;
    P.rv = g0.v.rank;
    P.stor_k = storage_int(g0.k.storage);
    P.stor_v = storage_int(g0.v.storage);
    P.row_bytes_k = (int)row_storage_bytes(g0.k.storage, g0.k.rank);
    P.row_bytes_v = (int)row_storage_bytes(g0.v.storage, g0.v.rank);
    P.n_rep = n_rep;
    P.hpc = b.hpc;
    P.chunks = sh.group_size / b.hpc;
    P.splits = b.splits;
    P.tiles_per_split = b.tiles_per_split;
    P.inv_sqrt_d = 1.0f / std::sqrt((float)kHD);
    P.q = q;
    P.inv_freq = inv_freq;
    P.pm = base + part_floats + b.stat_off;
    P.pl = base + part_floats + stat_floats + b.stat_off;
    P.pacc = base + b.part_off;
    PALU_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(latent_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)b.smem));
    const dim3 grid(b.splits, (unsigned)b.gs.size() * P.chunks);
    latent_decode_kernel<<<grid, b.hpc * 128, b.smem, st>>>(P);
    PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    for (int g : b.gs) {
      PALU_RETURN_IF_ERROR(detail::launch_merge_splits(P.pm, P.pl, P.pacc, b.splits, g * hq, hq, out_off[g],
                                                       groups[g].v.rank, out, st));
    }
  }
  // The partials must outlive the kernels before the buffer goes back to the allocator.
  if (options.scratch == nullptr) PALU_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  return Status::ok();
}

}  // namespace palu::backends::cuda
