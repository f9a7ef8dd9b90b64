// Fused latent decode attention for one low-rank group, one query head per workgroup row and one
// split of the cached tokens per workgroup column (flash-decoding; attn_reduce.comp merges the
// splits). No key is rebuilt: latent_fold.comp has folded the query into B^K, so
//   score(t) = Σ_{r<d_h/2} cos(θ_r t)·(M_r·z_t + α_r) + sin(θ_r t)·(M_{r+d_h/2}·z_t + β_r)
// with M = [a; b] (d_h × r_k, pre-scaled) and z_t the token's key latent row.
//
// Workgroup (hh, sp), WG = d_h·NC invocations: invocation (c, r) = tid / d_h, tid % d_h holds
// row r of M, columns [c·KC, (c+1)·KC), in registers (f16 pairs with F16, else f32) for the whole
// split. Per tile of TT tokens:
//   A. the tile's key latents (ld_lat: exactly the cache's decoding, f16 window included; f16
//      pairs with F16, rounded from the decoded f32; f32 without) go to shared memory, all
//      loads of an invocation issued before its first store;
//   B. each invocation dots its M slice with every row of the tile (f16 FMAs, flushed into an
//      f32 sum every FL columns), weights it by cos/sin of its row at the token's position (the
//      model's RoPE table, read one token ahead) and the subgroup sums it (subgroupAdd) into
//      red[subgroup][t];
// Shared memory is kept small (the key tile, 16 KiB at r_k = 256): staging the tile's cos/sin
// rows there as well (+16 KiB), or loading the next tile during B (+32 registers), each made
// the H100 run 14.3 ms instead of 9.5 ms at 64K — fewer workgroups per SM.
//   C. TT invocations add the subgroups' sums into the tile's scores; they all take the tile's
//      maximum, write p_t = e^{s_t − m} and (invocation 0) the running m, l and the correction;
//   D. every invocation accumulates p_t·z^V_t for its value columns tid + v·WG, z^V read by
//      ld_lat in batches of 8 independent loads.
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
// KC (latent columns per invocation, a multiple of FL) is a compile-time constant, one SPIR-V
// module per value: the register arrays must be indexed by constants after unrolling (spec
// constant trip counts leave them in local memory). Per-thread arrays are sized for their
// maxima and guarded by the spec-constant counts.
#ifndef KC
#define KC 128u
#endif
const uint FL = 32u;  // F16: columns per f16 partial sum
layout(constant_id = 3) const uint TT = 32u;   // tokens per tile (≤ 32, ≤ d_h/2)
layout(constant_id = 4) const uint ST = 1u;    // the cache storage
layout(constant_id = 5) const uint NSG = 8u;   // subgroups per workgroup
layout(constant_id = 6) const uint VPT = 2u;   // value columns per invocation (≤ VPT_MAX)
const uint VPT_MAX = 4u;
const uint TT_MAX = 32u;  // TT ≤ TT_MAX
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
const uint KW = TT * RKP / 2u;  // 32-bit words of a key tile
#else
shared vec4 zs[TT * RKP / 4];
const uint KW = TT * RKP;
#endif
const uint NK = (KW + WG - 1u) / WG;            // key words per invocation per tile (≤ NK_MAX)
#ifdef F16
const uint NK_MAX = KC / 4u;  // TT ≤ 32, d_h ≥ 64
#else
const uint NK_MAX = KC / 2u;
#endif

shared float red[NSG * TT];
shared float ss[TT];
shared float ps[TT];

// Key words of the tile at t0 (nt tokens) into kreg; rows ≥ nt and columns ≥ r_k load zeros.
#ifdef F16
#define LOAD_KEY(E, T0, NT, OUT)                                                              \
  {                                                                                           \
    const uint t_ = (E) / (RKP / 2u), pp_ = 2u * ((E) % (RKP / 2u));                          \
    uint w_ = 0u;                                                                             \
    if ((E) < KW && t_ < (NT) && pp_ < rk) {                                                  \
      if (ST == ST_F16) {                                                                     \
        w_ = pc.kc.v[((T0) + t_) * pc.k_words + (pp_ >> 1)];                                  \
        if (pp_ + 1u >= rk) w_ &= 0xffffu;                                                    \
      } else {                                                                                \
        const float z0_ = ld_lat(pc.kc, (T0) + t_, pc.k_words, pp_, ST, pc.cap, rk, pc.win,   \
                                 pc.win_begin);                                               \
        const float z1_ = pp_ + 1u < rk ? ld_lat(pc.kc, (T0) + t_, pc.k_words, pp_ + 1u, ST,  \
                                                 pc.cap, rk, pc.win, pc.win_begin)            \
                                        : 0.0;                                                \
        w_ = packHalf2x16(vec2(z0_, z1_));                                                    \
      }                                                                                       \
    }                                                                                         \
    OUT = w_;                                                                                 \
  }
#else
#define LOAD_KEY(E, T0, NT, OUT)                                                              \
  {                                                                                           \
    const uint t_ = (E) / RKP, p_ = (E) % RKP;                                                \
    OUT = (E) < KW && t_ < (NT) && p_ < rk                                                    \
              ? ld_lat(pc.kc, (T0) + t_, pc.k_words, p_, ST, pc.cap, rk, pc.win, pc.win_begin) \
              : 0.0;                                                                          \
  }
