// Fused latent decode attention for one low-rank group on the tensor cores (VK_NV_cooperative_
// matrix): latent_decode.comp's math and output, with the scores' inner products done as
// subgroup matrix products. One query head per workgroup row, one split of the cached tokens per
// workgroup column (attn_reduce.comp merges the splits). latent_fold.comp has folded the query
// into B^K (M = [a; b], d_h × RKP f32, pre-scaled, zero beyond r_k), so
//   score(t) = Σ_{r<d_h/2} cos(θ_r t)·(S_{t,r} + α_r) + sin(θ_r t)·(S_{t,r+d_h/2} + β_r),
//   S = Z_tile · Mᵀ  ([TT, RKP] · [RKP, d_h]).
//
// Workgroup (hh, sp): NSG = d_h/16 subgroups of 32, WG = 2·d_h invocations; subgroup c owns
// columns [16c, 16c + 16) of S. Per tile of TT tokens (the host picks 32 for r_k ≤ 128, else
// 16: less shared memory, more workgroups per SM):
//   A. the tile's key latents (ld_lat: the cache's decoding, f16 window included, rounded to
//      f16; columns ≥ r_k and rows ≥ nt zero) go to shared memory zsh [TT, RKP] f16 (rows
//      padded by 16 B so a fragment's rows fall in different banks);
//   B. each subgroup multiplies zsh by its 16 rows of M (16×16×16 fragments, Mᵀ read
//      column-major from the f16 copy of M that latent_fold.comp F16OUT writes; f32
//      accumulation), TT/16 output tiles, stored to sacc [TT, SST] f32;
//   C. IPT = WG/TT consecutive invocations per token weight TT/2 entries of the token's S row
//      (columns jc + i·IPT: conflict-free shared reads, coalesced cos/sin reads) by cos/sin of
//      the token's position (the model's RoPE table) plus the bias terms and sum them by
//      shuffles; the tile's maximum, p_t = e^{s_t − m}, the running m, l;
//   D. p·z^V as latent_decode.comp (value columns tid + v·WG, 8 loads at a time), the running
//      sums in shared memory (vs).
// The split's partial (m, l, acc[r_v]) goes to part[((h0 + hh)·splits + sp)·part_stride ..] in
// attn_decode.comp's layout.
// Tried on the H100 and not kept (no gain): Mᵀ fragments held in registers for the whole split
// (12.1 vs 12.9 ms at 64K f16 256/256, but one module per fragment count), the tile's value and
// cos/sin loads issued before A (q4 128/384 9.0 → 18.3 ms: registers).
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#include "common.glsl"
layout(buffer_reference, std430, buffer_reference_align = 16) buffer BufH { float16_t v[]; };
layout(local_size_x_id = 0) in;
layout(constant_id = 1) const uint DH = 128u;  // head dim (64, 128 or 256)
layout(constant_id = 3) const uint TT = 32u;   // tokens per tile (16 or 32)
layout(constant_id = 4) const uint ST = 1u;    // the cache storage
layout(constant_id = 6) const uint VPT = 2u;   // value columns per invocation
layout(constant_id = 7) const uint RKB = 16u;  // 16-column blocks of M
const uint WG = gl_WorkGroupSize.x;  // 2·DH
const uint RKP = RKB * 16u;          // padded key rank
const uint ZST = RKP + 8u;           // zsh row stride (halves): rows 16 B apart in the banks
const uint IPT = WG / TT;            // invocations per token in C (a power of two, 4..32)
const uint RPI = DH / IPT;           // S entries per invocation in C (TT/2)
const uint SST = DH + IPT;           // sacc row stride (floats): C's reads conflict-free
const uint RPI_MAX = 16u;
layout(push_constant) uniform PC {
  BufH m;    // [heads of the group, d_h, RKP] f16 (latent_fold.comp, F16OUT)
  Buf mb;    // [heads of the group, d_h] f32 key-bias terms
  Buf kc;    // z^K region
  Buf vc;    // z^V region
  Buf rope;  // cos [P, d_h/2], sin at word sin_off
  Buf part;  // partials
  uint T, tps, cap, k_words, v_words, win, win_begin, h0, r_k, r_v, sin_off, part_stride;
} pc;

