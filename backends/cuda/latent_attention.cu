// The fused latent decode kernel for sm_80 and later (see attention_cuda.h for the math and the
// contract), its host entry point, and the dispatch to the sm_90a kernel (latent_attention_sm90.cu)
// on devices of compute capability 9.0.
//
// RoPE sits between B^K and q, so keys cannot be folded away; but q can be folded into B^K per
// call. With rotate-half pairs (i, i+64) and c = cos(t·θ_i), s = sin(t·θ_i):
//   q·rope(B z, t) = Σ_{i<64} c·(a_i·z) + s·(b_i·z),
//   a_i = q_i B_i + q_{i+64} B_{i+64},  b_i = q_{i+64} B_i − q_i B_{i+64}   (B_i: row i of B^K_u).
// A small kernel builds M_h = [a; b] (128 × r_k, f16) for every query head; the main kernel
// multiplies each tile of key latents by M_hᵀ on the tensor cores (the same FLOPs as rebuilding
// the keys) and finishes a score with two FMAs per (token, frequency) instead of a rotation and a
// dot product per key element. A key bias adds α_i = q_i β_i + q_{i+64} β_{i+64} (and the b-form)
// to the products before the trigonometric weights.
//
// One thread block = one group g, QPC (1 or 2) of its query heads and one split of the token
// axis; 4 warps per query head. The block keeps its M rows [QPC·128, r_k] in shared memory and
// walks its tokens in tiles of 32 with a two-stage cp.async pipeline (tile i+1 is in flight while
// tile i is computed; no registers are held for it):
//   1. cos/sin of the tile's 32 × 64 angles into shared memory (fl(t·inv_freq) as the CPU, then
//      a 2π reduction and the hardware sin/cos: ~1e-6);
//   2. packed or f32/bf16 key latents are dequantized to f16 (q·scale then + zero, as the CPU);
//   3. P = Z^K · Mᵀ with mma.sync m16n8k16 (f16 in, f32 accumulate); warp (h, qd) owns rows
//      [16·qd, 16·qd+16) of a and of b, so each thread holds both factors of its pairs;
//   4. scores summed over the 4 warps in a fixed order (deterministic), online softmax per head;
//   5. acc = acc·corr + Σ_t p_t · z^V_t in f32, z^V decoded exactly as the CPU decodes it.
// A merge kernel combines the splits: o = Σ_s e^{m_s−M} acc_s / Σ_s e^{m_s−M} l_s.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "backends/cuda/attention_cuda.h"
#include "backends/cuda/attention_cuda_internal.h"
#include "backends/cuda/cuda_status.h"
#include "backends/cuda/latent_attention_sm90.h"
#include "backends/cuda/latent_common.cuh"

namespace palu::backends::cuda {
namespace {

using namespace detail;  // latent_common.cuh

constexpr int kTT = 32;          // tokens per tile
constexpr int kHD = 128;         // head_dim
constexpr int kHalf = kHD / 2;
constexpr int kPadHalves = 8;    // 16 B of padding per smem row of halves (conflict-free ldmatrix)
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
  const __half* bk;     // B^K_g [s·128, rk]
  const float* kbias;   // [s·128] or nullptr
  int first_head;  // global index of the group's first query head
  int out_off;     // float offset of the group's first head in out
};

struct LatentParams {
  GroupPtrs g[kMaxBatch];
  int T;
  int rk, rv;
  int stor_k, stor_v;  // RowStorage values
  int row_bytes_k, row_bytes_v;
  int qpc;             // query heads per block
  int chunks;          // heads per group / qpc
  int splits;
  int tiles_per_split;
  float inv_sqrt_d;
  const float* q;         // [H, 128]
  const __half* m;        // [H, 128, rk] folded q·B^K (f16)
  const float* ab;        // [H, 128] bias terms α (i < 64), β (i ≥ 64); nullptr = none
  const float* inv_freq;  // [64]
  const float4* trig;     // [T, 64] (cos, sin) pairs as float2, read two pairs at a time
  float* pm;              // [H, splits]
  float* pl;              // [H, splits]
  float* pacc;            // [width · splits · wgroups]
  int stages;             // tile buffers per warp group (2: the next tile loads during this one)
  int wgroups;            // warp groups per block, each its own split of the tokens
};

// Shared memory: M rows, bias terms and inv_freq once per block; then per warp group (1 or 2
// groups of 4 warps per query head, each walking its own tiles) its tile stages and state.
struct SmemLayout {
  size_t ms, invf, ab, gbase, group_bytes, total;                // block-wide
  size_t zk, rawk, rawv, sc, red, p, stat, acc;                  // inside a group
  size_t zk_stage, rawk_stage, rawv_stage;
};

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) / 16 * 16; }

__host__ __device__ inline SmemLayout smem_layout(int qpc, int rk, int rv, int stor_k, int row_bytes_k,
                                                  int row_bytes_v, int stages, int wgroups) {
  SmemLayout L{};
  const bool k_f16 = stor_k == (int)RowStorage::kF16;
  size_t o = 0;
  L.ms = o;
  o += align16((size_t)qpc * kHD * (rk + kPadHalves) * 2);
  L.invf = o;
  o += kHalf * 4;
  L.ab = o;
  o += align16((size_t)qpc * kHD * 4);
  L.gbase = o;
  size_t g = 0;
  L.zk = g;
  L.zk_stage = k_f16 ? align16((size_t)kTT * (rk + kPadHalves) * 2) : 0;
  g += align16((size_t)kTT * (rk + kPadHalves) * 2) * (k_f16 ? stages : 1);
  L.rawk = g;
  L.rawk_stage = k_f16 ? 0 : align16((size_t)kTT * row_bytes_k + 16);
  g += stages * L.rawk_stage;
  L.rawv = g;
  L.rawv_stage = align16((size_t)kTT * row_bytes_v + 16);
  g += stages * L.rawv_stage;
  L.sc = g;
  g += stages * 4 * kTT * 4;
  L.red = g;
  g += align16((size_t)4 * qpc * kTT * 4);
  L.p = g;
  g += align16((size_t)qpc * kTT * 4);
  L.stat = g;
  g += align16((size_t)3 * qpc * 4);
  L.acc = g;
  g += align16((size_t)qpc * rv * 4);
  L.group_bytes = g;
  L.total = o + (size_t)wgroups * g;
  return L;
}

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

