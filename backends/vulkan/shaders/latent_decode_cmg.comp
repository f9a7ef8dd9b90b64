// Fused latent decode attention on the tensor cores (VK_NV_cooperative_matrix), one workgroup per
// (token split, low-rank group) computing ALL HG query heads of the group, so each tile of key
// and value latents is read from memory once (latent_decode_cm.comp reads it once per head).
// latent_fold.comp F16T has folded each head's query into B^K and written, per group slot z,
//   Mᵀ [RKP, HG·d_h] f16 (row p: latent p; column hh·d_h + r: head hh, rotate-half row r; row
//   r_k holds the key-bias terms when the group has a key bias, and the tiles then carry a
//   constant 1 in column r_k), and the slot's z^K / z^V region addresses (tbl, uvec4 per slot).
// Per head hh and token t:
//   score(t) = Σ_{r<d_h} CS[t, r]·S[t, hh·d_h + r],  S = Z_tile · Mᵀ,
//   CS[t, r] = cos(θ_r t) for r < d_h/2, sin(θ_{r−d_h/2} t) above (the model's RoPE table).
// Workgroup (sp, z·NHW + part): NSG = 8 subgroups of 32 (4 for f16 rows from 16K tokens:
// vulkan_ops.cc grouped_why), the group's HW = HG / NHW heads from head part·HW (NHW = 1 by
// default). Per tile of TT = 64 tokens (32 where 64 does not fit shared memory):
//   A. the key latents (decoded, rounded to f16; columns ≥ r_k zero) → tile [TT, XST] f16 in
//      16-byte chunks (f16 rows as uvec4 loads, q4 codes dequantized while staging, every load
//      of the invocation issued before the first store; q8 and the rest through ld_lat);
//   B. subgroup sg owns CBS 16-column blocks of S of head sg / SPH: per block the TT/16 row
//      blocks' products over RKB k-blocks (Mᵀ fragments from L2, each serving TT tokens; Mᵀ in
//      16×16 tiles of 512 contiguous bytes, MTL; two column blocks per step where PAIR, so each
//      key fragment from shared memory serves two), then weighted element-wise by the CS
//      fragment (same element layout: same matrix type) and summed into ws[row block]; after a
//      barrier ws [TT, 16] f32 goes to the tile (rows of RST = 5 uvec4) — the 48 KB of shared
//      memory hold no separate array for it at TT = 64;
//   C. all invocations load the tile's value latents (registers), warp hh < HW sums its head's
//      scores (lane = token, TT/32 tokens per lane: SPH·16 values each), does the online
//      softmax (running m, l per warp, lane-uniform), writes P [16, TT] f16 (rows ≥ HW zero) and
//      the rescale rows corr [16, 16]; after a barrier the values go to the tile;
//   D. subgroup sg owns value blocks sg, sg + NSG, …: O[16, 16] (f32, registers, whole split)
//      ← O ⊙ corr + P · V_tile.
// The last tile of a split that is shorter than TT is shifted back to end at the split's end
// (rows stay inside the cache and the RoPE table); its tokens before t0 are masked. Needs
// T ≥ TT and tps a multiple of TT (the host checks). Partials as attn_decode.comp (m, l, acc).
// H100 measurements, variants and the tuning bits (KUNR, VPRE, PAIR, DBG, NHW, KVC, MV4, WG,
// MTL): docs/perf/vulkan.md.
#version 450
#extension GL_GOOGLE_include_directive : require
#extension GL_NV_cooperative_matrix : require
#extension GL_KHR_memory_scope_semantics : require
#extension GL_EXT_shader_explicit_arithmetic_types_float16 : require
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require
#extension GL_EXT_control_flow_attributes : require
#extension GL_EXT_shader_16bit_storage : require
#extension GL_EXT_buffer_reference_uvec2 : require
#include "common.glsl"
layout(buffer_reference, std430, buffer_reference_align = 16) buffer BufH { float16_t v[]; };
layout(buffer_reference, std430, buffer_reference_align = 16) buffer BufV4 { uvec4 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 8) buffer BufV2 { uvec2 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) buffer BufF { float v[]; };
// The same, coherent (KVC: the tile loads, perhaps past L1, which then keeps Mᵀ).
layout(buffer_reference, std430, buffer_reference_align = 16) coherent buffer BufV4C { uvec4 v[]; };
layout(buffer_reference, std430, buffer_reference_align = 4) coherent buffer BufC { uint v[]; };
layout(local_size_x_id = 14) in;  // WG = 32·NSG invocations
layout(constant_id = 0) const uint DH = 128u;  // head dim (64, 128 or 256)
layout(constant_id = 1) const uint HG = 4u;    // query heads of a group (1, 2, 4 or 8)
layout(constant_id = 2) const uint ST = 1u;    // the cache storage
layout(constant_id = 3) const uint RKB = 16u;  // 16-column blocks of the key tile (r_k + bias)
layout(constant_id = 4) const uint RVB = 16u;  // 16-column blocks of the value tile
layout(constant_id = 5) const uint VEC = 1u;   // rows 16-byte aligned: chunked loads
layout(constant_id = 6) const uint KUNR = 1u;  // B's k-block loop unrolled
layout(constant_id = 7) const uint VPRE = 1u;  // C's value loads issued before the scores
layout(constant_id = 8) const uint PAIR = 0u;  // B: two column blocks at a time (A reused)
// Timing probes only (results wrong): 1 Mᵀ fragments from one L1-resident block, 2 no B
// products, 4 no D products, 8 cos/sin fragments from one L1-resident block.
layout(constant_id = 9) const uint DBG = 0u;
layout(constant_id = 10) const uint TT = 32u; // tokens per tile: 32 or 64
layout(constant_id = 11) const uint NHW = 1u;  // workgroups per group (each HW of its heads)
const uint HW = HG / NHW;            // query heads of a workgroup
layout(constant_id = 12) const uint KVC = 0u;  // key/value tile loads through coherent references
layout(constant_id = 13) const uint MV4 = 0u;  // Mᵀ fragments loaded through a uvec4 reference
// Mᵀ in 16×16 tiles (latent_fold.comp flags & 2): fragment (k-block kb, column block cb) at
// halves (cb·RKB + kb)·256, rows 16 halves apart, so one fragment is 512 contiguous bytes (4
// cache lines instead of 16) and a column block's RKB fragments follow each other.
layout(constant_id = 15) const uint MTL = 0u;
// The value tile staged in VSPL parts of RVP / VSPL columns (C's stores and D per part), so a
// 64-token tile of a wide value rank (r_v 384) fits 48 KB; the loads of all parts are still
// issued before the scores. The host sets VSPL = 2 only where RVB is even and each part's
// chunks are a multiple of WG.
layout(constant_id = 16) const uint VSPL = 1u;
const uint RB = TT / 16u;            // row blocks of a tile
const uint TL = TT / 32u;            // tokens per lane in C
const uint WG = gl_WorkGroupSize.x;  // 256 or 128
const uint NSG = WG / 32u;           // subgroups
const uint NC = HG * DH;             // columns of S (the group's Mᵀ row)
const uint CBS = HW * DH / 16u / NSG;  // column blocks per subgroup
const uint SPH = NSG / HW;           // subgroups per head
// B pairs column blocks (PAIR, an even count of them); products, not &&: glslang drops
// an operand of a chained && of specialization constants.
const uint PAIRED = (PAIR != 0u ? 1u : 0u) * (CBS % 2u == 0u ? 1u : 0u);
const uint RKP = RKB * 16u, RVP = RVB * 16u;
const uint RVH = RVP / VSPL, RVBH = RVB / VSPL;  // columns, blocks of a value part
const uint XP = RKP > RVH ? RKP : RVH;
const uint XST = XP + 8u;            // tile row stride (halves): rows 16 B apart in the banks
const uint XS8 = XST / 8u;           // … in uvec4
const uint PST = TT + 8u;            // P row stride (halves)
const uint OPS = (RVB + NSG - 1u) / NSG;  // value blocks per subgroup (≤ 4)
const uint HALF = 0x3c00u;           // f16 1.0
layout(push_constant) uniform PC {
  BufH m;    // Mᵀ slots, slot z at halves z·slot_halves
  BufV4 tbl; // per slot: z^K address (xy), z^V address (zw)
  BufF rope; // cos [P, d_h/2], sin at float sin_off
  Buf part;  // partials
  uint T, tps, cap, k_words, v_words, win, win_begin, r_k, r_v, sin_off, part_stride,
      slot_halves, h0, bias;
} pc;

