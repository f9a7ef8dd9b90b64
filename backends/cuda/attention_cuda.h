// Decode attention on a CUDA device (one new query token per head, batch 1, one layer):
//
// * latent_attention_decode_cuda: the fused Palu kernel over low-rank latents. Same math and
//   output layout as backends/cpu/latent_attention.h (whose scalar path is the reference):
//   for query head h (KV head j = h / (H/H_kv), group g = j / s, u = j % s),
//     k_t = rope((B^K_g · z^K_g,t)[u·d_h, (u+1)·d_h) (+ k_bias), t),  s_t = q_h·k_t / sqrt(d_h),
//     o_h = Σ_t softmax(s)_t · z^V_g,t      (values stay latent; B^V is folded into W_o).
//   Keys are rebuilt with tensor-core MMA (mma.sync m16n8k16, f16 inputs, f32 accumulation):
//   z^K is dequantized (packed: q·scale then + zero in f32, as the CPU) and rounded to f16,
//   B^K is given in f16. RoPE (rotate-half, angle = (float)t·inv_freq[i] as the CPU, cos/sin to ~1e-6),
//   scores, online softmax and p·z^V run in f32; z^V is decoded exactly as the CPU decodes it.
//   The token axis is split over thread blocks (flash-decoding) and a second kernel merges the
//   splits' (max, sum, acc) partials.
//   Two kernels: on a device of compute capability 9.0 (H100) configurations with an even
//   number of query heads per group and a key rank that is a multiple of 64 and ≤ 256 run the
//   sm_90a kernel (wgmma, 64-token tiles; latent_attention_sm90.cu), everything else the sm_80
//   kernel (mma.sync, 32-token tiles; latent_attention.cu). Same results up to f32 rounding.
// * full_attention_decode_cuda: flash-decoding over a full f16 cache (the baseline): K and V
//   are T token-major rows of H_kv·d_h f16 values (the CPU full_attention.h layout, dense).
//
// Supported (else UNIMPLEMENTED naming the field): head_dim 128; latent ranks multiples of 32,
// key rank ≤ 512, value rank ≤ 512; every RowStorage (f32, f16, bf16, q8, q4, q3, q2), dense
// rows (row_stride_bytes 0 or the row's size; no paging, no f16 window); H/H_kv ≤ 8; tiles must
// fit in shared memory (f32 latents need 4 B per value per token: key + value rank ≲ 384). Groups of one call may differ in
// rank and storage (each distinct configuration is one launch).
//
// Pointers: every array is device memory except `groups` (a host array of G descriptors whose
// fields point to device memory). Ownership: borrowed for the call. The work is queued on
// `stream` (a cudaStream_t as void*; nullptr = default stream) and the call returns without
// waiting; temporary partials come from `workspace` and are returned to it after the stream's
// work completes (the call synchronizes the stream before freeing them).
// Errors: shape/pointer problems are INVALID_ARGUMENT naming the field, expected and found
// value; CUDA failures INTERNAL; workspace exhaustion RESOURCE_EXHAUSTED. Nothing aborts.
// Thread-safety: reentrant (no global state); one stream per thread.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/base/row_storage.h"
#include "backends/base/status.h"
#include "backends/cuda/cuda_allocator.h"