// acc[h][c] = acc·corr + Σ_t p[h][t] · z^V[t][c] for NH heads, STOR known at compile time (the
// decode folds to straight-line code; two partial sums per head for instruction-level parallelism).
template <int NH, int STOR>
__device__ __forceinline__ void pv_accumulate(float* acc_s, const float* c_s, const float* Ps, const uint8_t* rawv,
                                              int row_bytes_v, const float* scv, const float* zrv, int rv, int h0,
                                              int nvalid, int tid, int nthr) {
  constexpr bool packed = STOR >= (int)RowStorage::kQ8;
  for (int c = tid; c < rv; c += nthr) {
    float a[NH], b[NH];
#pragma unroll
    for (int hh = 0; hh < NH; ++hh) {
      a[hh] = acc_s[(h0 + hh) * rv + c] * c_s[h0 + hh];
      b[hh] = 0.f;
    }
    int t = 0;
#pragma unroll 2
    for (; t + 1 < nvalid; t += 2) {
      const float z0 = decode1(STOR, rawv + (size_t)t * row_bytes_v, c, packed ? scv[t] : 0.f, packed ? zrv[t] : 0.f);
      const float z1 = decode1(STOR, rawv + (size_t)(t + 1) * row_bytes_v, c, packed ? scv[t + 1] : 0.f,
                               packed ? zrv[t + 1] : 0.f);
#pragma unroll
      for (int hh = 0; hh < NH; ++hh) {
        a[hh] += Ps[(h0 + hh) * kTT + t] * z0;
        b[hh] += Ps[(h0 + hh) * kTT + t + 1] * z1;
      }
    }
    if (t < nvalid) {
      const float z0 = decode1(STOR, rawv + (size_t)t * row_bytes_v, c, packed ? scv[t] : 0.f, packed ? zrv[t] : 0.f);
#pragma unroll
      for (int hh = 0; hh < NH; ++hh) a[hh] += Ps[(h0 + hh) * kTT + t] * z0;
    }
#pragma unroll
    for (int hh = 0; hh < NH; ++hh) acc_s[(h0 + hh) * rv + c] = a[hh] + b[hh];
  }
}

template <int NH>
__device__ __forceinline__ void pv_dispatch_nh(int stor, float* acc_s, const float* c_s, const float* Ps,
                                               const uint8_t* rawv, int rbv, const float* scv, const float* zrv,
                                               int rv, int h0, int nvalid, int tid, int nthr) {
  switch (stor) {
#define PALU_PV_CASE(S) \
  case (int)S: pv_accumulate<NH, (int)S>(acc_s, c_s, Ps, rawv, rbv, scv, zrv, rv, h0, nvalid, tid, nthr); break;
    PALU_PV_CASE(RowStorage::kF32)
    PALU_PV_CASE(RowStorage::kF16)
    PALU_PV_CASE(RowStorage::kBF16)
    PALU_PV_CASE(RowStorage::kQ8)
    PALU_PV_CASE(RowStorage::kQ4)
    PALU_PV_CASE(RowStorage::kQ3)
    PALU_PV_CASE(RowStorage::kQ2)
#undef PALU_PV_CASE
  }
}

// table[t, f] = (cos, sin)(fl(t·inv_freq[f])) for t < T: one evaluation per (token, frequency)
// per call, shared by every group and head (the model could keep one for its context length).
__global__ void rope_table_kernel(const float* inv_freq, int T, float2* table) {
  for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < (size_t)T * kHalf;
       idx += (size_t)gridDim.x * blockDim.x) {
    const int t = (int)(idx / kHalf), f = (int)(idx % kHalf);
    float s, c;
    rope_sincos(__fmul_rn((float)t, inv_freq[f]), &s, &c);
    table[idx] = make_float2(c, s);
  }
}

// M_h[i] = a_i, M_h[64+i] = b_i (f16) for every query head; α/β of the key bias likewise (f32).
__global__ void fold_q_kernel(const __grid_constant__ LatentParams P, int n_rep, __half* m, float* ab) {
  const int rk = P.rk;
  const float* q = P.q;
  const int gl = blockIdx.y;
  const int lh = blockIdx.x;  // query head inside the group
  const int h = P.g[gl].first_head + lh;
  const int u = lh / n_rep;
  const float* qh = q + (size_t)h * kHD;
  const __half* B = P.g[gl].bk + (size_t)u * kHD * rk;
  __half* M = m + (size_t)h * kHD * rk;
  // blockIdx.z slices the frequencies (more blocks than the heads alone: the loop is latency-bound)
  const int i_per = (kHalf + gridDim.z - 1) / gridDim.z, i_lo = blockIdx.z * i_per, i_hi = min(kHalf, i_lo + i_per);
  for (int idx = i_lo * rk + threadIdx.x; idx < i_hi * rk; idx += blockDim.x) {
    const int i = idx / rk, k = idx % rk;
    const float2 f = fold_q_pair(qh[i], qh[i + kHalf], __half2float(B[(size_t)i * rk + k]),
                                 __half2float(B[(size_t)(i + kHalf) * rk + k]));
    M[(size_t)i * rk + k] = __float2half_rn(f.x);
    M[(size_t)(i + kHalf) * rk + k] = __float2half_rn(f.y);
  }
  if (ab != nullptr && blockIdx.z == 0 && threadIdx.x < kHalf) {
    const int i = threadIdx.x;
    const float* bias = P.g[gl].kbias;
    const float2 f = bias != nullptr ? fold_q_pair(qh[i], qh[i + kHalf], bias[u * kHD + i], bias[u * kHD + i + kHalf])
                                     : make_float2(0.f, 0.f);
    ab[(size_t)h * kHD + i] = f.x;
    ab[(size_t)h * kHD + i + kHalf] = f.y;
  }
}

