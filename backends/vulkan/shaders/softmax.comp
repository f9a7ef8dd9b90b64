// Row-wise softmax in place: x[r, i] = exp(x[r, i] − max) / Σ   one workgroup per row.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC { Buf x; uint rows, n, ld; } pc;
shared float red[64];
void main() {
  const uint r = flat_group();
  if (r >= pc.rows) return;
  const uint tid = gl_LocalInvocationID.x;
  float mx = NEG_INF;
  for (uint i = tid; i < pc.n; i += 64u) mx = max(mx, ldf(pc.x, r * pc.ld + i));
  red[tid] = mx;
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (tid < s) red[tid] = max(red[tid], red[tid + s]);
    barrier();
  }
  mx = red[0];
  barrier();
  float sum = 0.0;
  for (uint i = tid; i < pc.n; i += 64u) {
    const float e = exp(ldf(pc.x, r * pc.ld + i) - mx);
    stf(pc.x, r * pc.ld + i, e);
    sum += e;
  }
  red[tid] = sum;
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (tid < s) red[tid] += red[tid + s];
    barrier();
  }
  const float inv = 1.0 / red[0];
  for (uint i = tid; i < pc.n; i += 64u) stf(pc.x, r * pc.ld + i, ldf(pc.x, r * pc.ld + i) * inv);
}
