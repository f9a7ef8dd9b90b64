// Rotate-half RoPE in place on rows r < rows of x (stride ld), `heads` heads of d_h each, row r
// at position pos0 + r. cos/sin come from the model's table (rope: cos [P, d_h/2] then sin at
// word sin_off), built on the host exactly as the CPU reference rounds them.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC {
  Buf x;
  Buf rope;
  uint rows, ld, heads, dh, pos0, sin_off;
} pc;
void main() {
  const uint half_dh = pc.dh / 2u;
  const uint i = gl_GlobalInvocationID.x;  // over heads · half
  const uint r = gl_WorkGroupID.y;
  if (r >= pc.rows || i >= pc.heads * half_dh) return;
  const uint h = i / half_dh, k = i % half_dh;
  const uint pos = pc.pos0 + r;
  const float c = ldf(pc.rope, pos * half_dh + k);
  const float s = ldf(pc.rope, pc.sin_off + pos * half_dh + k);
  const uint a = r * pc.ld + h * pc.dh + k;
  const float x0 = ldf(pc.x, a), x1 = ldf(pc.x, a + half_dh);
  precise float p0 = x0 * c;
  precise float p1 = x1 * s;
  precise float p2 = x1 * c;
  precise float p3 = x0 * s;
  precise float y0 = p0 - p1;
  precise float y1 = p2 + p3;
  stf(pc.x, a, y0);
  stf(pc.x, a + half_dh, y1);
}