__global__ void __launch_bounds__(2 * kThreadsMax, 1) latent_decode_kernel(const __grid_constant__ LatentParams P) {
  extern __shared__ __align__(16) uint8_t smem[];
  const int tid_block = threadIdx.x, nthr_block = blockDim.x;
  const int nthr = nthr_block / P.wgroups;  // threads of one warp group
  const int wg = tid_block / nthr, tid = tid_block % nthr;
  const int warp = tid >> 5, lane = tid & 31;
  const int split = blockIdx.x * P.wgroups + wg;  // each warp group is a split of its own
  const int gl = blockIdx.y / P.chunks, chunk = blockIdx.y % P.chunks;
  const GroupPtrs& G = P.g[gl];
  const int qpc = P.qpc;
  const int rk = P.rk, rv = P.rv, ldk = rk + kPadHalves;
  const SmemLayout L = smem_layout(qpc, rk, rv, P.stor_k, P.row_bytes_k, P.row_bytes_v, P.stages, P.wgroups);
  __half* Ms = reinterpret_cast<__half*>(smem + L.ms);
  float* invf = reinterpret_cast<float*>(smem + L.invf);
  float* ab_s = reinterpret_cast<float*>(smem + L.ab);
  uint8_t* gsm = smem + L.gbase + (size_t)wg * L.group_bytes;  // this warp group's part
  float* red = reinterpret_cast<float*>(gsm + L.red);
  float* Ps = reinterpret_cast<float*>(gsm + L.p);
  float* m_s = reinterpret_cast<float*>(gsm + L.stat);
  float* l_s = m_s + qpc;
  float* c_s = m_s + 2 * qpc;
  float* acc_s = reinterpret_cast<float*>(gsm + L.acc);
  // A barrier of this warp group only (named barrier 1 + wg), so the groups drift apart and one
  // computes while the other waits for its loads.
  auto group_sync = [&]() {
    if (wg == 0)
      asm volatile("bar.sync 1, %0;\n" ::"r"(nthr) : "memory");
    else
      asm volatile("bar.sync 2, %0;\n" ::"r"(nthr) : "memory");
  };

  const int head0 = G.first_head + chunk * qpc;  // first global query head of this block
  const bool k_f16 = P.stor_k == (int)RowStorage::kF16;
  const bool k_packed = P.stor_k >= (int)RowStorage::kQ8;
  const bool v_packed = P.stor_v >= (int)RowStorage::kQ8;

  // ---- once per block: folded M rows, bias terms, inv_freq, state
  {
    const int row16 = rk / 8;
    const int n16 = qpc * kHD * row16;
    const uint4* src = reinterpret_cast<const uint4*>(P.m + (size_t)head0 * kHD * rk);
    for (int i = tid_block; i < n16; i += nthr_block) {
      const int r = i / row16, c = i % row16;
      cp_async16(Ms + (size_t)r * ldk + c * 8, src + i);
    }
    cp_async_commit();
    for (int i = tid_block; i < qpc * kHD; i += nthr_block)
      ab_s[i] = P.ab != nullptr ? P.ab[(size_t)head0 * kHD + i] : 0.f;
    if (tid_block < kHalf) invf[tid_block] = P.inv_freq[tid_block];
    for (int i = tid; i < qpc; i += nthr) {
      m_s[i] = -INFINITY;
      l_s[i] = 0.f;
    }
    for (int i = tid; i < qpc * rv; i += nthr) acc_s[i] = 0.f;
  }
  __syncthreads();  // inv_freq is read by the first tile's cos/sin before the loop's first barrier

  const int tiles_total = (P.T + kTT - 1) / kTT;
  const int tile_begin = blockIdx.x * P.tiles_per_split;
  const int tile_end = min(tiles_total, tile_begin + P.tiles_per_split);
  const int tile_step = P.wgroups;  // group wg takes tiles tile_begin + wg, + 2·wg ...

  // Queue the raw bytes of `tile` into stage `st`: z^K (f16: straight into the padded MMA rows),
  // z^V, scales and zeros.
  auto issue = [&](int tile, int st) {
    const int nvalid = min(kTT, P.T - tile * kTT);
    const int bk = nvalid * P.row_bytes_k, bv = nvalid * P.row_bytes_v;
    const int nk16 = bk / 16, nv16 = bv / 16;
    const uint8_t* gk = G.zk + (size_t)tile * kTT * P.row_bytes_k;
    const uint8_t* gv = G.zv + (size_t)tile * kTT * P.row_bytes_v;
    uint8_t* zk = gsm + L.zk + st * L.zk_stage;
    uint8_t* rawk = gsm + L.rawk + st * L.rawk_stage;
    uint8_t* rawv = gsm + L.rawv + st * L.rawv_stage;
    for (int c = tid; c < nk16 + nv16; c += nthr) {
      if (c < nk16) {
        const int o = c * 16;
        if (k_f16) {
          const int t = o / P.row_bytes_k, cb = o % P.row_bytes_k;
          cp_async16(zk + (size_t)t * ldk * 2 + cb, gk + o);
        } else {
          cp_async16(rawk + o, gk + o);
        }
      } else {
        const int o = (c - nk16) * 16;
        cp_async16(rawv + o, gv + o);
      }
    }
    const int nkt = (bk % 16) / 4, nvt = (bv % 16) / 4;  // 4-byte tails (never for f16)
    if (tid < nkt) cp_async4(rawk + nk16 * 16 + 4 * tid, gk + nk16 * 16 + 4 * tid);
    if (tid < nvt) cp_async4(rawv + nv16 * 16 + 4 * tid, gv + nv16 * 16 + 4 * tid);
    float* sc = reinterpret_cast<float*>(gsm + L.sc) + st * 4 * kTT;
    const int t0 = tile * kTT;
    if (tid < nvalid) {
      if (k_packed) {
        cp_async4(sc + tid, G.sk + t0 + tid);
        cp_async4(sc + kTT + tid, G.zrk + t0 + tid);
      }
      if (v_packed) {
        cp_async4(sc + 2 * kTT + tid, G.sv + t0 + tid);
        cp_async4(sc + 3 * kTT + tid, G.zrv + t0 + tid);
      }
    }
  };

  const int first = tile_begin + wg;
  if (P.stages == 2 && first < tile_end) issue(first, 0);
  cp_async_commit();

  const int hl = warp >> 2, qd = warp & 3;  // query head in block, row quarter
  int it = 0;
  for (int tile = first; tile < tile_end; tile += tile_step, ++it) {
    const int st = P.stages == 2 ? (it & 1) : 0;
    const int nvalid = min(kTT, P.T - tile * kTT);
    const int t0 = tile * kTT;
    if (P.stages == 1) issue(tile, 0);
    else if (tile + tile_step < tile_end) issue(tile + tile_step, st ^ 1);
    cp_async_commit();
    if (P.stages == 2)
      cp_async_wait<1>();
    else
      cp_async_wait<0>();
    group_sync();
    const float* sc = reinterpret_cast<const float*>(gsm + L.sc) + st * 4 * kTT;
    const uint8_t* rawv = gsm + L.rawv + st * L.rawv_stage;
    __half* Zk = reinterpret_cast<__half*>(gsm + L.zk + st * L.zk_stage);
    if (!k_f16) {  // dequantize z^K to f16 rows of the MMA tile
      const uint8_t* rawk = gsm + L.rawk + st * L.rawk_stage;
      const int per_row = rk / 8;
      for (int i = tid; i < nvalid * per_row; i += nthr) {
        const int t = i / per_row, i0 = (i % per_row) * 8;
        const float s = k_packed ? sc[t] : 0.f, z = k_packed ? sc[kTT + t] : 0.f;
        *reinterpret_cast<uint4*>(Zk + (size_t)t * ldk + i0) =
            decode8_half(P.stor_k, rawk + (size_t)t * P.row_bytes_k, i0, s, z);
      }
      group_sync();
    }

    // cos/sin of this thread's (token, frequency) pairs, loaded before the MMA so their latency
    // hides behind it: rows mt·16 + lane/4 + 8·rh, frequencies qd·16 + 8·nt + 2·(lane%4) + {0,1}.
    float4 tg[2][2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int rh = 0; rh < 2; ++rh)
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
          const int row = mt * 16 + (lane >> 2) + rh * 8;
          const int i = qd * 16 + nt * 8 + (lane & 3) * 2;
          tg[mt][rh][nt] = row < nvalid ? __ldg(P.trig + ((size_t)(t0 + row) * kHalf + i) / 2) : make_float4(0, 0, 0, 0);
        }
    // ---- P = Z^K · Mᵀ: this warp's 32 tokens × (a rows 16·qd.., b rows 64+16·qd..)
    float acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 4; ++b)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[a][b][c] = 0.f;
    {
      const __half* a_base = Zk + (size_t)(lane & 15) * ldk + (lane >> 4) * 8;
      const int brow = (lane & 7) + ((lane >> 4) << 3);
      const int bcol = ((lane >> 3) & 1) * 8;
      const __half* b_lo = Ms + (size_t)(hl * kHD + qd * 16 + brow) * ldk + bcol;
      const __half* b_hi = b_lo + (size_t)kHalf * ldk;
      const bool two = nvalid > 16;
#pragma unroll 4
      for (int k0 = 0; k0 < rk; k0 += 16) {
        uint32_t bl[4], bh[4], a0[4], a1[4];
        ldmatrix_x4(bl, b_lo + k0);
        ldmatrix_x4(bh, b_hi + k0);
        ldmatrix_x4(a0, a_base + k0);
        mma_16816(acc[0][0], a0, bl[0], bl[1]);
        mma_16816(acc[0][1], a0, bl[2], bl[3]);
        mma_16816(acc[0][2], a0, bh[0], bh[1]);
        mma_16816(acc[0][3], a0, bh[2], bh[3]);
        if (two) {
          ldmatrix_x4(a1, a_base + (size_t)16 * ldk + k0);
          mma_16816(acc[1][0], a1, bl[0], bl[1]);
          mma_16816(acc[1][1], a1, bl[2], bl[3]);
          mma_16816(acc[1][2], a1, bh[0], bh[1]);
          mma_16816(acc[1][3], a1, bh[2], bh[3]);
        }
      }
    }
    // ---- partial scores: Σ over this warp's frequencies of cos·(a·z + α) + sin·(b·z + β)
    {
      const float* abh = ab_s + hl * kHD;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int rh = 0; rh < 2; ++rh) {
          const int row = mt * 16 + (lane >> 2) + rh * 8;
          float part = 0.f;
#pragma unroll
          for (int f = 0; f < 4; ++f) {
            const int nt = f >> 1, c = f & 1;
            const int i = qd * 16 + nt * 8 + (lane & 3) * 2 + c;
            const float4 q4 = tg[mt][rh][nt];
            const float cs_x = c ? q4.z : q4.x, cs_y = c ? q4.w : q4.y;
            part += cs_x * (acc[mt][nt][rh * 2 + c] + abh[i]) + cs_y * (acc[mt][nt + 2][rh * 2 + c] + abh[i + kHalf]);
          }
          part += __shfl_xor_sync(0xffffffffu, part, 1);
          part += __shfl_xor_sync(0xffffffffu, part, 2);
          if ((lane & 3) == 0) red[(qd * qpc + hl) * kTT + row] = part;
        }
      }
    }
    group_sync();
    // ---- online softmax, one warp per query head
    for (int h = warp; h < qpc; h += nthr / 32) {
      const int t = lane;
      const float s = t < nvalid ? (((red[(0 * qpc + h) * kTT + t] + red[(1 * qpc + h) * kTT + t]) +
                                     red[(2 * qpc + h) * kTT + t]) +
                                    red[(3 * qpc + h) * kTT + t]) *
                                       P.inv_sqrt_d
                                 : -INFINITY;
      float mx = s;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_old = m_s[h];
      const float m_new = fmaxf(m_old, mx);
      const float corr = expf(m_old - m_new);
      const float p = expf(s - m_new);
      Ps[h * kTT + t] = p;
      float sum = p;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane == 0) {
        l_s[h] = l_s[h] * corr + sum;
        m_s[h] = m_new;
        c_s[h] = corr;
      }
    }
    group_sync();
    // ---- acc = acc·corr + Σ_t p_t · z^V_t
    if (qpc == 2)
      pv_dispatch_nh<2>(P.stor_v, acc_s, c_s, Ps, rawv, P.row_bytes_v, sc + 2 * kTT, sc + 3 * kTT, rv, 0, nvalid, tid,
                        nthr);
    else
      pv_dispatch_nh<1>(P.stor_v, acc_s, c_s, Ps, rawv, P.row_bytes_v, sc + 2 * kTT, sc + 3 * kTT, rv, 0, nvalid, tid,
                        nthr);
    group_sync();  // stage st is free for the next issue
  }
  cp_async_wait<0>();
  group_sync();
  // ---- this split's partials
  for (int h = tid; h < qpc; h += nthr) {
    P.pm[(size_t)(head0 + h) * P.splits + split] = m_s[h];
    P.pl[(size_t)(head0 + h) * P.splits + split] = l_s[h];
  }
  for (int i = tid; i < qpc * rv; i += nthr) {
    const int h = i / rv, c = i % rv;
    const size_t out_off = (size_t)G.out_off + (size_t)(chunk * qpc + h) * rv;
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

// Block shape for one group configuration: query heads per block, tile stages, warp groups.
struct BlockShape {
  int qpc = 0, stages = 2, wgroups = 1;
  size_t smem = 0;
};

// The shape with the most resident warps per SM (shared memory and 128 registers per thread
// permitting); ties go to one warp group with two stages. `forced_qpc` ≠ 0 pins the heads.
BlockShape pick_shape(const CudaAttentionShape& sh, const CudaLatentGroup& g, int max_smem, int forced_qpc = 0,
                      int smem_per_sm = 233472) {
  const int hq = sh.group_size * (sh.num_heads / sh.num_kv_heads);
  BlockShape best;
  int best_warps = 0;
  for (int qpc : {2, 1}) {
    if (hq % qpc != 0 || (forced_qpc != 0 && qpc != forced_qpc)) continue;
    for (const auto [stages, wgroups] : {std::pair{2, 1}, std::pair{1, 2}, std::pair{2, 2}}) {
      const SmemLayout L =
          smem_layout(qpc, g.k.rank, g.v.rank, storage_int(g.k.storage), (int)row_storage_bytes(g.k.storage, g.k.rank),
                      (int)row_storage_bytes(g.v.storage, g.v.rank), stages, wgroups);
      if (L.total > (size_t)max_smem) continue;
      const int threads = qpc * 128 * wgroups;
      const int by_smem = (int)(smem_per_sm / (L.total + 1024));
      const int by_regs = 65536 / (threads * 128);
      const int warps = std::min(by_smem, by_regs) * threads / 32;
      if (warps > best_warps) {
        best_warps = warps;
        best = BlockShape{qpc, stages, wgroups, L.total};
      }
    }
    if (best_warps > 0) break;  // prefer 2 heads per block when anything fits
  }
  return best;
}

}  // namespace

