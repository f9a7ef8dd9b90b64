// Merges the token splits of attn_decode.comp: for query head h = h0 + workgroup x,
// out[out0 + (h − h0)·w + c] = Σ_s acc_s[c]·e^{m_s − M} / Σ_s l_s·e^{m_s − M},  M = max m_s.
// Workgroup y: columns c ∈ [64·y, 64·y + 64) (one column per invocation: more workgroups in
// flight than one per head; each recomputes M and the sum).
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC {
  Buf part;
  Buf out_;
  uint splits, part_stride, w, h0, out0;
} pc;
void main() {
  const uint h = pc.h0 + gl_WorkGroupID.x;
  const uint base = h * pc.splits * pc.part_stride;
  float M = NEG_INF;
  for (uint s = 0u; s < pc.splits; ++s) {
    if (ldf(pc.part, base + s * pc.part_stride + 1u) > 0.0) M = max(M, ldf(pc.part, base + s * pc.part_stride));
  }
  float L = 0.0;
  for (uint s = 0u; s < pc.splits; ++s) {
    const float l = ldf(pc.part, base + s * pc.part_stride + 1u);
    if (l > 0.0) L += l * exp(ldf(pc.part, base + s * pc.part_stride) - M);
  }
  const float inv = 1.0 / L;
  for (uint c = gl_WorkGroupID.y * 64u + gl_LocalInvocationID.x; c < pc.w; c += 64u * gl_NumWorkGroups.y) {
    float acc = 0.0;
    for (uint s = 0u; s < pc.splits; ++s) {
      const uint o = base + s * pc.part_stride;
      const float l = ldf(pc.part, o + 1u);
      if (l > 0.0) acc += ldf(pc.part, o + 2u + c) * exp(ldf(pc.part, o) - M);
    }
    stf(pc.out_, pc.out0 + gl_WorkGroupID.x * pc.w + c, acc * inv);
  }
}
