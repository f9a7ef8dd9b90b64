// x[r, :] = E[tok[r], :]   E: [vocab, d] in dtype pc.dt; ids were checked on the host, and an
// id outside [0, vocab) writes zeros instead of reading out of bounds.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC {
  Buf tok;  // [n] int32
  Buf emb;  // [vocab, d]
  Buf x;    // [n, d] f32
  uint n, d, vocab, dt;
} pc;
void main() {
  const uint r = gl_WorkGroupID.y;
  const uint c = gl_GlobalInvocationID.x;
  if (r >= pc.n || c >= pc.d) return;
  const int t = int(pc.tok.v[r]);
  const float v = (t >= 0 && uint(t) < pc.vocab) ? ldw(pc.emb, uint(t) * pc.d + c, pc.dt) : 0.0;
  stf(pc.x, r * pc.d + c, v);
}