namespace detail {
namespace {
// One block per (query head, 128 value channels). Every thread first loads its channel's partials
// of the first kPre splits (independent loads, in flight while warp 0 turns the splits' (max, sum)
// into weights w_s = e^{m_s−M} and 1 / Σ_s w_s l_s, double, in shared memory), then sums them in
// split order (one exp per split instead of one per element). Launched as a programmatic
// dependent of the attention kernel on sm_90 (griddepcontrol): its blocks wait on the SMs the
// attention kernel leaves free instead of being launched after it ends.
__global__ void merge_splits_kernel(const float* pm, const float* pl, const float* pacc, int splits, int first_head,
                                    int out_off0, int rv, float* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");  // the attention kernel's partials (no-op without PDL)
#endif
  extern __shared__ double w[];  // [splits]
  const int h = first_head + blockIdx.x;
  const size_t off = (size_t)out_off0 + (size_t)blockIdx.x * rv;
  const int c = blockIdx.y * blockDim.x + threadIdx.x;
  const float* src = pacc + off * splits;
  constexpr int kPre = 16;
  float pre[kPre];
#pragma unroll
  for (int s = 0; s < kPre; ++s) pre[s] = s < splits && c < rv ? src[(size_t)s * rv + c] : 0.f;
  __shared__ double inv_l;
  if (threadIdx.x < 32) {  // warp 0: max, weights and their sum over the splits, lanes in parallel
    const int lane = threadIdx.x;
    float M = -INFINITY;
    for (int s = lane; s < splits; s += 32)  // (a split of l = 0 saw no token: its m and acc are not read)
      if (pl[(size_t)h * splits + s] != 0.f) M = fmaxf(M, pm[(size_t)h * splits + s]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    double l = 0.0;
    for (int s = lane; s < splits; s += 32) {
      const float ls = pl[(size_t)h * splits + s];
      w[s] = ls != 0.f ? exp((double)pm[(size_t)h * splits + s] - (double)M) : 0.0;
      l += w[s] * ls;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (lane == 0) inv_l = 1.0 / l;
  }
  __syncthreads();
  if (c >= rv) return;
  double o = 0.0;
#pragma unroll
  for (int s = 0; s < kPre; ++s)
    if (s < splits && w[s] != 0.0) o += w[s] * pre[s];
#pragma unroll 8
  for (int s = kPre; s < splits; ++s)
    if (w[s] != 0.0) o += w[s] * src[(size_t)s * rv + c];
  out[off + c] = (float)(o * inv_l);
}
}  // namespace

Status launch_merge_splits(const float* pm, const float* pl, const float* pacc, int splits, int first_head,
                           int heads, int out_off0, int rv, float* out, cudaStream_t stream, bool pdl) {
  const size_t smem = (size_t)splits * sizeof(double);
  if (smem > 48 * 1024)
    return unimplemented("cuda decode attention: " + std::to_string(splits) + " token splits exceed the merge's 6144");
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3((unsigned)heads, (unsigned)((rv + 127) / 128));
  cfg.blockDim = dim3(128);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr{};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = pdl ? 1 : 0;
  PALU_CUDA_RETURN_IF_ERROR(cudaLaunchKernelEx(&cfg, merge_splits_kernel, pm, pl, pacc, splits, first_head, out_off0, rv, out));
  return Status::ok();
}

Result<DeviceLimits> device_limits() {
  DeviceLimits d;
  PALU_CUDA_RETURN_IF_ERROR(cudaGetDevice(&d.device));
  PALU_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, d.device));
  PALU_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&d.max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, d.device));
  PALU_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&d.cc_major, cudaDevAttrComputeCapabilityMajor, d.device));
  PALU_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&d.cc_minor, cudaDevAttrComputeCapabilityMinor, d.device));
  return d;
}

