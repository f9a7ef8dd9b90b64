// Causal attention of n query rows (positions p0 .. p0+n−1) over keys 0 .. p0+n−1, MHA/GQA.
// Workgroup (hl, qb): query head h = h0 + hl (KV head j = h / n_rep), query rows
// [qb·QB, qb·QB + QB). Key tiles of KT rows go through shared memory with an online softmax
// per query row; the accumulator is the output row itself (each element owned by one
// invocation), normalised at the end.
// Keys: rows of k_words words in k_storage (f32/f16/bf16), KV head j at column j·d_h — the
// cache's post-RoPE rows, or the keys latent_rebuild.comp rebuilt from latents.
// Values: rows of v_words words in v_storage (any, packed params after v_cap rows), head h's
// w columns at j·vcol_per_kv (full rows: d_h; a latent group's z^V: 0); packed latents may have
// an f16 window (win > 0: positions ≥ win_begin read from it, common.glsl ld_lat).
// Output: out[r·ow + out0 + hl·w + c].
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint DHMAX = 128u;
const uint QB = 16u, KT = 32u;
layout(push_constant) uniform PC {
  Buf q;
  Buf kc;
  Buf vc;
  Buf out_;
  uint n, p0, qw, k_words, k_storage, v_words, v_storage, v_cap, n_rep, dh, h0, vcol_per_kv, w, ow, out0;
  float scale;
  uint win, win_begin, v_rank;  // the values' f16 window (common.glsl ld_lat); win 0: none
} pc;
shared float qs[QB * DHMAX];
shared float ks[KT * DHMAX];
shared float ss[QB * KT];
shared float ms[QB];
shared float ls[QB];
shared float cs[QB];
void main() {
  const uint hl = gl_WorkGroupID.x, qb = gl_WorkGroupID.y;
  const uint h = pc.h0 + hl, j = h / pc.n_rep;
  const uint tid = gl_LocalInvocationID.x;
  const uint dh = pc.dh, W = pc.w;
  const uint r0 = qb * QB;
  if (r0 >= pc.n) return;
  const uint nr = min(QB, pc.n - r0);
  for (uint e = tid; e < nr * dh; e += 64u) {
    const uint r = e / dh, i = e % dh;
    qs[r * dh + i] = ldf(pc.q, (r0 + r) * pc.qw + h * dh + i);
  }
  if (tid < QB) {
    ms[tid] = NEG_INF;
    ls[tid] = 0.0;
  }
  for (uint e = tid; e < nr * W; e += 64u) {
    const uint r = e / W, c = e % W;
    stf(pc.out_, (r0 + r) * pc.ow + pc.out0 + hl * W + c, 0.0);
  }
  barrier();
  const uint kend = pc.p0 + r0 + nr;  // keys visible to the block's last row
  const uint vcol = j * pc.vcol_per_kv;
  for (uint k0 = 0u; k0 < kend; k0 += KT) {
    const uint nk = min(KT, kend - k0);
    for (uint e = tid; e < nk * dh; e += 64u) {
      const uint t = e / dh, i = e % dh;
      ks[t * dh + i] = ld_row(pc.kc, (k0 + t) * pc.k_words, j * dh + i, pc.k_storage, 0u);
    }
    barrier();
    for (uint e = tid; e < nr * KT; e += 64u) {
      const uint r = e / KT, t = e % KT;
      float s = NEG_INF;
      if (t < nk && k0 + t <= pc.p0 + r0 + r) {
        float a = 0.0;
        for (uint i = 0u; i < dh; ++i) a += qs[r * dh + i] * ks[t * dh + i];
        s = a * pc.scale;
      }
      ss[r * KT + t] = s;
    }
    barrier();
    if (tid < nr) {
      float mx = ms[tid];
      for (uint t = 0u; t < nk; ++t) mx = max(mx, ss[tid * KT + t]);
      if (mx == NEG_INF) {
        cs[tid] = 1.0;
        for (uint t = 0u; t < KT; ++t) ss[tid * KT + t] = 0.0;
      } else {
        const float corr = exp(ms[tid] - mx);
        float sum = 0.0;
        for (uint t = 0u; t < KT; ++t) {
          const float p = t < nk ? exp(ss[tid * KT + t] - mx) : 0.0;
          ss[tid * KT + t] = p;
          sum += p;
        }
        ls[tid] = ls[tid] * corr + sum;
        ms[tid] = mx;
        cs[tid] = corr;
      }
    }
    barrier();
    for (uint e = tid; e < nr * W; e += 64u) {
      const uint r = e / W, c = e % W;
      const uint o = (r0 + r) * pc.ow + pc.out0 + hl * W + c;
      float acc = ldf(pc.out_, o) * cs[r];
      const uint vis = min(nk, pc.p0 + r0 + r + 1u - min(k0, pc.p0 + r0 + r + 1u));
      for (uint t = 0u; t < vis; ++t) {
        acc += ss[r * KT + t] * ld_lat(pc.vc, k0 + t, pc.v_words, vcol + c, pc.v_storage, pc.v_cap, pc.v_rank, pc.win, pc.win_begin);
      }
      stf(pc.out_, o, acc);
    }
    barrier();
  }
  for (uint e = tid; e < nr * W; e += 64u) {
    const uint r = e / W, c = e % W;
    const uint o = (r0 + r) * pc.ow + pc.out0 + hl * W + c;
    stf(pc.out_, o, ldf(pc.out_, o) / ls[r]);
  }
}
