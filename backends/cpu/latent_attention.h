// Fused decode attention on low-rank latents (Palu, DESIGN.md §1) for one layer: one new query
// token per head against T cached tokens whose keys and values are stored as per-group latents.
//
// For query head h (KV head j = h / (H/H_kv), group g = j / s, index in group u = j % s):
//   for every cached token t (position t, t = 0..T−1):
//     z   = dequantized z^K_g,t                                   [r_k,g]
//     k   = (B^K_g · z)[u·d_h, (u+1)·d_h)                          [d_h]
//     k   = rope(k, t)                 rotate-half (HF), angle = (float)t · inv_freq[i]
//     s_t = q_h · k / sqrt(d_h)
//   o_h = Σ_t softmax(s)_t · dequantized z^V_g,t                   [r_v,g]
// Values are never rebuilt: B^V is folded into W_o offline, so the caller finishes with
// out = W_o' · concat_h o_h (latent_output_projection below).
//
// Implementation: tokens are processed in blocks of 64; for each block the group's key latents
// are dequantized once, the keys of all s KV heads rebuilt once (a [64 × r] · [r × s·d_h] GEMM),
// RoPE applied once per token per KV head, and the rebuilt keys shared by every query head of
// that KV head (GQA). OpenMP threads run over (group × token chunk) items, each keeping an
// online-softmax partial (max, sum, acc) per query head; a final reduction merges them.
// Unless the caller passes B^Kᵀ (b_k_t), a call allocates it for every group (Σ_g r_k,g·s·d_h
// floats: 4 MiB at the Llama-2-7B shape with rank 256) so the rebuild is a row-major GEMM, and
// the RoPE table unless given.
// Dequantization computes q·scale then + zero (two roundings, no FMA) on both ISAs, so the
// values equal cache::decode_row and the latent simulation's fake_quantize bit for bit.
//
// Layout: each group's latents are either T-contiguous rows or paged like the block pool
// (LatentRows below), with an optional f16 window overlay for the newest tokens.
//
// Ownership: all pointers are borrowed for the duration of the call. Thread-safety: reentrant;
// a call uses the OpenMP thread team. Errors: shape / pointer / size problems return
// INVALID_ARGUMENT naming the field, the expected and the found value; nothing is written to
// the output on error.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/base/row_storage.h"
#include "backends/base/status.h"
#include "backends/cpu/cpu_isa.h"