// (attention_cuda_internal.h) The pair schedule's segmented partition: W = groups · tiles
// flattened tiles (group g's tile t at g · tiles + t) over at most nb blocks (per head pair), each
// block a run of consecutive tiles whose load — its tiles plus `cost` per change of group inside
// it — is at most R, for the least such R (binary search over R; a block moves on to the next
// group only while more than `cost` of its load is left). lo gets the blocks' first tiles and
// then W; first[g] the block holding group g's first tile, count[g] the blocks group g's tiles
// fall in; returns the largest count.
int seg_partition(int groups, int tiles, int nb, int cost, std::vector<int>& lo, std::vector<int>& first,
                  std::vector<int>& count) {
  const long long W = (long long)groups * tiles;
  auto fill = [&](long long R, std::vector<int>* out) {
    long long pos = 0;
    int n = 0;
    while (pos < W) {
      if (out != nullptr) out->push_back((int)pos);
      ++n;
      long long cap = R;
      for (;;) {
        const long long g_end = (pos / tiles + 1) * tiles, take = std::min(cap, g_end - pos);
        pos += take;
        cap -= take;
        if (pos >= W || pos < g_end || cap <= cost) break;
        cap -= cost;
      }
    }
    if (out != nullptr) out->push_back((int)W);
    return n;
  };
  long long a = (W + nb - 1) / nb, b = W + (long long)groups * cost;  // fill(b) = 1 block
  while (a < b) {
    const long long m = (a + b) / 2;
    if (fill(m, nullptr) <= nb) b = m;
    else a = m + 1;
  }
  lo.clear();
  fill(a, &lo);
  first.assign(groups, 0);
  count.assign(groups, 0);
  int most = 0;
  for (int g = 0; g < groups; ++g) {
    const long long g0 = (long long)g * tiles, g1 = g0 + tiles;
    int n = 0;
    for (size_t y = 0; y + 1 < lo.size(); ++y)
      if (lo[y] < g1 && lo[y + 1] > g0) {
        if (n++ == 0) first[g] = (int)y;
      }
    count[g] = n;
    most = std::max(most, n);
  }
  return most;
}
}  // namespace detail

size_t latent_decode_scratch_bound(const CudaAttentionShape& sh, const CudaLatentGroup* groups, int T) {
  if (sh.num_heads <= 0 || sh.num_kv_heads <= 0 || sh.group_size <= 0 || T <= 0 || groups == nullptr) return 0;
  const int G = sh.num_kv_heads / sh.group_size;
  const int hq = sh.group_size * (sh.num_heads / sh.num_kv_heads);
  // The batches latent_attention_decode_cuda forms: groups of one configuration, ≤ kMaxBatch each.
  size_t batches = 0, width = 0, max_rk = 0;
  bool any_bias = false;
  std::vector<bool> taken(G, false);
  for (int g = 0; g < G; ++g) {
    width += (size_t)hq * groups[g].v.rank;
    max_rk = std::max(max_rk, (size_t)groups[g].k.rank);
    any_bias = any_bias || groups[g].k_bias != nullptr;
    if (taken[g]) continue;
    int in_batch = 0;
    for (int h = g; h < G; ++h) {
      const auto &x = groups[g], &y = groups[h];
      if (taken[h] || x.k.rank != y.k.rank || x.v.rank != y.v.rank || x.k.storage != y.k.storage ||
          x.v.storage != y.v.storage)
        continue;
      taken[h] = true;
      if (++in_batch == kMaxBatch) {
        ++batches;
        in_batch = 0;
      }
    }
    if (in_batch > 0) ++batches;
  }
  // splits ≤ the token tiles, ≤ 2 warp groups per block (sm_80); ≤ 4 warps per 64-token tile (sm_90a).
  const size_t splits = std::max(2 * (size_t)((T + kTT - 1) / kTT),
                                 4 * (size_t)((T + detail::kSm90Tile - 1) / detail::kSm90Tile));
  const size_t part = batches * width * splits, stat = batches * (size_t)sh.num_heads * splits;
  const size_t ab = any_bias ? (size_t)sh.num_heads * kHD : 0;
  const size_t m = batches * (size_t)sh.num_heads * kHD * max_rk;
  return (part + 2 * stat + ab) * sizeof(float) + align16(m * 2) + align16((size_t)T * kHalf * sizeof(float2)) + 256;
}

