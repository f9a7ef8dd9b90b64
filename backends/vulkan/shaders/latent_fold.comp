// Folds each query head of one low-rank group into its B^K rows (the fused latent decode's first
// step; latent_decode.comp is the second). For query head hh of the group (KV head
// u = hh / n_rep, query q = q[h0 + hh]) and rotate-half pairs (i, i + d_h/2):
//   a_i = q_i·B_i + q_{i+d_h/2}·B_{i+d_h/2},  b_i = q_{i+d_h/2}·B_i − q_i·B_{i+d_h/2}
// (B_i: row u·d_h + i of B^K_g, r_k values), so that
//   q·rope(B z + β, t) = Σ_i cos(θ_i t)·(a_i·z + α_i) + sin(θ_i t)·(b_i·z + β'_i)
// with the key-bias terms α_i = q_i β_i + q_{i+d_h/2} β_{i+d_h/2}, β'_i = q_{i+d_h/2} β_i −
// q_i β_{i+d_h/2}. Everything is pre-multiplied by the softmax scale.
// Output: m[(hh·d_h + r)·rkp + p] f32, rows r < d_h/2 the a_r, rows r ≥ d_h/2 the b_{r−d_h/2},
// columns p ∈ [r_k, rkp) zero (the main kernel's padding); mb[hh·d_h + r] the bias terms (zero
// without a bias). Workgroup (x, i, hh): pair i of head hh, columns x·64 .. x·64 + 63.
// F16T (latent_decode_cmg.comp): Mᵀ as f16, [rkp, HG·d_h] at slot z (halves z·slot_halves):
// element (p, hh·d_h + r); row p = r_k holds the bias terms when flags & 1 (the decode's tiles
// carry a 1 in that column), other rows ≥ r_k zero; plus the slot's z^K / z^V addresses in tbl.
// Workgroup (x, p, hh): rows r = x·64 + local id of latent p, head hh: reads of B^K and writes of
// Mᵀ contiguous in r. flags & 2: Mᵀ in 16×16 tiles instead (latent_decode_cmg.comp MTL),
// element (p, c) at ((c / 16)·RKB + p / 16)·256 + (p % 16)·16 + c % 16, RKB = rows / 16.
// Workgroup z: head hh = z % hg of slot slot + z / hg (one slot per dispatch, z < hg, or all
// the slots of a call in one dispatch). flags & 4: the slots' addresses from a table at tbl
// (latent_decode_cmg.comp's own: n = gl_NumWorkGroups.z / hg entries uvec4 (z^K, z^V), then n
// entries uvec4 (B^K, key bias); the host writes it, Recorder::inline_data) instead of the
// push constants bk, bias, kc, vc, and nothing is written to tbl.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
#ifdef F16T
#extension GL_EXT_buffer_reference_uvec2 : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_16bit_storage : require
layout(buffer_reference, std430, buffer_reference_align = 2) buffer BufH { float16_t v[]; };
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint WDT = 1u;  // B^K dtype
layout(push_constant) uniform PC {
  Buf q;     // [H, d_h] f32, RoPE applied
  Buf bk;    // B^K_gᵀ [r_k, s·d_h], dtype WDT
  Buf bias;  // [s·d_h] f32 (flags & 1)
  BufH m;    // out: Mᵀ slots
  Buf tbl;   // out: per slot z^K, z^V addresses (4 words)
  uvec2 kc, vc;
  uint h0, n_rep, dh, r_k, ncol, flags, slot, slot_halves;
  float scale;
  uint hg;  // query heads per slot
} pc;
void main() {
  const uint hh = gl_WorkGroupID.z % pc.hg, zs = gl_WorkGroupID.z / pc.hg, p = gl_WorkGroupID.y;
  const uint slot = pc.slot + zs;
  const uint i = gl_WorkGroupID.x * 64u + gl_LocalInvocationID.x;
  const uint dh = pc.dh, half_dh = dh / 2u, u = hh / pc.n_rep, hq = pc.h0 + slot * pc.hg + hh;
  Buf bk = pc.bk, bias = pc.bias;
  if ((pc.flags & 4u) != 0u) {
    const uint e = 4u * (gl_NumWorkGroups.z / pc.hg + zs);
    bk = Buf(uvec2(pc.tbl.v[e], pc.tbl.v[e + 1u]));
    bias = Buf(uvec2(pc.tbl.v[e + 2u], pc.tbl.v[e + 3u]));
  } else if (gl_WorkGroupID == uvec3(0u) && gl_LocalInvocationID.x == 0u) {
    pc.tbl.v[4u * slot] = pc.kc.x;
    pc.tbl.v[4u * slot + 1u] = pc.kc.y;
    pc.tbl.v[4u * slot + 2u] = pc.vc.x;
    pc.tbl.v[4u * slot + 3u] = pc.vc.y;
  }
  if (i >= half_dh) return;
  const float q0 = ldf(pc.q, hq * dh + i), q1 = ldf(pc.q, hq * dh + i + half_dh);
  float a = 0.0, b = 0.0;
  if (p < pc.r_k) {
    const float b0 = ldw(bk, p * pc.ncol + u * dh + i, WDT);
    const float b1 = ldw(bk, p * pc.ncol + u * dh + i + half_dh, WDT);
    a = pc.scale * (q0 * b0 + q1 * b1);
    b = pc.scale * (q1 * b0 - q0 * b1);
  } else if (p == pc.r_k && (pc.flags & 1u) != 0u) {
    const float b0 = ldf(bias, u * dh + i), b1 = ldf(bias, u * dh + i + half_dh);
    a = pc.scale * (q0 * b0 + q1 * b1);
    b = pc.scale * (q1 * b0 - q0 * b1);
  }
  const uint nc = pc.hg * dh, c = hh * dh + i;
  uint o = slot * pc.slot_halves, o2 = o;
  if ((pc.flags & 2u) != 0u) {
    const uint rkb = gl_NumWorkGroups.y / 16u, c2 = c + half_dh;
    const uint pin = (p >> 4) * 256u + (p & 15u) * 16u;
    o += (c >> 4) * rkb * 256u + pin + (c & 15u);
    o2 += (c2 >> 4) * rkb * 256u + pin + (c2 & 15u);
  } else {
    o += p * nc + c;
    o2 = o + half_dh;
  }
  pc.m.v[o] = float16_t(a);
  pc.m.v[o2] = float16_t(b);
}
#else
#ifdef F16OUT
// M as f16 (latent_decode_cm.comp loads its matrix fragments from it).
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_EXT_shader_16bit_storage : require
layout(buffer_reference, std430, buffer_reference_align = 2) buffer BufH { float16_t v[]; };
#define MBUF BufH
#define STM(i, x) pc.m.v[i] = float16_t(x)
#else
#define MBUF Buf
#define STM(i, x) stf(pc.m, i, x)
#endif
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint WDT = 1u;  // B^K dtype
layout(push_constant) uniform PC {
  Buf q;     // [H, d_h] f32, RoPE applied
  Buf bk;    // B^K_gᵀ [r_k, s·d_h], dtype WDT
  Buf bias;  // [s·d_h] f32 (flags & 1)
  MBUF m;    // out: [heads of the group, d_h, rkp] f32 (F16OUT: f16)
  Buf mb;    // out: [heads of the group, d_h] f32
  uint h0, n_rep, dh, r_k, rkp, ncol, flags;
  float scale;
} pc;
void main() {
  const uint hh = gl_WorkGroupID.z, i = gl_WorkGroupID.y;
  const uint p = gl_WorkGroupID.x * 64u + gl_LocalInvocationID.x;
  const uint dh = pc.dh, half_dh = dh / 2u, u = hh / pc.n_rep, hq = pc.h0 + hh;
  const float q0 = ldf(pc.q, hq * dh + i), q1 = ldf(pc.q, hq * dh + i + half_dh);
  if (p < pc.rkp) {
    float a = 0.0, b = 0.0;
    if (p < pc.r_k) {
      const float b0 = ldw(pc.bk, p * pc.ncol + u * dh + i, WDT);
      const float b1 = ldw(pc.bk, p * pc.ncol + u * dh + i + half_dh, WDT);
      a = pc.scale * (q0 * b0 + q1 * b1);
      b = pc.scale * (q1 * b0 - q0 * b1);
    }
    STM((hh * dh + i) * pc.rkp + p, a);
    STM((hh * dh + half_dh + i) * pc.rkp + p, b);
  }
  if (gl_WorkGroupID.x == 0u && gl_LocalInvocationID.x == 0u) {
    float a = 0.0, b = 0.0;
    if ((pc.flags & 1u) != 0u) {
      const float b0 = ldf(pc.bias, u * dh + i), b1 = ldf(pc.bias, u * dh + i + half_dh);
      a = pc.scale * (q0 * b0 + q1 * b1);
      b = pc.scale * (q1 * b0 - q0 * b1);
    }
    stf(pc.mb, hh * dh + i, a);
    stf(pc.mb, hh * dh + half_dh + i, b);
  }
}
#endif
