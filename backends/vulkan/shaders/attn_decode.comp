// Decode attention, one split of the cached tokens per workgroup (flash-decoding). Workgroup
// (j, sp): KV head j of this dispatch (query heads h0 + j·n_rep .. + n_rep − 1 share its keys),
// tokens [sp·tps, min(T, (sp+1)·tps)). Writes the split's partial (m, l, acc[w]) per query head
// into part[(h·splits + sp)·part_stride ..]; attn_reduce.comp merges the splits.
//
// Full cache (LATENT undefined): K/V rows of the layer (post-RoPE keys), KV head j's values at
// columns j·kcol.. of the row; storage f32/f16/bf16.
// LATENT: the dispatch is one low-rank group (s KV heads); kc/vc are its z^K/z^V regions (any
// storage incl. packed codes, and the f16 window of packed storage). Per tile of TT tokens the key latents are dequantized into
// shared memory, KV head j's keys rebuilt as B^K[j·d_h.., :]·z (+ bias), rotated at each
// token's position (RoPE table), then scored; values are never rebuilt: acc += p·z^V.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint WDT = 1u;     // B^K dtype
layout(constant_id = 1) const uint NREP = 8u;    // max query heads per KV head
layout(constant_id = 2) const uint DHMAX = 128u; // max head dim
layout(constant_id = 3) const uint TT = 16u;     // tokens per tile
layout(constant_id = 4) const uint RMAX = 256u;  // max key rank (LATENT)
layout(constant_id = 5) const uint ST = 1u;      // the cache storage (= ST), folded into the loads
layout(push_constant) uniform PC {
  Buf q;     // [H, d_h] f32, RoPE applied
  Buf kc;    // key region (rows of k_words words; packed params after cap rows)
  Buf vc;    // value region
  Buf bk;    // LATENT: B^K_gᵀ [r_k, s·d_h] row-major, dtype WDT
  Buf bias;  // LATENT: k bias of the group [s·d_h] f32 (flags & 1)
  Buf rope;  // cos [P, d_h/2], sin at word sin_off
  Buf part;  // partials
  uint T, tps, cap, k_words, v_words, win_begin, h0, kcol, r_k, w, n_rep, dh, sin_off, flags, part_stride;
  float scale;
  uint win;  // LATENT: f16 window slots (0: none); positions ≥ win_begin read it (ld_lat)
} pc;

shared float qs[NREP * DHMAX];
shared float ks[TT * DHMAX];
#ifdef LATENT
shared float zs[TT * RMAX];
#endif
shared float ps[NREP * TT];
shared float ms[NREP];
shared float ls[NREP];
shared float cs[NREP];