// The sm_90a kernel's measurement settings, each read once by the function that caches it.
namespace {
int env_int_or(const char* name, int dflt) {
  const char* e = std::getenv(name);
  return e != nullptr ? std::atoi(e) : dflt;
}
// PALU_CUDA_SM90_WS (before/after comparisons): 0 the cp.async ring / pipelined schedule, 1 the
// producer (TMA warp for f16, decoding warpgroup for q4 keys and values) without the ping-pong,
// unset or 2 the producer with it.
int sm90_ws_setting() {
  static const int ws = env_int_or("PALU_CUDA_SM90_WS", 2);
  return ws;
}
// PALU_CUDA_SM90_DEC_WGS: producer warpgroups of the decoding schedule (q4 keys and values), 1, 2
// (default) or 3 (measurements).
int sm90_dec_wgs() {
  static const int n = [] {
    const int v = env_int_or("PALU_CUDA_SM90_DEC_WGS", 2);
    return v >= 1 && v <= 3 ? v : 2;
  }();
  return n;
}
// PALU_CUDA_SM90_SHAREPV=0 (before/after comparisons): each warpgroup runs its head's p·z^V chain
// instead of one chain for both heads.
int sm90_share_pv() {
  static const int v = env_int_or("PALU_CUDA_SM90_SHAREPV", 1);
  return v;
}
// PALU_CUDA_SM90_SPLITS (measurements): blocks along the tokens per (group, head pair) for the
// sm_90a kernel instead of the default.
int sm90_splits_setting() {
  static const int v = env_int_or("PALU_CUDA_SM90_SPLITS", 0);
  return v;
}
// PALU_CUDA_SM90_PAIR: 1 (default) f16 keys and values run the pair schedule (one warpgroup per
// tile for both heads) with the two warpgroups' key chains free to overlap; 2 the same with the
// ping-pong (the warpgroups take turns issuing them; 1–2% slower on the H100 at 16K–128K, four
// interleaved runs, 2026-11-25); 0 the per-head ring schedule (before/after comparisons).
int sm90_pair_setting() {
  static const int v = env_int_or("PALU_CUDA_SM90_PAIR", 1);
  return v;
}
// PALU_CUDA_SM90_SEG: 1 (default) the pair schedule's blocks (SMs ÷ head pairs per head pair)
// take runs of all the batch's groups' tiles (seg_partition), a run crossing into the next group
// where that pays; 0 a whole number of blocks per (group, head pair) (before/after comparisons).
int sm90_seg_setting() {
  static const int v = env_int_or("PALU_CUDA_SM90_SEG", 1);
  return v;
}
// PALU_CUDA_SM90_SEG_COST (measurements): what a change of group inside a block costs, in tiles,
// for the segmented partition (its consumers drain, refold M and ramp up again: ~8 µs on the H100,
// about 4 tiles at 64K, 2026-11-25).
int sm90_seg_cost() {
  static const int v = env_int_or("PALU_CUDA_SM90_SEG_COST", 4);
  return v;
}
// PALU_CUDA_SM90_COMBINE=0 (before/after comparisons): the pair schedule's two warpgroups write
// a split each instead of combining them in the block into one.
int sm90_combine_setting() {
  static const int v = env_int_or("PALU_CUDA_SM90_COMBINE", 1);
  return v;
}
// PALU_CUDA_SM90_PAIR_DEC: q4 keys and values run the pair schedule with its decoding producer
// (1, default) at key rank 256 from kPairDecMinT tokens on, (2) wherever it applies (key rank
// 128 too, every T), (0) never: the per-head ring with the decoding producer warpgroups
// (PALU_CUDA_SM90_DEC_WGS) instead. H100, 2026-11-25 (scripts/cuda-bench.sh, µs, pair against
// per-head ring): q4 256/256 49.3 / 44.2 at 4K, 125.6 / 122.7 at 16K, 415.5 / 435.6 at 64K,
// 824.5 / 861.5 at 128K; q4 128/384 44.6 / 38.2, 113.6 / 107.4, 385.8 / 386.3, 757.4 / 766.2
// (its producer's decode sits on the ring's critical path, which the longer splits amortise).
// Three interleaved runs at 32K: 256/256 221–235 against 227–229, 128/384 203–210 against
// 200–203; at 48K 316–324 against 331–334 and 293–300 against 293–296.
// With the register-operand form (sm90_pair_reg_enabled, value ranks a multiple of 128) the pair
// schedule runs at every T: H100, 2026-11-25 (palu-cuda-attention-bench, two runs, µs, pair
// against per-head ring): q4 256/256 44.3 / 44.6–48.8 at 4K, 105–108 / 125–128 at 16K, 179–185 /
// 228–231 at 32K, 639–656 / 868–870 at 128K; q4 128/384 38.6 / 38.9–40.6, 90–92 / 108–109,
// 158–162 / 200–204, 573 / 774.
constexpr int kPairDecMinT = 32768;
int sm90_pair_dec_setting() {
  static const int v = env_int_or("PALU_CUDA_SM90_PAIR_DEC", 1);
  return v;
}
// Whether the pair schedule runs these groups (the caller also needs 16-byte aligned rows): f16
// keys and values with the TMA producer (PALU_CUDA_SM90_WS ≥ 1) and the driver's tensor-map entry
// point, or q4 ones with the decoding producer (key rank 128 or 256).
// (Until the ring race fixed on 2026-11-25, one full barrier per buffer, it hung at 64K without
// the ping-pong in each of 8 runs, and failed about one 64K bench run in 30 with it; since then
// neither in 30+ runs each, latent_attention_sm90.cu.)
// T: the context length (0 = long: the launch plan's report); force_dec: CudaDecodeOptions::sm90_pair_dec.
// force_reg: CudaDecodeOptions::sm90_pair_reg.
bool sm90_pair(const detail::Sm90Plan& s9, const CudaLatentGroup& g0, bool pipeline, int T = 0, int force_dec = -1,
               int force_reg = -1) {
  if (!pipeline || sm90_ws_setting() < 1 || sm90_pair_setting() == 0) return false;
  if (g0.k.storage == RowStorage::kF16 && g0.v.storage == RowStorage::kF16)
    return s9.ring && g0.v.rank <= 256 && detail::sm90_tma_available();
  // q4 keys and values: the decoding producer's ring (s9.dec_ring: q4 both) and ranks it takes
  if (!s9.dec_ring || !detail::sm90_pair_dec_shape(g0.k.rank, g0.v.rank)) return false;
  if (force_dec >= 0) return force_dec == 1 || force_dec == 2;
  const int dec = sm90_pair_dec_setting();
  const bool reg = detail::sm90_pair_reg_shape(g0.k.rank, g0.v.rank) && detail::sm90_pair_reg_enabled(force_reg);
  return dec == 2 || (dec == 1 && (reg || (g0.k.rank == 256 && (T == 0 || T >= kPairDecMinT))));
}
}  // namespace

