// y[i] = g[i] / (1 + exp(−g[i])) · u[i]   (y may alias g)
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC { Buf g; Buf u; Buf y; uint n; } pc;
void main() {
  const uint i = gl_GlobalInvocationID.x + gl_NumWorkGroups.x * 64u * gl_WorkGroupID.y;
  if (i >= pc.n) return;
  const float g = ldf(pc.g, i);
  stf(pc.y, i, g / (1.0 + exp(-g)) * ldf(pc.u, i));
}