void main() {
  const uint j = gl_WorkGroupID.x;
  const uint sp = gl_WorkGroupID.y;
  const uint splits = gl_NumWorkGroups.y;
  const uint tid = gl_LocalInvocationID.x;
  const uint dh = pc.dh, half_dh = dh / 2u, nrep = pc.n_rep, W = pc.w;
  const uint hq0 = pc.h0 + j * nrep;
  for (uint e = tid; e < nrep * dh; e += 64u) qs[e] = ldf(pc.q, hq0 * dh + e);
  if (tid < nrep) {
    ms[tid] = NEG_INF;
    ls[tid] = 0.0;
  }
  // The accumulator lives in the partial buffer; element (rep, c) always belongs to the same
  // invocation, so no synchronisation is needed on it.
  for (uint e = tid; e < nrep * W; e += 64u) {
    const uint rep = e / W, c = e % W;
    stf(pc.part, ((hq0 + rep) * splits + sp) * pc.part_stride + 2u + c, 0.0);
  }
  barrier();
  const uint t_begin = sp * pc.tps;
  const uint t_end = min(pc.T, t_begin + pc.tps);
  for (uint t0 = t_begin; t0 < t_end; t0 += TT) {
    const uint nt = min(TT, t_end - t0);
#ifdef LATENT
    const uint rk = pc.r_k;
    for (uint e = tid; e < nt * rk; e += 64u) {
      const uint t = e / rk, p = e % rk;
      zs[t * rk + p] = ld_lat(pc.kc, t0 + t, pc.k_words, p, ST, pc.cap, rk, pc.win, pc.win_begin);
    }
    barrier();
    // B^Kᵀ [r_k, s·d_h]: consecutive invocations read consecutive weights of one row. Each
    // invocation owns key dimension i for every token of the tile, so a weight is loaded once
    // per tile and reused for TT tokens (the latents are shared-memory broadcasts).
    const uint N = pc.kcol;  // LATENT: s·d_h (the row length of B^Kᵀ)
    for (uint i = tid; i < dh; i += 64u) {
      const uint col = j * dh + i;
      float acc[TT];
      for (uint t = 0u; t < TT; ++t) acc[t] = 0.0;
      for (uint p = 0u; p < rk; ++p) {
        const float b = ldw(pc.bk, p * N + col, WDT);
        for (uint t = 0u; t < TT; ++t) acc[t] += zs[t * rk + p] * b;
      }
      const float kb = (pc.flags & 1u) != 0u ? ldf(pc.bias, col) : 0.0;
      for (uint t = 0u; t < nt; ++t) ks[t * dh + i] = (pc.flags & 1u) != 0u ? acc[t] + kb : acc[t];
    }
    barrier();
    for (uint e = tid; e < nt * half_dh; e += 64u) {
      const uint t = e / half_dh, i = e % half_dh;
      const uint pos = t0 + t;
      const float c = ldf(pc.rope, pos * half_dh + i);
      const float s = ldf(pc.rope, pc.sin_off + pos * half_dh + i);
      const float x0 = ks[t * dh + i], x1 = ks[t * dh + i + half_dh];
      precise float p0 = x0 * c;
      precise float p1 = x1 * s;
      precise float p2 = x1 * c;
      precise float p3 = x0 * s;
      precise float y0 = p0 - p1;
      precise float y1 = p2 + p3;
      ks[t * dh + i] = y0;
      ks[t * dh + i + half_dh] = y1;
    }
    barrier();
    const uint vcol = 0u;
#else
    for (uint e = tid; e < nt * dh; e += 64u) {
      const uint t = e / dh, i = e % dh;
      ks[t * dh + i] = ld_row(pc.kc, (t0 + t) * pc.k_words, j * pc.kcol + i, ST, 0u);
    }
    barrier();
    const uint vcol = j * pc.kcol;
#endif
    for (uint e = tid; e < nrep * nt; e += 64u) {
      const uint rep = e / nt, t = e % nt;
      float s = 0.0;
      for (uint i = 0u; i < dh; ++i) s += qs[rep * dh + i] * ks[t * dh + i];
      ps[rep * TT + t] = s * pc.scale;
    }
    barrier();
    if (tid < nrep) {
      float mx = ms[tid];
      for (uint t = 0u; t < nt; ++t) mx = max(mx, ps[tid * TT + t]);
      const float corr = exp(ms[tid] - mx);
      float sum = 0.0;
      for (uint t = 0u; t < nt; ++t) {
        const float p = exp(ps[tid * TT + t] - mx);
        ps[tid * TT + t] = p;
        sum += p;
      }
      ls[tid] = ls[tid] * corr + sum;
      ms[tid] = mx;
      cs[tid] = corr;
    }
    barrier();
    for (uint e = tid; e < nrep * W; e += 64u) {
      const uint rep = e / W, c = e % W;
      const uint o = ((hq0 + rep) * splits + sp) * pc.part_stride + 2u + c;
      float acc = ldf(pc.part, o) * cs[rep];
      for (uint t = 0u; t < nt; ++t) {
        acc += ps[rep * TT + t] * ld_lat(pc.vc, t0 + t, pc.v_words, vcol + c, ST, pc.cap, W, pc.win, pc.win_begin);
      }
      stf(pc.part, o, acc);
    }
    barrier();
  }
  if (tid < nrep) {
    const uint o = ((hq0 + tid) * splits + sp) * pc.part_stride;
    stf(pc.part, o, ms[tid]);
    stf(pc.part, o + 1u, ls[tid]);
  }
}
