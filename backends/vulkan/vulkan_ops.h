// The forward-pass ops on a Vulkan device: typed launchers that record one compute dispatch
// (or a few) of the embedded shaders into a Recorder (vulkan_context.h). Buffers are passed as
// device addresses (VulkanBuffer::address(offset)); element counts and strides are in values
// (f32 words for activations). The math of each op is the CPU scalar reference's
// (backends/cpu/kernels_scalar.cc, model/llama_model.cc, model/llama_pooled.cc); the shader
// files say how each one maps it.
//
// Cache regions (store_rows, attention): a region is `cap` rows of `row_words` 32-bit words in
// a RowStorage (f32, f16/bf16 two per word, packed B-bit codes as cache/latent_packing.h's bit
// string, rows padded to whole words), followed for packed storage by cap (scale, zero) float32
// pairs. region_words() gives its size. Packed latent regions may carry an f16 window
// (CacheOptions.window_tokens): `window` slots after the parameters, each an f16 row of rank
// values padded to whole words; position p ≥ window_begin lives in slot p mod window (written by
// store_rows when p ≥ window_begin, read instead of the packed row by the latent kernels), as
// cache::BlockPool's window ring. Slots allocated: min(window, cap) (positions stay below cap).
//
// Thread-safety: launchers only record; see Recorder. Errors: recorded dispatch failures come
// back from Recorder::submit; launchers validate shapes the shaders cannot handle and return
// INVALID_ARGUMENT / UNIMPLEMENTED naming the value.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/base/row_storage.h"
#include "backends/base/status.h"
#include "backends/vulkan/vulkan_context.h"