// B's weighted sums, ws [TT, 16] f32 per subgroup, go to the tile (the keys are no longer
// needed then) with rows of RST uvec4 (20 floats: C's row reads spread over the banks).
const uint RST = 5u;
const uint TILE0 = TT * XS8 > NSG * TT * RST ? TT * XS8 : NSG * TT * RST;
const uint TILE = TILE0 > 4u * RVP ? TILE0 : 4u * RVP;  // O at the end: [16, RVP] f32
shared uvec4 tile[TILE];  // keys in A/B, ws in B/C, values in C/D, O at the end
shared float16_t psh[16u * PST];        // P [16, TT] (rows ≥ HG zero)
shared float csh[256];                  // corr [16, 16], row hh = the head's rescale factor

// 8 values (columns 8·ch ..) of row pos of a latent region, f16, packed in a uvec4; zero beyond
// rank, 1.0 at column rank when one (the key bias column).
uvec4 chunk(Buf b, uint pos, uint ch, uint words, uint rank, bool one) {
  const uint c0 = 8u * ch;
  if (c0 >= rank) return uvec4(one && c0 == rank ? HALF : 0u, 0u, 0u, 0u);
  if (VEC != 0u) {
    if (pc.win != 0u && pos >= pc.win_begin) {
      const uint w0 = pc.cap * (words + 2u) + (pos % pc.win) * ((rank + 1u) >> 1);
      return BufV4(b).v[(w0 >> 2) + ch];
    }
    if (ST == ST_F16) return BufV4(b).v[(pos * words >> 2) + ch];
    if (ST == ST_Q4 || ST == ST_Q8) {
      const float scale = uintBitsToFloat(b.v[pc.cap * words + 2u * pos]);
      const float zero = uintBitsToFloat(b.v[pc.cap * words + 2u * pos + 1u]);
      uint code[8];
      if (ST == ST_Q4) {
        const uint w = b.v[pos * words + ch];
        [[unroll]] for (uint k = 0u; k < 8u; ++k) code[k] = (w >> (4u * k)) & 15u;
      } else {
        const uvec2 w = BufV2(b).v[(pos * words >> 1) + ch];
        [[unroll]] for (uint k = 0u; k < 4u; ++k) {
          code[k] = (w.x >> (8u * k)) & 255u;
          code[k + 4u] = (w.y >> (8u * k)) & 255u;
        }
      }
      uvec4 r;
      [[unroll]] for (uint k = 0u; k < 4u; ++k) {
        precise float p0 = float(code[2u * k]) * scale;
        precise float z0 = p0 + zero;
        precise float p1 = float(code[2u * k + 1u]) * scale;
        precise float z1 = p1 + zero;
        r[k] = scale == 0.0 ? packHalf2x16(vec2(zero)) : packHalf2x16(vec2(z0, z1));
      }
      return r;
    }
  }
  uvec4 r;
  [[unroll]] for (uint k = 0u; k < 4u; ++k) {
    const uint c = c0 + 2u * k;
    const float z0 = c < rank ? ld_lat(b, pos, words, c, ST, pc.cap, rank, pc.win, pc.win_begin)
                              : (one && c == rank ? 1.0 : 0.0);
    const float z1 = c + 1u < rank ? ld_lat(b, pos, words, c + 1u, ST, pc.cap, rank, pc.win,
                                            pc.win_begin)
                                   : (one && c + 1u == rank ? 1.0 : 0.0);
    r[k] = packHalf2x16(vec2(z0, z1));
  }
  return r;
}

