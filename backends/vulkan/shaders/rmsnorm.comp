// y[r, :] = x[r, :] / sqrt(mean(x²) + eps) · w   one workgroup per row (y may alias x).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC {
  Buf x;  // [rows, ld]
  Buf w;  // [n] f32
  Buf y;  // [rows, ld]
  uint rows, n, ld;
  float eps;
} pc;
shared float red[64];
void main() {
  const uint r = flat_group();
  if (r >= pc.rows) return;
  const uint tid = gl_LocalInvocationID.x;
  float ss = 0.0;
  for (uint i = tid; i < pc.n; i += 64u) {
    const float v = ldf(pc.x, r * pc.ld + i);
    ss += v * v;
  }
  red[tid] = ss;
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    barrier();
  }
  const float inv = 1.0 / sqrt(red[0] / float(pc.n) + pc.eps);
  for (uint i = tid; i < pc.n; i += 64u) {
    stf(pc.y, r * pc.ld + i, ldf(pc.x, r * pc.ld + i) * inv * ldf(pc.w, i));
  }
}