namespace palu::backends::cpu {

// Storage of one latent row (backends/base/row_storage.h; the cache uses the same type).
using LatentStorage = RowStorage;

// B for packed types, 0 otherwise.
int latent_storage_bits(LatentStorage s);
// Bytes of one row of `rank` values (codes only for packed types).
size_t latent_row_bytes(LatentStorage s, int rank);

// T rows of one group's key or value latents (or, for full-cache kernels, of full K/V rows).
//
// Contiguous (block_tokens == 0): row t starts at (const uint8_t*)rows + t·row_stride_bytes,
// its scale/zero at scale[t]/zero[t].
// Paged (block_tokens > 0, the block pool's layout): token t lives in block b = t / block_tokens
// at row i = t mod block_tokens; that block's rows, scales and zeros are `rows`, `scale`, `zero`
// each advanced by block_ids[b] · block_stride_bytes bytes (so the three pointers name the
// arrays of the block with id 0). Row i is at rows' + i·row_stride_bytes, scale at scale'[i].
// Window overlay (window_begin ≥ 0): rows at positions t ≥ window_begin are read as f16 from
// window_rows[t − window_begin] (each f16[rank]) instead (the pool's KIVI-style window).
struct LatentRows {
  LatentStorage storage = LatentStorage::kF32;
  const void* rows = nullptr;  // see above
  size_t row_stride_bytes = 0;   // 0 = latent_row_bytes(storage, rank) (dense)
  const float* scale = nullptr;  // per-row scale (packed types only)
  const float* zero = nullptr;   // per-row zero = min (packed types only)
  int rank = 0;                  // r: values per row
  // paging (optional)
  int block_tokens = 0;                // 0: contiguous
  const int32_t* block_ids = nullptr;  // [ceil(T / block_tokens)]
  size_t block_stride_bytes = 0;       // bytes between blocks with consecutive ids
  // window overlay (optional)
  int64_t window_begin = -1;                     // −1: none
  const uint16_t* const* window_rows = nullptr;  // [T − window_begin] f16 rows
};

// out[n, rank] = rows t0 .. t0+n−1 of `rows` dequantized to float32 (paging and window
// honoured). Uses active_cpu_isa(). No validation: the caller checked the descriptor.
void decode_latent_rows(const LatentRows& rows, int t0, int n, float* out);

// One low-rank group of s consecutive KV heads.
struct LatentGroupCache {
  LatentRows k;                // z^K rows, k.rank = r_k,g
  LatentRows v;                // z^V rows, v.rank = r_v,g
  const float* b_k = nullptr;  // B^K_g [s·d_h, r_k,g] row-major float32
  // Optional: B^K_gᵀ [r_k,g, s·d_h] row-major (the layout the rebuild GEMM wants). When given
  // the call does not transpose b_k (a model precomputes it once at load).
  const float* b_k_t = nullptr;
  // Optional: key bias [s·d_h] added to the rebuilt keys before RoPE (Qwen2's k_proj bias).
  const float* k_bias = nullptr;
};

struct LatentAttentionShape {
  int num_heads = 0;     // H query heads
  int num_kv_heads = 0;  // H_kv (H % H_kv == 0)
  int head_dim = 0;      // d_h (even)
  int group_size = 0;    // s KV heads per low-rank group (H_kv % s == 0); G = H_kv / s groups
};

// Σ_h r_v,g(h): floats of out_latents. Head h's latent starts at Σ_{h'<h} r_v,g(h').
// Assumes a valid shape and groups[0..G).
int latent_output_width(const LatentAttentionShape& shape, const LatentGroupCache* groups);

// Optional precomputed RoPE table for positions 0..positions−1: cos/sin [positions, d_h/2]
// float32, row t = cos/sin((float)t · inv_freq[i]) computed in double and rounded to float
// (build_latent_rope_table fills it). The model can build it once for its context length; a
// decode without one computes T·d_h/2 sin/cos pairs per call (measured 1–7 ms of a ~55–80 ms
// decode at T = 4096, d_h = 128, per layer, on a loaded 2-core machine).
struct LatentRopeTable {
  const float* cos = nullptr;
  const float* sin = nullptr;
  int positions = 0;
};
// Fills cos/sin [positions, d_h/2] (caller-owned) from inv_freq [d_h/2]. Threaded.
void build_latent_rope_table(const float* inv_freq, int d_h, int positions, float* cos, float* sin);

// Decode attention. q: [H, d_h] float32, RoPE already applied at position pos_q; pos_q ≥ T−1
// (the cached tokens are at positions 0..T−1; pos_q only validates causality). inv_freq:
// [d_h/2] float32, θ^(−2i/d_h). groups: [G]. out_latents: [latent_output_width] float32.
// rope: optional table (positions ≥ T) used instead of computing cos/sin from inv_freq; the
// results are bit-identical either way. Uses active_cpu_isa().
Status latent_attention_decode(const LatentAttentionShape& shape, const LatentGroupCache* groups,
                               int T, int pos_q, const float* q, const float* inv_freq,
                               float* out_latents, const LatentRopeTable* rope = nullptr);
// The same with an explicit ISA (tests, benchmarks). An ISA this CPU lacks (detect_cpu_isa()
// below it): FAILED_PRECONDITION.
Status latent_attention_decode_isa(CpuIsa isa, const LatentAttentionShape& shape,
                                   const LatentGroupCache* groups, int T, int pos_q, const float* q,
                                   const float* inv_freq, float* out_latents,
                                   const LatentRopeTable* rope = nullptr);

// The fused output projection: out[d] = W_o'[d, width] · o[width] (+ beta·out), W_o' row-major
// float32 with width = latent_output_width. Threaded over rows.
Status latent_output_projection(const float* w_o, int d, int width, const float* o, float* out,
                                float beta = 0.f);

namespace detail {
// Per-ISA building blocks used by the shared driver (latent_attention_scalar.cc).
struct LatentAttentionPrims {
  // out[n, rank] = dequantized rows t0..t0+n−1 of `rows`.
  void (*decode_rows)(const LatentRows& rows, int t0, int n, float* out);
  // C[m, n] = A[m, k] · B[k, n]   (row-major, leading dims; overwrites C)
  void (*gemm_nn)(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c,
                  int ldc);
  // Rotate-half RoPE in place on `heads` vectors of d_h at x (stride d_h) with cos/sin [d_h/2].
  void (*rope)(float* x, int heads, int d_h, const float* cos, const float* sin);
  // Σ a[i]·b[i]
  float (*dot)(const float* a, const float* b, int n);
  // y = y·c + Σ_t p[t] · x[t, :]  for t < nt, x rows of stride ldx, n values
  void (*scale_accumulate)(float c, const float* p, int nt, const float* x, int ldx, float* y,
                           int n);
};
const LatentAttentionPrims& latent_prims_scalar();
const LatentAttentionPrims& latent_prims_avx2();    // only when detect_cpu_isa() ≥ kAvx2
const LatentAttentionPrims& latent_prims_avx512();  // only when detect_cpu_isa() == kAvx512
}  // namespace detail

}  // namespace palu::backends::cpu