const uint KCH = TT * RKP / 8u, VCH = TT * RVP / 8u;  // chunks per tile
const uint NKC = (KCH + WG - 1u) / WG, NVC = (VCH + WG - 1u) / WG;
const uint FAST = (VEC != 0u ? 1u : 0u) * ((ST == ST_F16 ? 1u : 0u) + (ST == ST_Q4 ? 1u : 0u));

// Rows ts .. ts + TT − 1 of a region without a window (f16 or q4, VEC) → tile, as `chunk` but
// every load of the invocation issued (STAGE_LOAD) before the first conversion and store.
// Chunk e of a tile staged in SPL parts (part-major: part e / (NCH / SPL), then row, then the
// part's XPP / SPL / 8 chunks): row t, chunk ch of the full row, ch − hp·PW in the part.
#define PART_MAP(E, XPP, NCH, SPL)                                                       \
  const uint pw = XPP / 8u / SPL, hp = (E) / (NCH / SPL), er = (E) % (NCH / SPL);          \
  const uint t = er / pw, ch = hp * pw + er % pw
#define STAGE_LOAD(B, WORDS, RANK, XPP, NCH, N, RAW, SZ, SPL)                              \
  [[unroll]] for (uint j = 0u; j < N; ++j) {                                              \
    const uint e = tid + j * WG;                                                        \
    PART_MAP(e, XPP, NCH, SPL);                                                           \
    const uint pos = ts + t;                                                              \
    const bool ok = e < NCH && 8u * ch < RANK;                                            \
    if (ST == ST_F16) {                                                                   \
      RAW[j] = !ok ? uvec4(0u) : KVC != 0u ? BufV4C(B).v[(pos * WORDS >> 2) + ch]          \
                                           : BufV4(B).v[(pos * WORDS >> 2) + ch];          \
    } else {                                                                              \
      RAW[j].x = !ok ? 0u : KVC != 0u ? BufC(B).v[pos * WORDS + ch] : B.v[pos * WORDS + ch]; \
      SZ[j] = ok ? uintBitsToFloat(BufV2(B).v[(pc.cap * WORDS >> 1) + pos]) : vec2(0.0);  \
    }                                                                                     \
  }
