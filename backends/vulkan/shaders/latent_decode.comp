// Fused latent decode attention for one low-rank group, one query head per workgroup row and one
// split of the cached tokens per workgroup column (flash-decoding; attn_reduce.comp merges the
// splits). No key is rebuilt: latent_fold.comp has folded the query into B^K, so
//   score(t) = Σ_{r<d_h/2} cos(θ_r t)·(M_r·z_t + α_r) + sin(θ_r t)·(M_{r+d_h/2}·z_t + β_r)
// with M = [a; b] (d_h × r_k, pre-scaled) and z_t the token's key latent row.
//
// Workgroup (hh, sp), WG = d_h·NC invocations: invocation (c, r) = tid / d_h, tid % d_h holds
// row r of M, columns [c·KC, (c+1)·KC), in registers (f16 pairs with F16, else f32) for the whole
// split. Per tile of TT tokens:
//   A. the tile's key latents (ld_lat: exactly the cache's decoding, f16 window included) are
//      written to shared memory (f16 pairs with F16, rounded from the decoded f32; f32 without);
//   B. each invocation dots its M slice with every row of the tile (f16 FMAs, flushed into an
//      f32 sum every FL columns), weights it by cos/sin of its row at the token's position (the
//      model's RoPE table) and the subgroup sums it (subgroupAdd) into red[subgroup][t];
//   C. TT invocations add the subgroups' sums into the tile's scores ss[t];
//   D. every invocation runs the same online softmax over ss (so m and l agree without another
//      barrier) and accumulates p_t·z^V_t for its value columns tid + v·WG, z^V read by ld_lat.
// The split's partial (m, l, acc[r_v]) goes to part[((h0 + hh)·splits + sp)·part_stride ..] in
// attn_decode.comp's layout. Values are never rebuilt (B^V is folded into W_o).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_EXT_control_flow_attributes : require
#ifdef F16
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#endif
#include "common.glsl"
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint DH = 128u;  // head dim
layout(constant_id = 2) const uint KC = 128u;  // latent columns per invocation (multiple of 8)
layout(constant_id = 3) const uint TT = 32u;   // tokens per tile
layout(constant_id = 4) const uint ST = 1u;    // the cache storage
layout(constant_id = 5) const uint NSG = 8u;   // subgroups per workgroup
layout(constant_id = 6) const uint VPT = 2u;   // value columns per invocation
layout(constant_id = 7) const uint FL = 32u;   // F16: columns per f16 partial sum (multiple of 8)
const uint WG = gl_WorkGroupSize.x;
const uint NC = WG / DH;
const uint RKP = NC * KC;  // padded key rank (M and the tile are zero beyond r_k)
layout(push_constant) uniform PC {
  Buf m;     // [heads of the group, d_h, RKP] f32 (latent_fold.comp)
  Buf mb;    // [heads of the group, d_h] f32 key-bias terms
  Buf kc;    // z^K region
  Buf vc;    // z^V region
  Buf rope;  // cos [P, d_h/2], sin at word sin_off
  Buf part;  // partials
  uint T, tps, cap, k_words, v_words, win, win_begin, h0, r_k, r_v, sin_off, part_stride;
} pc;

#ifdef F16
shared uvec4 zs[TT * RKP / 8];  // f16 pairs, 8 latents per element
#else
shared vec4 zs[TT * RKP / 4];
#endif
shared float red[NSG * TT];
shared float ss[TT];