namespace palu::backends::vulkan {

// Weight element types the matmul and the latent kernels read.
enum class WeightType : uint32_t { kF32 = 0, kF16 = 1, kBF16 = 2 };

// Words of one row of n values in storage s (padded to whole words).
size_t row_words(RowStorage s, int n);
// Words of a region of cap rows (rows plus packed parameters, plus the f16 window ring of a
// packed region with window > 0).
size_t region_words(RowStorage s, int n, int cap, int window = 0);

// x[r, :] = E[tok[r], :], E: [vocab, d] of type wt; tok: n int32.
void embed(Recorder& rec, uint64_t tok, uint64_t emb, WeightType wt, uint64_t x, int n, int d,
           int vocab);
// y[r, 0..n) = rmsnorm(x[r, 0..n)) · w  for rows r < rows (stride ld); w f32.
void rms_norm(Recorder& rec, uint64_t x, uint64_t w, uint64_t y, int rows, int n, int ld,
              float eps);
// In-place rotate-half RoPE on rows r < rows (stride ld) at positions pos0 + r; rope: the
// model's table, cos [P, d_h/2] followed by sin at value index sin_off.
void rope(Recorder& rec, uint64_t x, uint64_t rope_table, int rows, int ld, int heads, int dh,
          int pos0, uint32_t sin_off);
// C[M, N] = A[M, K]·W[N, K]ᵀ (+ bias) (+ C when accumulate). bias = 0: none.
// Kernels: kTiled (64×64 shared-memory tiles), kVector (M ≤ 4, shared-memory reduction),
// kSubgroup (4×4 blocks, one subgroup each, subgroupAdd; needs subgroup arithmetic). kAuto:
// kSubgroup on CPU drivers and for M ≤ 4 when available, else kTiled / kVector.
enum class MatmulKernel { kAuto, kTiled, kVector, kSubgroup };
void matmul(Recorder& rec, uint64_t a, int lda, uint64_t w, WeightType wt, uint64_t c, int ldc,
            int M, int N, int K, uint64_t bias = 0, bool accumulate = false,
            MatmulKernel kernel = MatmulKernel::kAuto);
// y = silu(g)·u over n values (y may alias g).
void silu_mul(Recorder& rec, uint64_t g, uint64_t u, uint64_t y, size_t n);
// y[i] += x[i mod xn] for i < n.
void add(Recorder& rec, uint64_t x, uint64_t y, size_t n, size_t xn);
// Row-wise softmax in place.
void softmax(Recorder& rec, uint64_t x, int rows, int n, int ld);

struct Region {
  uint64_t base = 0;  // address of the region
  RowStorage storage = RowStorage::kF16;
  int rank = 0;  // values per row
  int cap = 0;   // rows
  // f16 window of packed storage: slots (0: none) and the first position read from it. Only
  // the latent kernels (decode, rebuild, prefill values) and store_rows read these.
  int window = 0;
  int window_begin = 0;
  uint32_t words() const;  // row stride in words
};
// Rows src[r·src_ld + src_col .. + rank) → region rows pos0 + r (encode / quantize; also into
// the f16 window for positions ≥ dst.window_begin when dst.window > 0).
void store_rows(Recorder& rec, uint64_t src, int src_ld, int src_col, const Region& dst, int n,
                int pos0);

// Decode attention of one query token per head against T cached tokens.
struct DecodeArgs {
  uint64_t q = 0;     // [H, d_h] f32 (RoPE applied)
  uint64_t rope = 0;  // table (latent only)
  uint32_t sin_off = 0;
  uint64_t part = 0;  // scratch: decode_partial_words(H, splits, w_max) f32
  uint64_t out = 0;   // full: [H, d_h]; latent: the latent output row
  int T = 0, H = 0, H_kv = 0, dh = 0;
  int splits = 0;  // token splits (≥ 1)
  int w_max = 0;   // max value width (d_h or max r_v)
  // Latent only: scratch for the fused kernel's folded query, latent_fold_words(H, d_h,
  // max_rank) f32 (0: the tile kernel, attn_decode.comp LATENT, is used).
  uint64_t fold = 0;
};
size_t decode_partial_words(int H, int splits, int w_max);
size_t latent_fold_words(int H, int dh, int max_rank);
// Full K/V rows (post-RoPE keys), storage f32/f16/bf16, rows of H_kv·d_h values. On CPU
// drivers with subgroup arithmetic this runs attn_prefill_sg.comp for the one query row.
// use_subgroup: −1 auto (CPU drivers), 0 the split kernel, 1 the subgroup kernel.
Status attention_decode_full(Recorder& rec, const DecodeArgs& a, const Region& k, const Region& v,
                             int use_subgroup = -1);
// One low-rank group g of s KV heads: its z^K / z^V regions, B^K_gᵀ [r_k, s·d_h] of type wt
// (transposed so a workgroup's reads of one latent's weights are contiguous),
// optional key bias [s·d_h] f32; writes heads [g·s·n_rep, (g+1)·s·n_rep) of the latent output
// at out + out_col (each head r_v values).
struct LatentGroupArgs {
  Region zk, zv;
  uint64_t bk = 0;
  WeightType wt = WeightType::kF16;
  uint64_t k_bias = 0;
  int group = 0, s = 0;
  int out_col = 0;  // value index of the group's first head in the output row
};
// Kernels: kFused (latent_fold.comp folds q into B^K, then latent_decode.comp scores latent rows
// against the folded rows without rebuilding keys; f16 arithmetic where the device has
// shaderFloat16, kFusedF32 forces f32), kFusedCoopmat (the same fold, then
// latent_decode_cm.comp: the scores' products as 16×16×16 f16 subgroup matrix products with
// f32 accumulation, VK_NV_cooperative_matrix; d_h 64/128/256, r_k ≤ 512), kTile
// (attn_decode.comp LATENT: keys rebuilt per tile of tokens in shared memory). kAuto:
// kFusedCoopmat where the context has cooperative matrices, the shape fits and r_k ≤ 128 or the
// keys are packed codes (or always where the context prefers them, PALU_VULKAN_COOPMAT=1: f16
// keys at r_k = 256 are as fast or 2 % faster with kFused on the H100, docs/perf/vulkan.md),
// else kFused when a.fold is set and the device has subgroup arithmetic and room for the
// shape, else kTile. A kernel other than kAuto
// asked for on a device or shape it cannot run: UNIMPLEMENTED naming why.
//
// kAuto and kFusedCoopmat first try latent_decode_cmg.comp (all query heads of the group in one
// workgroup, 32-token tiles read once, p·z^V on the tensor cores too; needs the coopmat
// extension, d_h 64/128/256, 1/2/4/8 query heads per group with heads·d_h a multiple of 128,
// T ≥ 32, r_v ≤ 512 and the tiles in shared memory); kFusedCoopmatHead is the per-head
// latent_decode_cm.comp only (for comparisons).
enum class LatentKernel { kAuto, kFused, kFusedF32, kTile, kFusedCoopmat, kFusedCoopmatHead };
Status attention_decode_latent(Recorder& rec, const DecodeArgs& a, const LatentGroupArgs& g,
                               int max_rank, LatentKernel kernel = LatentKernel::kAuto);
// The n groups groups[0..n) of one layer: where latent_decode_cmg.comp takes them (kAuto,
// kFusedCoopmat; the groups alike and consecutive) one fold per group, ONE decode dispatch for
// all groups (workgroups splits × n) and one split reduction; otherwise attention_decode_latent
// per group. a.fold must hold latent_fold_words(H, d_h, max_rank).
Status attention_decode_latent_groups(Recorder& rec, const DecodeArgs& a,
                                      const LatentGroupArgs* groups, int n, int max_rank,
                                      LatentKernel kernel = LatentKernel::kAuto);

// Causal prefill attention: n query rows at positions p0.. over keys 0..p0+n−1.
struct PrefillArgs {
  uint64_t q = 0;  // [n, qw] f32, RoPE applied
  int qw = 0;
  int n = 0, p0 = 0, H = 0, H_kv = 0, dh = 0;
  uint64_t out = 0;  // [n, ow]
  int ow = 0;
};
// Keys: rows of a region (f32/f16/bf16; KV head j at j·d_h). Values: region rows with head
// columns at j·vcol_per_kv, width w. Heads [h0, h0 + nh) written at out0 + (h − h0)·w.
// Kernels: shared-memory tiles (attn_prefill.comp) or one subgroup per (head, query row)
// (attn_prefill_sg.comp, CPU drivers with subgroup arithmetic); use_subgroup: −1 auto, 0, 1.
Status attention_prefill(Recorder& rec, const PrefillArgs& a, const Region& k, const Region& v,
                         int vcol_per_kv, int w, int h0, int nh, int out0, int use_subgroup = -1);
// Keys of group g (s KV heads) rebuilt from z^K (bk: B^K_gᵀ [r_k, s·d_h]) for positions
// 0..T−1 into out [T, ld] f32 at
// columns col0.. (RoPE applied).
Status latent_rebuild_keys(Recorder& rec, const Region& zk, uint64_t bk, WeightType wt,
                           uint64_t k_bias, int s, int dh, int T, uint64_t rope_table,
                           uint32_t sin_off, uint64_t out, int ld, int col0);

// Groups (x, y) for a flat count of workgroups (x ≤ 65535).
void split_groups(size_t count, uint32_t* gx, uint32_t* gy);

}  // namespace palu::backends::vulkan