// Stores part H of SPL (loads j of N / SPL · H .. N / SPL · (H + 1) − 1).
#define STAGE_STORE(RANK, ONE, XPP, NCH, N, RAW, SZ, SPL, H)                               \
  [[unroll]] for (uint j = (H) * (N / SPL); j < ((H) + 1u) * (N / SPL); ++j) {            \
    const uint e = tid + j * WG;                                                        \
    PART_MAP(e, XPP, NCH, SPL);                                                           \
    if (e < NCH) {                                                                        \
      uvec4 r = RAW[j];                                                                   \
      if (ST == ST_Q4) {                                                                  \
        const float scale = SZ[j].x, zero = SZ[j].y;                                      \
        const uint w = RAW[j].x;                                                          \
        [[unroll]] for (uint k = 0u; k < 4u; ++k) {                                       \
          precise float p0 = float((w >> (8u * k)) & 15u) * scale;                        \
          precise float z0 = p0 + zero;                                                   \
          precise float p1 = float((w >> (8u * k + 4u)) & 15u) * scale;                   \
          precise float z1 = p1 + zero;                                                   \
          r[k] = scale == 0.0 ? packHalf2x16(vec2(zero)) : packHalf2x16(vec2(z0, z1));    \
        }                                                                                 \
        if (8u * ch >= RANK) r = uvec4(0u);                                               \
      }                                                                                   \
      if (ONE && 8u * ch == RANK) r = uvec4(HALF, 0u, 0u, 0u);                            \
      tile[t * XS8 + ch - hp * pw] = r;                                                   \
    }                                                                                     \
  }

