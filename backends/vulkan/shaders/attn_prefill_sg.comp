// attn_prefill.comp's attention without shared memory or barriers, one subgroup per workgroup:
// workgroup (hl, g) is query head h = h0 + hl at query rows r = g·RB … g·RB + RB − 1; each
// invocation walks keys lane, lane + subgroup size, … ≤ p0 + the block's last row, keeping an
// online softmax per row (m, l, acc[w] in registers; keys past a row's own last position leave
// it unchanged), and the subgroup merges the invocations' partials with subgroupMax/subgroupAdd.
// Picked on CPU drivers (lavapipe), where barriers and shared memory are expensive; same push
// constants, same results up to summation order. RB rows per workgroup because a key and value
// row loaded once then feeds RB rows: lavapipe (Mesa 22.3) turns every buffer load into a loop
// over the SIMD lanes, and those loads dominate its time.
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
layout(constant_id = 5) const uint RB = 1u;  // query rows per workgroup
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
  const uint hl = gl_WorkGroupID.x, r0 = gl_WorkGroupID.y * RB;
  if (r0 >= pc.n) return;
  const uint h = pc.h0 + hl, j = h / pc.n_rep;
  const uint lane = gl_SubgroupInvocationID, step = gl_SubgroupSize;
  const uint dh = pc.dh, W = pc.w;
  // Rows past n repeat row n − 1 (never stored).
  uint last[RB];  // the last visible key of each row
  float qv[RB][DHMAX];
  for (uint b = 0u; b < RB; ++b) {
    const uint r = min(r0 + b, pc.n - 1u);
    last[b] = pc.p0 + r;
    for (uint i = 0u; i < DHMAX; ++i) qv[b][i] = ldf(pc.q, r * pc.qw + h * dh + i);
  }
  float acc[RB][WMAX];
  float m[RB], l[RB];
  for (uint b = 0u; b < RB; ++b) {
    for (uint c = 0u; c < WMAX; ++c) acc[b][c] = 0.0;
    m[b] = NEG_INF;
    l[b] = 0.0;
  }
  const uint visible = last[RB - 1u] + 1u;
  const uint vcol = j * pc.vcol_per_kv;
  for (uint t = lane; t < visible; t += step) {
    float s[RB];
    for (uint b = 0u; b < RB; ++b) s[b] = 0.0;
    const uint k0 = t * pc.k_words;
    if (KST == ST_F16) {
      // Two halves per word: half the loads and conversions (d_h and j·d_h are even).
      const uint w0 = k0 + (j * dh) / 2u;
      for (uint i = 0u; i < DHMAX; i += 2u) {
        const vec2 kk = unpackHalf2x16(pc.kc.v[w0 + i / 2u]);
        for (uint b = 0u; b < RB; ++b) s[b] += qv[b][i] * kk.x + qv[b][i + 1u] * kk.y;
      }
    } else {
      for (uint i = 0u; i < DHMAX; ++i) {
        const float kk = ld_row(pc.kc, k0, j * dh + i, KST, 0u);
        for (uint b = 0u; b < RB; ++b) s[b] += qv[b][i] * kk;
      }
    }
    // Keys past a row's last visible one leave its state as it was (corr 1, p 0).
    float corr[RB], p[RB];
    for (uint b = 0u; b < RB; ++b) {
      const bool vis = t <= last[b];
      const float sb = s[b] * pc.scale;
      const float mn = vis ? max(m[b], sb) : m[b];
      corr[b] = vis ? exp(m[b] - mn) : 1.0;
      p[b] = vis ? exp(sb - mn) : 0.0;
      l[b] = l[b] * corr[b] + p[b];
      m[b] = mn;
    }
    const uint v0 = t * pc.v_words;
    if (VST == ST_F16 && (vcol % 2u) == 0u && (WMAX % 2u) == 0u) {
      const uint w0 = v0 + vcol / 2u;
      for (uint c = 0u; c < WMAX; c += 2u) {
        const vec2 vv = unpackHalf2x16(pc.vc.v[w0 + c / 2u]);
        for (uint b = 0u; b < RB; ++b) {
          acc[b][c] = acc[b][c] * corr[b] + p[b] * vv.x;
          acc[b][c + 1u] = acc[b][c + 1u] * corr[b] + p[b] * vv.y;
        }
      }
    } else {
      for (uint c = 0u; c < WMAX; ++c) {
        const float vv = ld_lat(pc.vc, t, pc.v_words, vcol + c, VST, pc.v_cap, pc.v_rank, pc.win, pc.win_begin);
        for (uint b = 0u; b < RB; ++b) acc[b][c] = acc[b][c] * corr[b] + p[b] * vv;
      }
    }
  }
  for (uint b = 0u; b < RB; ++b) {
    const uint r = r0 + b;
    if (r >= pc.n) break;
    const float M = subgroupMax(m[b]);
    const float e = m[b] == NEG_INF ? 0.0 : exp(m[b] - M);
    const float L = subgroupAdd(l[b] * e);
    const uint o = r * pc.ow + pc.out0 + hl * W;
    for (uint c = 0u; c < WMAX; ++c) {
      const float v = subgroupAdd(acc[b][c] * e);
      if (lane == c % step) stf(pc.out_, o + c, v / L);
    }
  }
}
