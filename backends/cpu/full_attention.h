// Full-cache decode attention on the CPU for one layer: one new query token per head against T
// cached tokens whose keys (post-RoPE) and values are stored whole, f32, f16 or bf16. This is
// what uncompressed models decode with through the block pool's full-K/V layout, and the
// baseline the fused latent kernel (latent_attention.h) is measured against.
//
// For query head h (KV head j = h / (H/H_kv)):
//   s_t = q_h · K_t[j·d_h, (j+1)·d_h) / sqrt(d_h)               t = 0..T−1
//   out_h = Σ_t softmax(s)_t · V_t[j·d_h, (j+1)·d_h)             [d_h]
//
// Rows: k and v are LatentRows descriptors (latent_attention.h) whose rows are whole tokens:
// k.rank = v.rank = H_kv·d_h values, KV head j at elements [j·d_h, (j+1)·d_h) of the row.
// Contiguous or paged exactly as LatentRows describes; the f16 window overlay is honoured too
// (rows at t ≥ window_begin read as f16 from window_rows). Packed storage (q8..q2) is refused:
// a full cache is never stored in codes.
//
// Implementation (flash-decoding): OpenMP threads run over (KV-head tile × token chunk) items
// (long contexts: chunks of all KV heads; short ones: the heads split into tiles too). An item
// walks its chunk in blocks of 64 tokens: the scores of every query head of the tile (GQA: a
// key slice is read once for all query heads sharing it), an online-softmax update (max, sum)
// per query head, then acc = acc·e^{m_old−m_new} + Σ_t p_t·V_t. Both passes visit the block's
// rows 16 at a time across all KV heads, so rows are read front to back (one head's slice alone
// is a short run every H_kv·d_h values, which hardware prefetchers do not follow). A final
// reduction merges the chunks' partials in double. The AVX-512 and AVX2 building blocks convert
// f16/bf16 to f32 in registers, take 16 (AVX2: 8) (token, head) dot products at once with a
// transposing horizontal reduction, and use a polynomial exp; the scalar ones are the reference.
//
// Ownership: all pointers are borrowed for the duration of the call. Thread-safety: reentrant;
// a call uses the OpenMP thread team. Errors: INVALID_ARGUMENT naming the field, the expected
// and the found value; FAILED_PRECONDITION for an AVX2 / AVX-512 path on a CPU without it.
// Nothing is written to `out` on error.
#pragma once

#include <cstddef>

#include "backends/base/status.h"
#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/latent_attention.h"

namespace palu::backends::cpu {

struct FullAttentionShape {
  int num_heads = 0;     // H query heads
  int num_kv_heads = 0;  // H_kv (H % H_kv == 0)
  int head_dim = 0;      // d_h
};

// q: [H, d_h] float32, RoPE already applied. k, v: T rows of H_kv·d_h values (see above).
// out: [H, d_h] float32. Uses active_cpu_isa().
Status full_attention_decode(const FullAttentionShape& shape, const LatentRows& k,
                             const LatentRows& v, int T, const float* q, float* out);
// The same with an explicit ISA (tests, benchmarks). An ISA this CPU lacks (detect_cpu_isa()
// below it): FAILED_PRECONDITION.
Status full_attention_decode_isa(CpuIsa isa, const FullAttentionShape& shape, const LatentRows& k,
                                 const LatentRows& v, int T, const float* q, float* out);

namespace detail {
// Per-ISA building blocks of the shared driver (full_attention_scalar.cc). A "row" is one
// token's whole K or V row; `off` is the element offset of the KV head inside it; every row
// of one call has the same storage (f32, f16 or bf16).
struct FullAttentionPrims {
  // s[r·lds + t] = scale · Σ_{i<d} q[r·d + i] · row_t[off + i]    for r < nq, t < nt
  void (*scores)(LatentStorage st, const void* const* rows, int nt, size_t off, const float* q,
                 int nq, int d, float scale, float* s, int lds);
  // x[i] = exp(x[i] − m) for i < n; returns Σ x[i]
  float (*exp_sum)(float* x, int n, float m);
  // acc[r·d + i] = acc[r·d + i]·corr[r] + Σ_{t<nt} p[r·ldp + t] · row_t[off + i]   for r < nq
  void (*accumulate)(LatentStorage st, const void* const* rows, int nt, size_t off, const float* p,
                     int ldp, const float* corr, int nq, int d, float* acc);
};
const FullAttentionPrims& full_prims_scalar();
const FullAttentionPrims& full_prims_avx2();    // only when detect_cpu_isa() ≥ kAvx2
const FullAttentionPrims& full_prims_avx512();  // only when detect_cpu_isa() == kAvx512
}  // namespace detail

}  // namespace palu::backends::cpu