// An Mᵀ fragment at half offset O (rows MST halves apart); MOFS: the offset of k-block KB,
// columns C .. C + 15 within the slot.
const uint MST = MTL != 0u ? 16u : NC;
#define MOFS(KB, C) (MTL != 0u ? (((C) >> 4) * RKB + (KB)) * 256u : (KB) * 16u * NC + (C))
#define LOADM(F, O)                                           \
  if (MV4 != 0u)                                              \
    coopMatLoadNV(F, mv4.v, (O) >> 3, MST / 8u, false);       \
  else                                                        \
    coopMatLoadNV(F, pc.m.v, O, MST, false)

void main() {
  const uint sp = gl_WorkGroupID.x, z = gl_WorkGroupID.y / NHW;
  const uint hw0 = (gl_WorkGroupID.y % NHW) * HW;  // the workgroup's first head in the group
  const uint splits = gl_NumWorkGroups.x;
  const uint tid = gl_LocalInvocationID.x, sg = gl_SubgroupID, lane = gl_SubgroupInvocationID;
  const uint half_dh = DH / 2u;
  const uint rk = pc.r_k, rv = pc.r_v;
  const uvec4 te = pc.tbl.v[z];
  Buf kc = Buf(te.xy), vc = Buf(te.zw);
  const uint mofs = z * pc.slot_halves;
  BufV4 mv4 = BufV4(pc.m);
  const bool kone = pc.bias != 0u;
  // B's share: head hb, column blocks cb0 .. cb0 + CBS − 1 of that head.
  const uint hb = hw0 + sg / SPH, cb0 = (sg % SPH) * CBS;

  for (uint i = tid; i < 16u * PST; i += WG) psh[i] = float16_t(0.0);
  for (uint i = tid; i < 256u; i += WG) csh[i] = 0.0;
  float mx = NEG_INF, l = 0.0;  // warp hh < HG: its head's running max and sum
  fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> o0 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
  fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> o1 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
  fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> o2 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
  fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> o3 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);

  const uint t_begin = sp * pc.tps;
  const uint t_end = min(pc.T, t_begin + pc.tps);
  for (uint t0 = t_begin; t0 < t_end; t0 += TT) {
    const uint ts = t0 + TT <= t_end ? t0 : t_end - TT;  // first row of the tile
    // A. key tile.
    if (FAST != 0u && pc.win == 0u) {
      uvec4 kraw[NKC];
      vec2 ksz[NKC];
      STAGE_LOAD(kc, pc.k_words, rk, RKP, KCH, NKC, kraw, ksz, 1u)
      STAGE_STORE(rk, kone, RKP, KCH, NKC, kraw, ksz, 1u, 0u)
    } else [[unroll]] for (uint j = 0u; j < NKC; ++j) {
      const uint e = tid + j * WG;
      if (e < KCH) {
        const uint t = e / (RKP / 8u), ch = e % (RKP / 8u);
        tile[t * XS8 + ch] = chunk(kc, ts + t, ch, pc.k_words, rk, kone);
      }
    }
    barrier();
    // B. weighted S, summed over this subgroup's column blocks.
    {
      fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> ws0 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
      fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> ws1 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
      fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> ws2 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
      fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> ws3 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
#define WEIGHT1(ACC, WS, R)                                                   \
  {                                                                           \
    fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> cs;                              \
    coopMatLoadNV(cs, pc.rope.v, cofs + (R) * 16u * half_dh, half_dh, false); \
    for (int i = 0; i < WS.length(); ++i) WS[i] += ACC[i] * cs[i];            \
  }
#define COFS(CB)                                                                              \
  const uint c = (CB) * 16u;                                                                  \
  const uint tr = (DBG & 8u) != 0u ? 0u : ts;                                                 \
  const uint cofs = c < half_dh ? tr * half_dh + c : pc.sin_off + tr * half_dh + c - half_dh;
      if (PAIRED != 0u) {
        [[dont_unroll]] for (uint j = 0u; j < CBS; j += 2u) {
          const uint cb = cb0 + j;
          const uint col = hb * DH + cb * 16u;
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> a00 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> a01 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> a10 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> a11 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> a02 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> a03 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> a12 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> a13 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
#define KSTEP2                                                                                   \
  {                                                                                              \
    fcoopmatNV<16, gl_ScopeSubgroup, 16, 16> x0, x1, b0, b1;                                     \
    const uint mkb = (DBG & 1u) != 0u ? 0u : kb;                                                 \
    LOADM(b0, mofs + MOFS(mkb, col));                                                            \
    LOADM(b1, mofs + MOFS(mkb, col + 16u));                                                      \
    coopMatLoadNV(x0, tile, kb * 2u, XS8, false);                                                \
    coopMatLoadNV(x1, tile, 16u * XS8 + kb * 2u, XS8, false);                                    \
    a00 = coopMatMulAddNV(x0, b0, a00);                                                          \
    a01 = coopMatMulAddNV(x1, b0, a01);                                                          \
    a10 = coopMatMulAddNV(x0, b1, a10);                                                          \
    a11 = coopMatMulAddNV(x1, b1, a11);                                                          \
    if (RB > 2u) {                                                                               \
      coopMatLoadNV(x0, tile, 32u * XS8 + kb * 2u, XS8, false);                                  \
      coopMatLoadNV(x1, tile, 48u * XS8 + kb * 2u, XS8, false);                                  \
      a02 = coopMatMulAddNV(x0, b0, a02);                                                        \
      a03 = coopMatMulAddNV(x1, b0, a03);                                                        \
      a12 = coopMatMulAddNV(x0, b1, a12);                                                        \
      a13 = coopMatMulAddNV(x1, b1, a13);                                                        \
    }                                                                                            \
  }
          if (KUNR != 0u) {
            [[unroll]] for (uint kb = 0u; kb < ((DBG & 2u) != 0u ? 0u : RKB); ++kb) KSTEP2
          } else {
            [[dont_unroll]] for (uint kb = 0u; kb < ((DBG & 2u) != 0u ? 0u : RKB); ++kb) KSTEP2
          }
          {
            COFS(cb)
            WEIGHT1(a00, ws0, 0u)
            WEIGHT1(a01, ws1, 1u)
            if (RB > 2u) {
              WEIGHT1(a02, ws2, 2u)
              WEIGHT1(a03, ws3, 3u)
            }
          }
          {
            COFS(cb + 1u)
            WEIGHT1(a10, ws0, 0u)
            WEIGHT1(a11, ws1, 1u)
            if (RB > 2u) {
              WEIGHT1(a12, ws2, 2u)
              WEIGHT1(a13, ws3, 3u)
            }
          }
        }
      } else {
        [[dont_unroll]] for (uint j = 0u; j < CBS; ++j) {
          const uint cb = cb0 + j;  // block of the head's d_h columns
          const uint col = hb * DH + cb * 16u;
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc0 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc1 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc2 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
          fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> acc3 = fcoopmatNV<32, gl_ScopeSubgroup, 16, 16>(0.0);
#define KSTEP1                                                                                   \
  {                                                                                              \
    fcoopmatNV<16, gl_ScopeSubgroup, 16, 16> a, b;                                               \
    LOADM(b, mofs + MOFS((DBG & 1u) != 0u ? 0u : kb, col));                                      \
    coopMatLoadNV(a, tile, kb * 2u, XS8, false);                                                 \
    acc0 = coopMatMulAddNV(a, b, acc0);                                                          \
    coopMatLoadNV(a, tile, 16u * XS8 + kb * 2u, XS8, false);                                     \
    acc1 = coopMatMulAddNV(a, b, acc1);                                                          \
    if (RB > 2u) {                                                                               \
      coopMatLoadNV(a, tile, 32u * XS8 + kb * 2u, XS8, false);                                   \
      acc2 = coopMatMulAddNV(a, b, acc2);                                                        \
      coopMatLoadNV(a, tile, 48u * XS8 + kb * 2u, XS8, false);                                   \
      acc3 = coopMatMulAddNV(a, b, acc3);                                                        \
    }                                                                                            \
  }
          if (KUNR != 0u) {
            [[unroll]] for (uint kb = 0u; kb < ((DBG & 2u) != 0u ? 0u : RKB); ++kb) KSTEP1
          } else {
            [[dont_unroll]] for (uint kb = 0u; kb < ((DBG & 2u) != 0u ? 0u : RKB); ++kb) KSTEP1
          }
          COFS(cb)
          WEIGHT1(acc0, ws0, 0u)
          WEIGHT1(acc1, ws1, 1u)
          if (RB > 2u) {
            WEIGHT1(acc2, ws2, 2u)
            WEIGHT1(acc3, ws3, 3u)
          }
        }
      }
      barrier();
      coopMatStoreNV(ws0, tile, (sg * TT) * RST, RST, false);
      coopMatStoreNV(ws1, tile, (sg * TT + 16u) * RST, RST, false);
      if (RB > 2u) {
        coopMatStoreNV(ws2, tile, (sg * TT + 32u) * RST, RST, false);
        coopMatStoreNV(ws3, tile, (sg * TT + 48u) * RST, RST, false);
      }
    }
    barrier();
    // C. value loads in flight while the scores and the softmax are done.
    uvec4 vr[NVC];
    vec2 vsz[NVC];
    const bool vfast = FAST != 0u && pc.win == 0u;
#define VLOAD                                                   \
  if (vfast) {                                                  \
    STAGE_LOAD(vc, pc.v_words, rv, RVP, VCH, NVC, vr, vsz, VSPL) \
  } else {                                                      \
    [[unroll]] for (uint j = 0u; j < NVC; ++j) {                \
      const uint e = tid + j * WG;                            \
      if (e < VCH) {                                            \
        PART_MAP(e, RVP, VCH, VSPL);                            \
        vr[j] = chunk(vc, ts + t, ch, pc.v_words, rv, false);   \
      }                                                         \
    }                                                           \
  }
    if (VPRE != 0u) VLOAD
    if (sg < HW) {
      // Warp hh = sg: lane = token of the tile (TL tokens per lane, 32 apart).
      float sc[2];
      float tm = NEG_INF;
      [[unroll]] for (uint i = 0u; i < TL; ++i) {
        const uint tt = lane + 32u * i;
        float s = 0.0;
        [[unroll]] for (uint k = 0u; k < SPH; ++k) {
          const uint r0 = ((sg * SPH + k) * TT + tt) * RST;
          [[unroll]] for (uint q = 0u; q < 4u; ++q) {
            const vec4 w = uintBitsToFloat(tile[r0 + q]);
            s += (w.x + w.y) + (w.z + w.w);
          }
        }
        const uint t = ts + tt;
        sc[i] = t < t0 || t >= t_end ? NEG_INF : s;
        tm = max(tm, sc[i]);
      }
      const float prev = mx;
      mx = max(mx, subgroupMax(tm));
      const float corr = exp(prev - mx);
      float ps = 0.0;
      [[unroll]] for (uint i = 0u; i < TL; ++i) {
        const float16_t p = float16_t(exp(sc[i] - mx));
        ps += float(p);
        psh[sg * PST + lane + 32u * i] = p;
      }
      l = fma(l, corr, subgroupAdd(ps));
      if (lane < 16u) csh[sg * 16u + lane] = corr;
    }
    if (VPRE == 0u) VLOAD
    barrier();  // ws read: the values may overwrite it
    [[unroll]] for (uint h = 0u; h < VSPL; ++h) {
      if (h > 0u) barrier();  // D of the previous part has read the tile
      if (vfast) {
        STAGE_STORE(rv, false, RVP, VCH, NVC, vr, vsz, VSPL, h)
      } else {
        [[unroll]] for (uint j = h * (NVC / VSPL); j < (h + 1u) * (NVC / VSPL); ++j) {
          const uint e = tid + j * WG;
          if (e < VCH) {
            PART_MAP(e, RVP, VCH, VSPL);
            tile[t * XS8 + ch - hp * pw] = vr[j];
          }
        }
      }
      barrier();
      // D. O ← O ⊙ corr + P · V for the value blocks of part h.
      fcoopmatNV<32, gl_ScopeSubgroup, 16, 16> cf;
      fcoopmatNV<16, gl_ScopeSubgroup, 16, 16> p0, p1, p2, p3, b;
      coopMatLoadNV(cf, csh, 0u, 16u, false);
      coopMatLoadNV(p0, psh, 0u, PST, false);
      coopMatLoadNV(p1, psh, 16u, PST, false);
      if (RB > 2u) {
        coopMatLoadNV(p2, psh, 32u, PST, false);
        coopMatLoadNV(p3, psh, 48u, PST, false);
      }
#define PV(O, J)                                                            \
  if ((DBG & 4u) == 0u && J < OPS && sg + J * NSG < RVB &&                 \
      (sg + J * NSG) / RVBH == h) {                                         \
    const uint vb = sg + J * NSG - h * RVBH;                                \
    for (int i = 0; i < O.length(); ++i) O[i] *= cf[i];                     \
    coopMatLoadNV(b, tile, vb * 2u, XS8, false);                            \
    O = coopMatMulAddNV(p0, b, O);                                          \
    coopMatLoadNV(b, tile, 16u * XS8 + vb * 2u, XS8, false);                \
    O = coopMatMulAddNV(p1, b, O);                                          \
    if (RB > 2u) {                                                          \
      coopMatLoadNV(b, tile, 32u * XS8 + vb * 2u, XS8, false);              \
      O = coopMatMulAddNV(p2, b, O);                                        \
      coopMatLoadNV(b, tile, 48u * XS8 + vb * 2u, XS8, false);              \
      O = coopMatMulAddNV(p3, b, O);                                        \
    }                                                                       \
  }
      PV(o0, 0u)
      PV(o1, 1u)
      PV(o2, 2u)
      PV(o3, 3u)
    }
    barrier();
  }
  // O → the tile (f32 rows of RVP floats), then the heads' rows → the partials.
#define ST_O(O, J) \
  if (J < OPS && sg + J * NSG < RVB) coopMatStoreNV(O, tile, (sg + J * NSG) * 4u, RVP / 4u, false);
  ST_O(o0, 0u)
  ST_O(o1, 1u)
  ST_O(o2, 2u)
  ST_O(o3, 3u)
  barrier();
  const uint hq0 = pc.h0 + z * HG + hw0;
  if (sg < HW && lane == 0u) {
    const uint o = ((hq0 + sg) * splits + sp) * pc.part_stride;
    stf(pc.part, o, mx);
    stf(pc.part, o + 1u, l);
  }
  for (uint i = tid; i < HW * rv; i += WG) {
    const uint hh = i / rv, c = i % rv;
    const uint w = hh * RVP + c;
    stf(pc.part, ((hq0 + hh) * splits + sp) * pc.part_stride + 2u + c,
        uintBitsToFloat(tile[w >> 2][w & 3u]));
  }
}
