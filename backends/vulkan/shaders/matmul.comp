// C[M, N] = A[M, K] · W[N, K]ᵀ (+ bias[N]) (+ C when accumulating). A f32 (row stride lda),
// W row-major [N, K] in dtype WDT (f32/f16/bf16, specialization constant), f32 accumulation,
// C f32 (row stride ldc). 64×64 output tiles per workgroup of 16×16 invocations (4×4 outputs
// each), K in steps of 16 through shared memory; edges are masked, so any M, N, K work.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 16, local_size_y = 16) in;
layout(constant_id = 0) const uint WDT = 1u;
layout(push_constant) uniform PC {
  Buf a;
  Buf w;
  Buf c;
  Buf bias;
  uint M, N, K, lda, ldc;
  uint flags;  // 1: C += ..., 2: add bias
} pc;
const uint TM = 64u, TN = 64u, TK = 16u;
shared float As[TK][TM + 1u];
shared float Ws[TK][TN + 1u];
void main() {
  const uint tx = gl_LocalInvocationID.x, ty = gl_LocalInvocationID.y;
  const uint tid = ty * 16u + tx;
  const uint m0 = gl_WorkGroupID.y * TM, n0 = gl_WorkGroupID.x * TN;
  float acc[4][4];
  for (uint i = 0u; i < 4u; ++i)
    for (uint j = 0u; j < 4u; ++j) acc[i][j] = 0.0;
  for (uint k0 = 0u; k0 < pc.K; k0 += TK) {
    for (uint e = tid; e < TM * TK; e += 256u) {
      const uint r = e / TK, kk = e % TK;
      const uint gm = m0 + r, gk = k0 + kk;
      As[kk][r] = (gm < pc.M && gk < pc.K) ? ldf(pc.a, gm * pc.lda + gk) : 0.0;
      const uint gn = n0 + r;
      Ws[kk][r] = (gn < pc.N && gk < pc.K) ? ldw(pc.w, gn * pc.K + gk, WDT) : 0.0;
    }
    barrier();
    for (uint kk = 0u; kk < TK; ++kk) {
      float av[4], wv[4];
      for (uint i = 0u; i < 4u; ++i) av[i] = As[kk][ty + 16u * i];
      for (uint j = 0u; j < 4u; ++j) wv[j] = Ws[kk][tx + 16u * j];
      for (uint i = 0u; i < 4u; ++i)
        for (uint j = 0u; j < 4u; ++j) acc[i][j] += av[i] * wv[j];
    }
    barrier();
  }
  for (uint i = 0u; i < 4u; ++i) {
    const uint row = m0 + ty + 16u * i;
    if (row >= pc.M) continue;
    for (uint j = 0u; j < 4u; ++j) {
      const uint col = n0 + tx + 16u * j;
      if (col >= pc.N) continue;
      float v = acc[i][j];
      if ((pc.flags & 2u) != 0u) v += ldf(pc.bias, col);
      const uint o = row * pc.ldc + col;
      if ((pc.flags & 1u) != 0u) v += ldf(pc.c, o);
      stf(pc.c, o, v);
    }
  }
}
