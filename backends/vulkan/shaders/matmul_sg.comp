// The product of matmul.comp with one subgroup per workgroup and no shared memory or barriers:
// each workgroup computes an MB×NB block of C (specialization constants), its invocations stride over K (consecutive lanes
// read consecutive values of a row) and the block is summed with subgroupAdd. Picked when the
// device has subgroup arithmetic in compute shaders; on CPU drivers (lavapipe) it is ~10×
// faster than the shared-memory tiles, whose barriers are expensive there.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#include "common.glsl"
layout(local_size_x_id = 1) in;  // = the subgroup size
layout(constant_id = 0) const uint WDT = 1u;
layout(push_constant) uniform PC {
  Buf a;
  Buf w;
  Buf c;
  Buf bias;
  uint M, N, K, lda, ldc;
  uint flags;
} pc;
layout(constant_id = 2) const uint MB = 4u;
layout(constant_id = 3) const uint NB = 4u;
void main() {
  const uint lane = gl_SubgroupInvocationID, step = gl_SubgroupSize;
  const uint n0 = gl_WorkGroupID.x * NB, m0 = gl_WorkGroupID.y * MB;
  const uint nm = min(MB, pc.M - m0), nn = min(NB, pc.N - n0);
  float acc[MB][NB];
  for (uint i = 0u; i < MB; ++i)
    for (uint j = 0u; j < NB; ++j) acc[i][j] = 0.0;
  for (uint k = lane; k < pc.K; k += step) {
    float wv[NB], av[MB];
    for (uint j = 0u; j < NB; ++j) wv[j] = j < nn ? ldw(pc.w, (n0 + j) * pc.K + k, WDT) : 0.0;
    for (uint i = 0u; i < MB; ++i) av[i] = i < nm ? ldf(pc.a, (m0 + i) * pc.lda + k) : 0.0;
    for (uint i = 0u; i < MB; ++i)
      for (uint j = 0u; j < NB; ++j) acc[i][j] += av[i] * wv[j];
  }
  for (uint i = 0u; i < MB; ++i) {
    for (uint j = 0u; j < NB; ++j) {
      const float v = subgroupAdd(acc[i][j]);
      if (lane == (i * NB + j) % step && i < nm && j < nn) {
        float o = v;
        if ((pc.flags & 2u) != 0u) o += ldf(pc.bias, n0 + j);
        const uint idx = (m0 + i) * pc.ldc + n0 + j;
        if ((pc.flags & 1u) != 0u) o += ldf(pc.c, idx);
        stf(pc.c, idx, o);
      }
    }
  }
}