namespace palu::backends::cuda {

// T dense rows of one group's key or value latents (device memory).
struct CudaLatentRows {
  RowStorage storage = RowStorage::kF16;
  const void* rows = nullptr;     // [T, row bytes] (16-byte aligned)
  size_t row_stride_bytes = 0;    // 0 or row_storage_bytes(storage, rank)
  const float* scale = nullptr;   // [T] (packed storage only)
  const float* zero = nullptr;    // [T] (packed storage only)
  int rank = 0;
};

struct CudaLatentGroup {
  CudaLatentRows k;                    // z^K, k.rank = r_k
  CudaLatentRows v;                    // z^V, v.rank = r_v
  const uint16_t* b_k = nullptr;       // B^K_g [s·d_h, r_k] row-major f16 bits (16-byte aligned)
  const float* k_bias = nullptr;       // optional [s·d_h] f32, added before RoPE
};

struct CudaAttentionShape {
  int num_heads = 0;     // H
  int num_kv_heads = 0;  // H_kv
  int head_dim = 0;      // d_h (128)
  int group_size = 0;    // s (latent kernel only)
};

struct CudaDecodeOptions {
  int splits = 0;  // thread blocks per (group, head chunk) along T; 0 = fill the device once
  int heads_per_block = 0;  // latent kernel: query heads per block (1 or 2); 0 = the largest that fits
  // Optional caller-owned device scratch for the split partials. When given (and large enough,
  // else INVALID_ARGUMENT naming the bytes needed) the call neither allocates nor waits: the
  // work stays queued on the stream. Without it the partials come from `workspace` and the call
  // synchronizes the stream before returning them.
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
  // Latent kernel: run the sm_80 kernel (mma.sync) even on a device of compute capability 9.0,
  // where eligible configurations otherwise run the sm_90a kernel (wgmma, 64-token tiles, two
  // query heads per block; head_dim 128, key rank a multiple of 64 and ≤ 256, even query heads
  // per group). For tests and benchmarks that compare the two.
  bool force_sm80 = false;
  // sm_90a kernel: issue the wgmma chain of tile i+1 before p·z^V of tile i (one accumulator set,
  // the tensor cores run while the warps do values); needs ≥ 2 key and ≥ 2 value stages, so f16
  // 256/256 (2 key + 1 value stage in 227 KB) keeps the serial schedule. false: the serial
  // schedule everywhere (before/after comparisons).
  bool sm90_pipeline = true;
  // sm_90a pair schedule (f16 keys and values): blocks per head pair when they take equal shares
  // of all the groups' tiles, a share spanning two or more groups where it falls so (used when
  // `splits` is 0); 0 = the SMs shared out over the head pairs. For tests of odd partitions.
  int sm90_blocks = 0;
  // sm_90a pair schedule on q4 keys and values (the decoding producer): 1 always where it
  // applies, 0 never, −1 (default) from T and PALU_CUDA_SM90_PAIR_DEC (see latent_attention.cu).
  // For tests of short sequences.
  int sm90_pair_dec = -1;
  // That schedule's register-operand form (the consumers decode the codes into the wgmma A
  // fragments; value ranks a multiple of 128): 1 where it applies, 0 never (the decoding producer
  // warpgroup instead), −1 (default) PALU_CUDA_SM90_PAIR_REG (default 1).
  int sm90_pair_reg = -1;
};

// q: [H, d_h] f32 (RoPE applied), inv_freq: [d_h/2] f32, out: [Σ_h r_v,g(h)] f32 (head h's
// latent at Σ_{h'<h} r_v,g(h'), as the CPU kernel).
Status latent_attention_decode_cuda(const CudaAttentionShape& shape, const CudaLatentGroup* groups, int T,
                                    int pos_q, const float* q, const float* inv_freq, float* out,
                                    CudaAllocator* workspace, void* stream,
                                    const CudaDecodeOptions& options = {});

// k, v: [T, H_kv·d_h] f16 bits; q: [H, d_h] f32; out: [H, d_h] f32.
Status full_attention_decode_cuda(const CudaAttentionShape& shape, const uint16_t* k, const uint16_t* v, int T,
                                  const float* q, float* out, CudaAllocator* workspace, void* stream,
                                  const CudaDecodeOptions& options = {});

// Upper bounds of the scratch bytes (CudaDecodeOptions::scratch) a call with these groups / this
// shape and T cached tokens needs, whatever split count the device picks: a caller that keeps
// one scratch buffer of this size runs the kernels without allocating or synchronizing.
size_t latent_decode_scratch_bound(const CudaAttentionShape& shape, const CudaLatentGroup* groups, int T);
size_t full_decode_scratch_bound(const CudaAttentionShape& shape, int T);

// Shared memory (bytes) one block of the latent kernel needs for a group of this configuration,
// and the key heads per block it would use (0 when no configuration fits). For benchmarks.
struct LatentLaunchPlan {
  int heads_per_block = 0;
  size_t smem_bytes = 0;
  int threads = 0;
  bool sm90 = false;  // the sm_90a kernel (wgmma) runs this configuration on this device
};
LatentLaunchPlan plan_latent_launch(const CudaAttentionShape& shape, const CudaLatentGroup& group);

}  // namespace palu::backends::cuda