shared float16_t zsh[TT * ZST];  // the key tile, row-major
shared float sacc[TT * SST];     // S of the tile
shared float ss[TT];
shared float ps[TT];
shared float vs[VPT * WG];        // this invocation's running p·z^V sums (columns tid + v·WG)

const uint KW = TT * RKP / 2u;            // key-tile f16 pairs
const uint NK = (KW + WG - 1u) / WG;      // pairs per invocation per tile

void main() {
  const uint hh = gl_WorkGroupID.x;
  const uint sp = gl_WorkGroupID.y;
  const uint splits = gl_NumWorkGroups.y;
  const uint tid = gl_LocalInvocationID.x;
  const uint cb = gl_SubgroupID;  // column block of S
  const uint half_dh = DH / 2u;
  const uint rk = pc.r_k, rv = pc.r_v;

  // Mᵀ fragments: B(p, r) = M[r, p] for r in this subgroup's 16 rows of M, read column-major
  // from the f16 copy of M (L1/L2-resident: 2·d_h·RKP bytes per head) at every tile.
  const uint mcol0 = (hh * DH + cb * 16u) * RKP;
  // C's share of this invocation: token tc, S columns jc + i·IPT (i < RPI; the cos half for
  // i·IPT < d_h/2, then the sin half).
  const uint tc = tid / IPT, jc = tid % IPT;
  float mbv[RPI_MAX];
  [[unroll]] for (uint i = 0u; i < RPI_MAX; ++i)
    mbv[i] = i < RPI ? ldf(pc.mb, hh * DH + jc + i * IPT) : 0.0;

  float mx = NEG_INF, l = 0.0;
  [[dont_unroll]] for (uint v = 0u; v < VPT; ++v) vs[v * WG + tid] = 0.0;
  const uint t_begin = sp * pc.tps;
  const uint t_end = min(pc.T, t_begin + pc.tps);
  for (uint t0 = t_begin; t0 < t_end; t0 += TT) {
    const uint nt = min(TT, t_end - t0);
    // A. the tile's keys as f16 pairs, four loads issued before their stores.
    [[dont_unroll]] for (uint j0 = 0u; j0 < NK; j0 += 4u) {
      uint kreg[4];
      [[unroll]] for (uint jj = 0u; jj < 4u; ++jj) {
        const uint e = tid + (j0 + jj) * WG;
        const uint t_ = e / (RKP / 2u), p_ = 2u * (e % (RKP / 2u));
        uint z = 0u;
        if (e < KW && t_ < nt && p_ < rk) {
          if (ST == ST_F16 && pc.win == 0u) {
            z = pc.kc.v[(t0 + t_) * pc.k_words + (p_ >> 1)];
            if (p_ + 1u >= rk) z &= 0xffffu;
          } else {
            const float z0 =
                ld_lat(pc.kc, t0 + t_, pc.k_words, p_, ST, pc.cap, rk, pc.win, pc.win_begin);
            const float z1 = p_ + 1u < rk ? ld_lat(pc.kc, t0 + t_, pc.k_words, p_ + 1u, ST,
                                                   pc.cap, rk, pc.win, pc.win_begin)
                                          : 0.0;
            z = packHalf2x16(vec2(z0, z1));
          }
        }
        kreg[jj] = z;
      }
      [[unroll]] for (uint jj = 0u; jj < 4u; ++jj) {
        const uint e = tid + (j0 + jj) * WG;
        if (e < KW) {
          const uint i = (e / (RKP / 2u)) * ZST + 2u * (e % (RKP / 2u));
          const f16vec2 h = unpackFloat2x16(kreg[jj]);
          zsh[i] = h.x;
          zsh[i + 1u] = h.y;
        }
      }
    }
    barrier();
    // B. S = zsh · Mᵀ for this subgroup's 16 columns: per 16-column block of M one fragment
    // load, then the TT/16 row blocks' products (independent accumulators).
    {
      fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc0 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
      fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc1 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
      {
        for (uint kb = 0u; kb < RKB; ++kb) {
          fcoopmatNV<16, gl_ScopeSubgroup, 16, 16> a, b;
          coopMatLoadNV(b, pc.m.v, mcol0 + kb * 16u, RKP, true);
          coopMatLoadNV(a, zsh, kb * 16u, ZST, false);
          acc0 = coopMatMulAddNV(a, b, acc0);
          if (TT == 32u) {
            coopMatLoadNV(a, zsh, 16u * ZST + kb * 16u, ZST, false);
            acc1 = coopMatMulAddNV(a, b, acc1);
          }
        }
      }
      coopMatStoreNV(acc0, sacc, cb * 16u, SST, false);
      if (TT == 32u) coopMatStoreNV(acc1, sacc, 16u * SST + cb * 16u, SST, false);
    }
    barrier();
    // C. the scores: RPI weighted entries per invocation, IPT invocations per token.
    {
      float s = 0.0;
      if (tc < nt) {
        const uint cofs = (t0 + tc) * half_dh + jc;
        [[unroll]] for (uint i = 0u; i < RPI_MAX; ++i) {
          if (i < RPI) {
            const uint r = jc + i * IPT;
            const uint ci = i * IPT < half_dh ? cofs + i * IPT : pc.sin_off + cofs + i * IPT - half_dh;
            s = fma(ldf(pc.rope, ci), sacc[tc * SST + r] + mbv[i], s);
          }
        }
      }
      [[unroll]] for (uint o = 16u; o >= 1u; o >>= 1)
        if (o < IPT) s += subgroupShuffleXor(s, o);
      if (jc == 0u) ss[tc] = tc < nt ? s : NEG_INF;
    }
    barrier();
    const float prev = mx;
    [[unroll]] for (uint t = 0u; t < 32u; ++t)
      if (t < TT) mx = max(mx, ss[t]);
    const float corr = exp(prev - mx);
    if (tid < TT) ps[tid] = exp(ss[tid] - mx);
    barrier();
    // D. the value latents, 8 tokens' loads at a time; the running sums in vs.
    {
      [[dont_unroll]] for (uint v = 0u; v < VPT; ++v) {
        const uint col = min(tid + v * WG, rv - 1u);
        float acc = 0.0;
        [[dont_unroll]] for (uint t8 = 0u; t8 < nt; t8 += 8u) {
          float vv[8];
          [[unroll]] for (uint k = 0u; k < 8u; ++k)
            vv[k] = ld_lat(pc.vc, t0 + min(t8 + k, nt - 1u), pc.v_words, col, ST, pc.cap, rv,
                           pc.win, pc.win_begin);
          [[unroll]] for (uint k = 0u; k < 8u; ++k) acc = fma(ps[t8 + k], vv[k], acc);
        }
        vs[v * WG + tid] = fma(vs[v * WG + tid], corr, acc);
      }
    }
    if (tid == 0u) {
      float sum = 0.0;
      for (uint t = 0u; t < nt; ++t) sum += ps[t];
      l = fma(l, corr, sum);
    }
  }
  const uint o = ((pc.h0 + hh) * splits + sp) * pc.part_stride;
  if (tid == 0u) {
    stf(pc.part, o, mx);
    stf(pc.part, o + 1u, l);
  }
  [[dont_unroll]] for (uint v = 0u; v < VPT; ++v) {
    const uint col = tid + v * WG;
    if (col < rv) stf(pc.part, o + 2u + col, vs[v * WG + tid]);
  }
}
