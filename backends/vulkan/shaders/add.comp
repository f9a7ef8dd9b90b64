// y[i] += x[i mod xn]   (xn = n: elementwise; xn = row width: a bias broadcast over rows)
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC { Buf x; Buf y; uint n, xn; } pc;
void main() {
  const uint i = gl_GlobalInvocationID.x + gl_NumWorkGroups.x * 64u * gl_WorkGroupID.y;
  if (i >= pc.n) return;
  stf(pc.y, i, ldf(pc.y, i) + ldf(pc.x, i % pc.xn));
}
