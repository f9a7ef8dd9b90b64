// The same product as matmul.comp for M ≤ 4 rows (decode): each workgroup computes 4 output
// columns for every row; its 64 invocations stride over K (consecutive weights per
// invocation step, so a warp reads whole rows) and reduce through shared memory.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(constant_id = 0) const uint WDT = 1u;
layout(push_constant) uniform PC {
  Buf a;
  Buf w;
  Buf c;
  Buf bias;
  uint M, N, K, lda, ldc;
  uint flags;
} pc;
const uint NC = 4u, MR = 4u;
shared float red[MR * NC][64];
void main() {
  const uint tid = gl_LocalInvocationID.x;
  const uint n0 = flat_group() * NC;
  float acc[MR][NC];
  for (uint i = 0u; i < MR; ++i)
    for (uint j = 0u; j < NC; ++j) acc[i][j] = 0.0;
  for (uint k = tid; k < pc.K; k += 64u) {
    float wv[NC];
    for (uint j = 0u; j < NC; ++j) wv[j] = (n0 + j < pc.N) ? ldw(pc.w, (n0 + j) * pc.K + k, WDT) : 0.0;
    for (uint i = 0u; i < MR; ++i) {
      if (i >= pc.M) break;
      const float av = ldf(pc.a, i * pc.lda + k);
      for (uint j = 0u; j < NC; ++j) acc[i][j] += av * wv[j];
    }
  }
  for (uint i = 0u; i < MR; ++i)
    for (uint j = 0u; j < NC; ++j) red[i * NC + j][tid] = acc[i][j];
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (tid < s)
      for (uint e = 0u; e < MR * NC; ++e) red[e][tid] += red[e][tid + s];
    barrier();
  }
  if (tid < MR * NC) {
    const uint i = tid / NC, j = tid % NC;
    const uint col = n0 + j;
    if (i < pc.M && col < pc.N) {
      float v = red[tid][0];
      if ((pc.flags & 2u) != 0u) v += ldf(pc.bias, col);
      const uint o = i * pc.ldc + col;
      if ((pc.flags & 1u) != 0u) v += ldf(pc.c, o);
      stf(pc.c, o, v);
    }
  }
}