LatentLaunchPlan plan_latent_launch(const CudaAttentionShape& shape, const CudaLatentGroup& group) {
  LatentLaunchPlan p;
  auto lim = detail::device_limits();
  if (!lim.is_ok()) return p;
  const int hq = shape.num_kv_heads > 0 ? shape.group_size * (shape.num_heads / shape.num_kv_heads) : 0;
  if (lim->cc_major == 9 && lim->cc_minor == 0 && shape.head_dim == kHD) {
    const detail::Sm90Plan s9 = detail::plan_latent_sm90(
        hq, group.k.rank, group.v.rank, storage_int(group.k.storage), storage_int(group.v.storage),
        (int)row_storage_bytes(group.k.storage, group.k.rank), (int)row_storage_bytes(group.v.storage, group.v.rank),
        lim->max_smem_optin);
    if (s9.ok) {
      p.heads_per_block = 2;
      p.smem_bytes = s9.smem;
      // (+ the TMA producer warp where the ring runs on f16 keys and values, + the decoding
      // producer warpgroup(s) for q4 ones: the pair schedule's at key rank 256 and long context,
      // kPairDecMinT)
      const bool ws = sm90_ws_setting() >= 1;
      const bool pair = sm90_pair(s9, group, true);
      p.threads = detail::kSm90Threads + (pair ? 128
                                          : ws && s9.ring && group.k.storage == RowStorage::kF16 &&
                                                  group.v.storage == RowStorage::kF16
                                              ? 32
                                          : ws && s9.dec_ring ? 128 * sm90_dec_wgs()
                                                              : 0);
      p.sm90 = true;
      return p;
    }
  }
  const BlockShape b = pick_shape(shape, group, lim->max_smem_optin);
  p.heads_per_block = b.qpc;
  p.smem_bytes = b.smem;
  p.threads = b.qpc * 128 * b.wgroups;
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
  bool any_bias = false;
  for (int g = 0; g < G; ++g) {
    if (groups[g].b_k == nullptr) return invalid_argument("cuda latent attention: group " + std::to_string(g) + " b_k is null");
    if (reinterpret_cast<uintptr_t>(groups[g].b_k) % 16 != 0)
      return invalid_argument("cuda latent attention: group " + std::to_string(g) + " b_k must be 16-byte aligned");
    PALU_RETURN_IF_ERROR(check_rows(groups[g].k, "k", g));
    PALU_RETURN_IF_ERROR(check_rows(groups[g].v, "v", g));
    any_bias = any_bias || groups[g].k_bias != nullptr;
  }
  PALU_ASSIGN_OR_RETURN(const detail::DeviceLimits lim, detail::device_limits());

  // Batches of groups with one configuration (≤ kMaxBatch each), in group order.
  struct Batch {
    std::vector<int> gs;
    int qpc = 0, splits = 0, tiles_per_split = 0, stages = 2, wgroups = 1;
    size_t smem = 0, part_off = 0, stat_off = 0, m_off = 0;
    detail::Sm90Plan sm90;  // .ok: this batch runs the sm_90a kernel (splits = blocks)
    bool dec_ring = false;  // sm90.dec_ring and every group's rows 16-byte aligned (16-byte code loads)
    bool pair = false;      // the pair schedule (sm90_pair, every group's rows 16-byte aligned)
    int seg_blocks = 0;     // (pair) > 0: the segmented grid, this many blocks per head pair (splits: the most per group)
    std::vector<int> seg_lo, seg_first;  // (seg_blocks > 0) seg_partition's
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
  size_t part_floats = 0, stat_floats = 0, m_halves = 0;
  const bool hopper = lim.cc_major == 9 && lim.cc_minor == 0 && !options.force_sm80 && options.heads_per_block != 1;
  for (Batch& b : batches) {
    const CudaLatentGroup& g0 = groups[b.gs[0]];
    if (hopper)
      b.sm90 = detail::plan_latent_sm90(hq, g0.k.rank, g0.v.rank, storage_int(g0.k.storage), storage_int(g0.v.storage),
                                        (int)row_storage_bytes(g0.k.storage, g0.k.rank),
                                        (int)row_storage_bytes(g0.v.storage, g0.v.rank), lim.max_smem_optin);
    if (b.sm90.ok) {
      // every group's rows 16-byte aligned: the decoding producers' 16-byte code loads, the pair
      // schedule's TMA boxes
      const bool aligned16 = std::all_of(b.gs.begin(), b.gs.end(), [&](int g) {
        return reinterpret_cast<uintptr_t>(groups[g].k.rows) % 16 == 0 &&
               reinterpret_cast<uintptr_t>(groups[g].v.rows) % 16 == 0;
      });
      b.dec_ring = b.sm90.dec_ring && aligned16;
      const int tiles64 = (T + detail::kSm90Tile - 1) / detail::kSm90Tile;
      const int blocks_y = (int)b.gs.size() * (hq / 2);
      const int env_splits = sm90_splits_setting();
      int splits = options.splits > 0 ? options.splits
                   : env_splits > 0   ? env_splits
                                      : std::max(1, lim.sms / blocks_y);
      splits = std::min(splits, tiles64);
      b.qpc = 2;
      b.smem = b.sm90.smem;
      b.splits = splits;  // blocks along x (the kernel spreads the tiles evenly over them)
      b.pair = aligned16 && sm90_pair(b.sm90, g0, options.sm90_pipeline, T, options.sm90_pair_dec, options.sm90_pair_reg);
      // partial splits per block and head: one (its warpgroup), or two (the pair schedule's
      // warpgroups each take every other tile)
      b.wgroups = b.pair && sm90_combine_setting() == 0 ? 2 : 1;
      // The pair schedule's segments (no split count asked for): per head pair at most `blocks`
      // blocks (the SMs shared out, or options.sm90_blocks), each a run of the groups' tiles
      // flattened (seg_partition); the splits per head are 1 per block a group's tiles fall in (2
      // with PALU_CUDA_SM90_COMBINE=0: b.wgroups).
      if (b.pair && options.splits <= 0 && env_splits <= 0 && sm90_seg_setting() != 0) {
        static const int env_blocks = env_int_or("PALU_CUDA_SM90_BLOCKS", 0);  // (measurements)
        const int nb = std::min(detail::kSm90MaxSegBlocks,
                                std::max(1, options.sm90_blocks > 0 ? options.sm90_blocks
                                            : env_blocks > 0       ? env_blocks
                                                                   : lim.sms / (hq / 2)));
        std::vector<int> per_group;
        b.splits = detail::seg_partition((int)b.gs.size(), tiles64, nb, sm90_seg_cost(), b.seg_lo, b.seg_first,
                                         per_group);
        b.seg_blocks = (int)b.seg_lo.size() - 1;
      }
      b.part_off = part_floats;
      b.stat_off = stat_floats;
      b.m_off = m_halves;
      part_floats += (size_t)out_off[G] * b.splits * b.wgroups;
      stat_floats += (size_t)sh.num_heads * b.splits * b.wgroups;
      m_halves += (size_t)sh.num_heads * kHD * g0.k.rank;
      continue;
    }
    const BlockShape shape = pick_shape(sh, g0, lim.max_smem_optin, options.heads_per_block);
    b.qpc = shape.qpc;
    b.smem = shape.smem;
    b.stages = shape.stages;
    b.wgroups = shape.wgroups;
    if (b.qpc == 0)
      return unimplemented("cuda latent attention: group " + std::to_string(b.gs[0]) + " (key rank " +
                           std::to_string(g0.k.rank) + " " + row_storage_name(g0.k.storage) + ", value rank " +
                           std::to_string(g0.v.rank) + " " + row_storage_name(g0.v.storage) +
                           ") needs more shared memory than the device's " + std::to_string(lim.max_smem_optin) + " B");
    int per_sm = 0;
    PALU_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(latent_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)b.smem));
    PALU_CUDA_RETURN_IF_ERROR(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, latent_decode_kernel, b.qpc * 128 * b.wgroups, b.smem));
    const int blocks_y = (int)b.gs.size() * (hq / b.qpc);
    int splits = options.splits > 0 ? options.splits : std::max(1, lim.sms * std::max(per_sm, 1) / blocks_y);
    splits = std::min(splits, tiles_total);
    b.tiles_per_split = (tiles_total + splits - 1) / splits;
    b.splits = (tiles_total + b.tiles_per_split - 1) / b.tiles_per_split;
    b.part_off = part_floats;
    b.stat_off = stat_floats;
    b.m_off = m_halves;
    part_floats += (size_t)out_off[G] * b.splits * b.wgroups;  // indexed by the global out offset
    stat_floats += (size_t)sh.num_heads * b.splits * b.wgroups;
    m_halves += (size_t)sh.num_heads * kHD * g0.k.rank;  // indexed by the global head
  }
  const size_t ab_floats = any_bias ? (size_t)sh.num_heads * kHD : 0;
  const size_t trig_bytes = align16((size_t)T * kHalf * sizeof(float2));
  const size_t need = (part_floats + 2 * stat_floats + ab_floats) * sizeof(float) + align16(m_halves * 2) + trig_bytes;
  CudaBuffer ws;
  uint8_t* base = static_cast<uint8_t*>(options.scratch);
  if (base != nullptr) {
    if (options.scratch_bytes < need)
      return invalid_argument("cuda latent attention: scratch_bytes must be ≥ " + std::to_string(need) + ", found " +
                              std::to_string(options.scratch_bytes));
  } else {
    PALU_ASSIGN_OR_RETURN(ws, CudaBuffer::make(workspace, need));
    base = ws.as<uint8_t>();
  }
  __half* mbase = reinterpret_cast<__half*>(base);
  float2* trig = reinterpret_cast<float2*>(base + align16(m_halves * 2));
  float* fbase = reinterpret_cast<float*>(base + align16(m_halves * 2) + trig_bytes);
  float* ab = any_bias ? fbase + part_floats + 2 * stat_floats : nullptr;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  const bool pdl = lim.cc_major >= 9;  // the merges as programmatic dependents (griddepcontrol)
  // The RoPE table for every kernel but the sm_90a ring schedules (which compute the same cos/sin).
  const int ws_mode = sm90_ws_setting();
  if (std::any_of(batches.begin(), batches.end(), [&](const Batch& b) {
        return !b.sm90.ok || !((b.sm90.ring || (b.dec_ring && ws_mode >= 1)) && options.sm90_pipeline);
      })) {
    const int blocks = (int)std::min<size_t>(((size_t)T * kHalf + 255) / 256, (size_t)lim.sms * 8);
    rope_table_kernel<<<blocks, 256, 0, st>>>(inv_freq, T, trig);
    PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  }
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
    P.qpc = b.qpc;
    P.chunks = hq / b.qpc;
    P.splits = b.splits * b.wgroups;
    P.stages = b.stages;
    P.wgroups = b.wgroups;
    P.tiles_per_split = b.tiles_per_split;
    P.inv_sqrt_d = 1.0f / std::sqrt((float)kHD);
    P.q = q;
    P.m = mbase + b.m_off;
    P.ab = ab;
    P.inv_freq = inv_freq;
    P.trig = reinterpret_cast<const float4*>(trig);
    P.pm = fbase + part_floats + b.stat_off;
    P.pl = fbase + part_floats + stat_floats + b.stat_off;
    P.pacc = fbase + b.part_off;
    if (!b.sm90.ok) {  // (the sm_90a kernel folds q into B^K in each block itself)
      fold_q_kernel<<<dim3(hq, (unsigned)b.gs.size(), 8), 256, 0, st>>>(P, n_rep, mbase + b.m_off, ab);
      PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    if (b.sm90.ok) {
      detail::Sm90Params S{};
      for (size_t i = 0; i < b.gs.size(); ++i) {
        const GroupPtrs& x = P.g[i];
        S.g[i] = detail::Sm90Group{x.zk, x.zv, x.sk, x.zrk, x.sv, x.zrv, x.first_head, x.out_off, x.bk, x.kbias};
      }
      S.T = T;
      S.rk = P.rk;
      S.rv = P.rv;
      S.stor_k = P.stor_k;
      S.stor_v = P.stor_v;
      S.row_bytes_k = P.row_bytes_k;
      S.row_bytes_v = P.row_bytes_v;
      S.chunks = hq / 2;
      S.splits = P.splits;
      S.k_stages = b.sm90.k_stages;
      S.v_stages = b.sm90.v_stages;
      S.pipeline = options.sm90_pipeline ? 1 : 0;
      S.ring = b.sm90.ring ? 1 : 0;
      S.ws = ws_mode >= 1 ? 1 : 0;
      S.pingpong = b.pair ? (sm90_pair_setting() == 2 ? 1 : 0) : ws_mode >= 2 ? 1 : 0;
      S.dec_ring = b.dec_ring ? 1 : 0;
      S.pair_reg = options.sm90_pair_reg;
      S.dec_wgs = sm90_dec_wgs();
      S.share_pv = sm90_share_pv();
      S.pair = b.pair ? 1 : 0;
      S.wg_combine = b.pair && sm90_combine_setting() != 0 ? 1 : 0;
      S.seg_groups = b.seg_blocks > 0 ? (int)b.gs.size() : 0;
      std::copy(b.seg_lo.begin(), b.seg_lo.end(), S.seg_lo);
      std::copy(b.seg_first.begin(), b.seg_first.end(), S.seg_first);
      S.inv_sqrt_d = P.inv_sqrt_d;
      S.q = q;
      S.n_rep = n_rep;
      S.any_bias = any_bias ? 1 : 0;
      S.trig = P.trig;
      S.inv_freq = inv_freq;
      S.pm = P.pm;
      S.pl = P.pl;
      S.pacc = P.pacc;
      PALU_RETURN_IF_ERROR(
          detail::launch_latent_sm90(S,
                                     b.seg_blocks > 0 ? dim3((unsigned)S.chunks, (unsigned)b.seg_blocks)
                                                      : dim3(b.splits, (unsigned)b.gs.size() * S.chunks),
                                     b.smem, st));
    } else {
      PALU_CUDA_RETURN_IF_ERROR(
          cudaFuncSetAttribute(latent_decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)b.smem));
      const dim3 grid(b.splits, (unsigned)b.gs.size() * P.chunks);
      latent_decode_kernel<<<grid, b.qpc * 128 * b.wgroups, b.smem, st>>>(P);
      PALU_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    }
    const bool consecutive = b.gs.back() - b.gs.front() + 1 == (int)b.gs.size();
    if (consecutive) {  // one launch: the groups' heads and outputs follow each other
      const int g = b.gs.front();
      PALU_RETURN_IF_ERROR(detail::launch_merge_splits(P.pm, P.pl, P.pacc, P.splits, g * hq, hq * (int)b.gs.size(),
                                                       out_off[g], groups[g].v.rank, out, st, pdl));
    } else for (int g : b.gs) {
      PALU_RETURN_IF_ERROR(detail::launch_merge_splits(P.pm, P.pl, P.pacc, P.splits, g * hq, hq, out_off[g],
                                                       groups[g].v.rank, out, st, pdl));
    }
  }
  // The partials must outlive the kernels before the buffer goes back to the allocator.
  if (options.scratch == nullptr) PALU_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  return Status::ok();
}

}  // namespace palu::backends::cuda
