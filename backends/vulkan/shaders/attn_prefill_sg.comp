// attn_prefill.comp's attention without shared memory or barriers, one subgroup per workgroup:
// workgroup (hl, r) is query head h = h0 + hl at query row r; each invocation walks keys
// lane, lane + subgroup size, … ≤ p0 + r with its own online softmax (m, l, acc[w] in
// registers), and the subgroup merges the invocations' partials with subgroupMax/subgroupAdd.
// Picked on CPU drivers (lavapipe), where barriers and shared memory are expensive; same push
// constants, same results up to summation order.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"
layout(local_size_x_id = 1) in;  // = the subgroup size
layout(constant_id = 0) const uint DHMAX = 128u;  // = d_h exactly (loops unroll)
layout(constant_id = 2) const uint WMAX = 128u;   // = w exactly
// The key and value storages as constants (the push constants carry the same values), so the
// row decode folds to one path in the inner loops.
layout(constant_id = 3) const uint KST = 1u;
layout(constant_id = 4) const uint VST = 1u;
layout(push_constant) uniform PC {
  Buf q;
  Buf kc;
  Buf vc;
  Buf out_;
  uint n, p0, qw, k_words, k_storage, v_words, v_storage, v_cap, n_rep, dh, h0, vcol_per_kv, w, ow, out0;
  float scale;
  uint win, win_begin, v_rank;  // the values' f16 window (common.glsl ld_lat); win 0: none
} pc;
void main() {
  const uint hl = gl_WorkGroupID.x, r = gl_WorkGroupID.y;
  if (r >= pc.n) return;
  const uint h = pc.h0 + hl, j = h / pc.n_rep;
  const uint lane = gl_SubgroupInvocationID, step = gl_SubgroupSize;
  const uint dh = pc.dh, W = pc.w;
  float qv[DHMAX];
  for (uint i = 0u; i < DHMAX; ++i) qv[i] = ldf(pc.q, r * pc.qw + h * dh + i);
  float acc[WMAX];
  for (uint c = 0u; c < WMAX; ++c) acc[c] = 0.0;
  float m = NEG_INF, l = 0.0;
  const uint visible = pc.p0 + r + 1u;
  const uint vcol = j * pc.vcol_per_kv;
  for (uint t = lane; t < visible; t += step) {
    float s = 0.0;
    const uint k0 = t * pc.k_words;
    if (KST == ST_F16) {
      // Two halves per word: half the loads and conversions (d_h and j·d_h are even).
      const uint w0 = k0 + (j * dh) / 2u;
      for (uint i = 0u; i < DHMAX; i += 2u) {
        const vec2 kk = unpackHalf2x16(pc.kc.v[w0 + i / 2u]);
        s += qv[i] * kk.x + qv[i + 1u] * kk.y;
      }
    } else {
      for (uint i = 0u; i < DHMAX; ++i) s += qv[i] * ld_row(pc.kc, k0, j * dh + i, KST, 0u);
    }
    s *= pc.scale;
    const float mn = max(m, s);
    const float corr = exp(m - mn);
    const float p = exp(s - mn);
    l = l * corr + p;
    const uint v0 = t * pc.v_words;
    if (VST == ST_F16 && (vcol % 2u) == 0u && (WMAX % 2u) == 0u) {
      const uint w0 = v0 + vcol / 2u;
      for (uint c = 0u; c < WMAX; c += 2u) {
        const vec2 vv = unpackHalf2x16(pc.vc.v[w0 + c / 2u]);
        acc[c] = acc[c] * corr + p * vv.x;
        acc[c + 1u] = acc[c + 1u] * corr + p * vv.y;
      }
    } else {
      for (uint c = 0u; c < WMAX; ++c) acc[c] = acc[c] * corr + p * ld_lat(pc.vc, t, pc.v_words, vcol + c, VST, pc.v_cap, pc.v_rank, pc.win, pc.win_begin);
    }
    m = mn;
  }
  const float M = subgroupMax(m);
  const float e = m == NEG_INF ? 0.0 : exp(m - M);
  const float L = subgroupAdd(l * e);
  const uint o = r * pc.ow + pc.out0 + hl * W;
  for (uint c = 0u; c < WMAX; ++c) {
    const float v = subgroupAdd(acc[c] * e);
    if (lane == c % step) stf(pc.out_, o + c, v / L);
  }
}
