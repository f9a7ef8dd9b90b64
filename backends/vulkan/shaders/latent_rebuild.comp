// Keys of one low-rank group rebuilt from its latents for positions 0 .. T−1 (latent prefill):
// out[t·ld + col0 + u·d_h + i] = rope(B^K_g·z_t + b, t) for the group's s KV heads.
// One workgroup per token; its latent row is dequantized into shared memory once (the f16
// window copy for positions ≥ win_begin when win > 0, common.glsl ld_lat).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint WDT = 1u;
layout(constant_id = 1) const uint RMAX = 256u;
layout(push_constant) uniform PC {
  Buf kc;    // the group's z^K region
  Buf bk;    // B^K_gᵀ [r_k, s·d_h]
  Buf bias;  // [s·d_h] f32 (flags & 1)
  Buf rope;
  Buf out_;  // [T, ld] f32
  uint T, k_words, storage, cap, r_k, s, dh, sin_off, ld, col0, flags, win, win_begin;
} pc;
shared float zs[RMAX];
void main() {
  const uint t = flat_group();
  if (t >= pc.T) return;
  const uint tid = gl_LocalInvocationID.x;
  const uint rk = pc.r_k, dh = pc.dh, half_dh = dh / 2u;
  for (uint p = tid; p < rk; p += 64u) zs[p] = ld_lat(pc.kc, t, pc.k_words, p, pc.storage, pc.cap, rk, pc.win, pc.win_begin);
  barrier();
  for (uint e = tid; e < pc.s * half_dh; e += 64u) {
    const uint u = e / half_dh, i = e % half_dh;
    const uint n0 = u * dh + i, n1 = n0 + half_dh;
    float a = 0.0, b = 0.0;
    for (uint p = 0u; p < rk; ++p) {
      a += zs[p] * ldw(pc.bk, p * (pc.s * dh) + n0, WDT);
      b += zs[p] * ldw(pc.bk, p * (pc.s * dh) + n1, WDT);
    }
    if ((pc.flags & 1u) != 0u) {
      a += ldf(pc.bias, n0);
      b += ldf(pc.bias, n1);
    }
    const float c = ldf(pc.rope, t * half_dh + i);
    const float sn = ldf(pc.rope, pc.sin_off + t * half_dh + i);
    precise float p0 = a * c;
    precise float p1 = b * sn;
    precise float p2 = b * c;
    precise float p3 = a * sn;
    precise float y0 = p0 - p1;
    precise float y1 = p2 + p3;
    stf(pc.out_, t * pc.ld + pc.col0 + n0, y0);
    stf(pc.out_, t * pc.ld + pc.col0 + n1, y1);
  }
}