void main() {
  const uint hh = gl_WorkGroupID.x;
  const uint sp = gl_WorkGroupID.y;
  const uint splits = gl_NumWorkGroups.y;
  const uint tid = gl_LocalInvocationID.x;
  const uint r = tid % DH, c = tid / DH;
  const uint half_dh = DH / 2u;
  const uint ri = r % half_dh;
  const uint coef_off = r >= half_dh ? pc.sin_off : 0u;
  const uint m0 = (hh * DH + r) * RKP + c * KC;
#ifdef F16
  f16vec2 mr[KC / 2];
  [[unroll]] for (uint k = 0u; k < KC / 2u; ++k)
    mr[k] = f16vec2(vec2(ldf(pc.m, m0 + 2u * k), ldf(pc.m, m0 + 2u * k + 1u)));
#else
  float mr[KC];
  [[unroll]] for (uint k = 0u; k < KC; ++k) mr[k] = ldf(pc.m, m0 + k);
#endif
  const float mb = c == 0u ? ldf(pc.mb, hh * DH + r) : 0.0;
  float mx = NEG_INF, l = 0.0;
  float vacc[VPT];
  [[unroll]] for (uint v = 0u; v < VPT; ++v) vacc[v] = 0.0;
  const uint rk = pc.r_k, rv = pc.r_v;
  const uint t_begin = sp * pc.tps;
  const uint t_end = min(pc.T, t_begin + pc.tps);
  for (uint t0 = t_begin; t0 < t_end; t0 += TT) {
    const uint nt = min(TT, t_end - t0);
    // A. key latents of the tile into shared memory (zero beyond r_k; rows ≥ nt are not read).
#ifdef F16
    for (uint e = tid; e < nt * (RKP / 2u); e += WG) {
      const uint t = e / (RKP / 2u), pp = 2u * (e % (RKP / 2u));
      uint w = 0u;
      if (pp < rk) {
        if (ST == ST_F16) {
          w = pc.kc.v[(t0 + t) * pc.k_words + (pp >> 1)];
          if (pp + 1u >= rk) w &= 0xffffu;
        } else {
          const float z0 = ld_lat(pc.kc, t0 + t, pc.k_words, pp, ST, pc.cap, rk, pc.win, pc.win_begin);
          const float z1 = pp + 1u < rk ? ld_lat(pc.kc, t0 + t, pc.k_words, pp + 1u, ST, pc.cap, rk, pc.win, pc.win_begin) : 0.0;
          w = packHalf2x16(vec2(z0, z1));
        }
      }
      zs[e >> 2][e & 3u] = w;
    }
#else
    for (uint e = tid; e < nt * RKP; e += WG) {
      const uint t = e / RKP, p = e % RKP;
      zs[e >> 2][e & 3u] = p < rk ? ld_lat(pc.kc, t0 + t, pc.k_words, p, ST, pc.cap, rk, pc.win, pc.win_begin) : 0.0;
    }
#endif
    barrier();
    // B. partial scores of this invocation's row slice, summed per subgroup.
    for (uint t = 0u; t < nt; ++t) {
      float part = 0.0;
#ifdef F16
      const uint z0 = (t * RKP + c * KC) / 8u;
      [[unroll]] for (uint f = 0u; f < KC / FL; ++f) {
        f16vec2 h = f16vec2(0.0);
        [[unroll]] for (uint k = 0u; k < FL / 8u; ++k) {
          const uvec4 w = zs[z0 + f * (FL / 8u) + k];
          const uint b = f * (FL / 2u) + 4u * k;
          h = fma(mr[b], unpackFloat2x16(w.x), h);
          h = fma(mr[b + 1u], unpackFloat2x16(w.y), h);
          h = fma(mr[b + 2u], unpackFloat2x16(w.z), h);
          h = fma(mr[b + 3u], unpackFloat2x16(w.w), h);
        }
        part += float(h.x) + float(h.y);
      }
#else
      const uint z0 = (t * RKP + c * KC) / 4u;
      [[unroll]] for (uint k = 0u; k < KC / 4u; ++k) {
        const vec4 w = zs[z0 + k];
        part = fma(mr[4u * k], w.x, part);
        part = fma(mr[4u * k + 1u], w.y, part);
        part = fma(mr[4u * k + 2u], w.z, part);
        part = fma(mr[4u * k + 3u], w.w, part);
      }
#endif
      const float coef = ldf(pc.rope, coef_off + (t0 + t) * half_dh + ri);
      const float sum = subgroupAdd((part + mb) * coef);
      if (subgroupElect()) red[gl_SubgroupID * TT + t] = sum;
    }
    barrier();
    // C. the tile's scores, summed over subgroups in a fixed order.
    if (tid < nt) {
      float s = 0.0;
      for (uint g = 0u; g < NSG; ++g) s += red[g * TT + tid];
      ss[tid] = s;
    }
    barrier();
    // D. online softmax and the value latents.
    float tmax = mx;
    for (uint t = 0u; t < nt; ++t) tmax = max(tmax, ss[t]);
    const float corr = exp(mx - tmax);
    l *= corr;
    [[unroll]] for (uint v = 0u; v < VPT; ++v) vacc[v] *= corr;
    for (uint t = 0u; t < nt; ++t) {
      const float p = exp(ss[t] - tmax);
      l += p;
      [[unroll]] for (uint v = 0u; v < VPT; ++v) {
        const uint col = tid + v * WG;
        if (col < rv) vacc[v] += p * ld_lat(pc.vc, t0 + t, pc.v_words, col, ST, pc.cap, rv, pc.win, pc.win_begin);
      }
    }
    mx = tmax;
  }
  const uint o = ((pc.h0 + hh) * splits + sp) * pc.part_stride;
  if (tid == 0u) {
    stf(pc.part, o, mx);
    stf(pc.part, o + 1u, l);
  }
  [[unroll]] for (uint v = 0u; v < VPT; ++v) {
    const uint col = tid + v * WG;
    if (col < rv) stf(pc.part, o + 2u + col, vacc[v]);
  }
}