#endif
#define LOAD_TILE(T0, NT)                                                                     \
  {                                                                                           \
    [[unroll]] for (uint j = 0u; j < NK_MAX; ++j)                                             \
      if (j < NK) LOAD_KEY(tid + j * WG, T0, NT, kreg[j]);                                    \
  }

void main() {
  const uint hh = gl_WorkGroupID.x;
  const uint sp = gl_WorkGroupID.y;
  const uint splits = gl_NumWorkGroups.y;
  const uint tid = gl_LocalInvocationID.x;
  const uint r = tid % DH, c = tid / DH;
  const uint half_dh = DH / 2u;
  const uint m0 = (hh * DH + r) * RKP + c * KC;
  const uint ri = r % half_dh;
  const uint coef_off = r >= half_dh ? pc.sin_off : 0u;
#ifdef F16
  f16vec2 mr[KC / 2];
  [[unroll]] for (uint k = 0u; k < KC / 2u; ++k)
    mr[k] = f16vec2(vec2(ldf(pc.m, m0 + 2u * k), ldf(pc.m, m0 + 2u * k + 1u)));
  uint kreg[NK_MAX];
#else
  float mr[KC];
  [[unroll]] for (uint k = 0u; k < KC; ++k) mr[k] = ldf(pc.m, m0 + k);
  float kreg[NK_MAX];
#endif
  const float mb = c == 0u ? ldf(pc.mb, hh * DH + r) : 0.0;
  float mx = NEG_INF, l = 0.0;
  float vacc[VPT_MAX];
  [[unroll]] for (uint v = 0u; v < VPT_MAX; ++v) vacc[v] = 0.0;
  const uint rk = pc.r_k, rv = pc.r_v;
  const uint t_begin = sp * pc.tps;
  const uint t_end = min(pc.T, t_begin + pc.tps);
  for (uint t0 = t_begin; t0 < t_end; t0 += TT) {
    const uint nt = min(TT, t_end - t0);
    // A. the tile's loads, all issued before the first store, then into shared memory.
    LOAD_TILE(t0, nt);
    [[unroll]] for (uint j = 0u; j < NK_MAX; ++j) {
      const uint e = tid + j * WG;
      if (j < NK && e < KW) zs[e >> 2][e & 3u] = kreg[j];
    }
    barrier();
    // B. partial scores of this invocation's row slice, summed per subgroup. The cos/sin weight
    // of the next token is loaded while this one is computed.
    float coef_next = ldf(pc.rope, coef_off + t0 * half_dh + ri);
    for (uint t = 0u; t < nt; ++t) {
      const float coef = coef_next;
      if (t + 1u < nt) coef_next = ldf(pc.rope, coef_off + (t0 + t + 1u) * half_dh + ri);
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
      const float sum = subgroupAdd((part + mb) * coef);
      if (subgroupElect()) red[gl_SubgroupID * TT + t] = sum;
    }
    barrier();
    // C. the tile's scores (subgroups summed in a fixed order), its maximum, p_t.
    if (tid < TT) {
      float s = NEG_INF;
      if (tid < nt) {
        s = 0.0;
        for (uint g = 0u; g < NSG; ++g) s += red[g * TT + tid];
      }
      ss[tid] = s;
    }
    barrier();
    const float prev = mx;
    [[unroll]] for (uint t = 0u; t < TT_MAX; ++t)
      if (t < TT) mx = max(mx, ss[t]);
    const float corr = exp(prev - mx);
    if (tid < TT) ps[tid] = exp(ss[tid] - mx);
    barrier();
    // D. the value latents, 8 tokens' loads at a time.
    [[unroll]] for (uint v = 0u; v < VPT_MAX; ++v) {
      if (v < VPT) {
        const uint col = min(tid + v * WG, rv - 1u);
        float acc = 0.0;
        [[unroll]] for (uint t8 = 0u; t8 < TT_MAX; t8 += 8u) {
          if (t8 < nt) {
            float vv[8];
            [[unroll]] for (uint k = 0u; k < 8u; ++k)
              vv[k] = ld_lat(pc.vc, t0 + min(t8 + k, nt - 1u), pc.v_words, col, ST, pc.cap, rv, pc.win, pc.win_begin);
            [[unroll]] for (uint k = 0u; k < 8u; ++k) acc = fma(ps[t8 + k], vv[k], acc);
          }
        }
        vacc[v] = fma(vacc[v], corr, acc);
      }
    }
    if (tid == 0u) {
      float sum = 0.0;
      for (uint t = 0u; t < nt; ++t) sum += ps[t];
      l = fma(l, corr, sum);
    }
  }
  const uint o = ((pc.h0 + hh) * splits + sp) * pc.part_stride;
  if (tid == 0u) {
    stf(pc.part, o, mx);
    stf(pc.part, o + 1u, l);
  }
  [[unroll]] for (uint v = 0u; v < VPT_MAX; ++v) {
    const uint col = tid + v * WG;
    if (v < VPT && col < rv) stf(pc.part, o + 2u + col, vacc[v]);
  }
}
