// Writes n f32 rows into a cache region in its storage: row r (src[r·src_ld + src_col ..], rank
// values) goes to position pos0 + r. A region is cap rows of row_words words, then (packed
// storage) cap (scale, zero) float32 pairs. Packed rows: per-row asymmetric quantization with
// cache/latent_codec.h's formula (scale = (max − min)/(2^B − 1), zero = min, code =
// clamp(roundEven((z − zero)·(1/scale)))), codes packed as cache/latent_packing.h's bit string.
// f16/bf16 round to nearest even. One workgroup per row.
// Window (packed storage, win > 0): positions ≥ win_begin are also written in f16 to the ring
// after the parameters, slot pos mod win (common.glsl ld_lat), as cache::BlockPool does.
#version 450
#extension GL_GOOGLE_include_directive : require
#include "common.glsl"
layout(local_size_x = 64) in;
layout(push_constant) uniform PC {
  Buf src;
  Buf dst;
  uint n, src_ld, src_col, rank, row_words, pos0, storage, cap, win, win_begin;
} pc;
shared float lo_s[64];
shared float hi_s[64];
void main() {
  const uint r = flat_group();
  if (r >= pc.n) return;
  const uint tid = gl_LocalInvocationID.x;
  const uint s0 = r * pc.src_ld + pc.src_col;
  const uint w0 = (pc.pos0 + r) * pc.row_words;
  const uint st = pc.storage;
  if (st == ST_F32) {
    for (uint c = tid; c < pc.rank; c += 64u) pc.dst.v[w0 + c] = pc.src.v[s0 + c];
    return;
  }
  if (st == ST_F16 || st == ST_BF16) {
    for (uint w = tid; w < pc.row_words; w += 64u) {
      const uint c = 2u * w;
      const float a = c < pc.rank ? ldf(pc.src, s0 + c) : 0.0;
      const float b = c + 1u < pc.rank ? ldf(pc.src, s0 + c + 1u) : 0.0;
      uint lo, hi;
      if (st == ST_F16) {
        lo = f32_to_f16_rne(a);
        hi = c + 1u < pc.rank ? f32_to_f16_rne(b) : 0u;
      } else {
        lo = f32_to_bf16_rne(a);
        hi = c + 1u < pc.rank ? f32_to_bf16_rne(b) : 0u;
      }
      pc.dst.v[w0 + w] = lo | (hi << 16);
    }
    return;
  }
  if (pc.win != 0u && pc.pos0 + r >= pc.win_begin) {
    const uint hw = (pc.rank + 1u) >> 1;
    const uint ring = pc.cap * (pc.row_words + 2u) + ((pc.pos0 + r) % pc.win) * hw;
    for (uint w = tid; w < hw; w += 64u) {
      const uint c = 2u * w;
      const uint lo = f32_to_f16_rne(ldf(pc.src, s0 + c));
      const uint hi = c + 1u < pc.rank ? f32_to_f16_rne(ldf(pc.src, s0 + c + 1u)) : 0u;
      pc.dst.v[ring + w] = lo | (hi << 16);
    }
  }
  const uint B = storage_bits(st);
  float lo = uintBitsToFloat(0x7f800000u), hi = NEG_INF;
  for (uint c = tid; c < pc.rank; c += 64u) {
    const float v = ldf(pc.src, s0 + c);
    lo = min(lo, v);
    hi = max(hi, v);
  }
  lo_s[tid] = lo;
  hi_s[tid] = hi;
  barrier();
  for (uint s = 32u; s > 0u; s >>= 1) {
    if (tid < s) {
      lo_s[tid] = min(lo_s[tid], lo_s[tid + s]);
      hi_s[tid] = max(hi_s[tid], hi_s[tid + s]);
    }
    barrier();
  }
  lo = lo_s[0];
  hi = hi_s[0];
  const float levels = float((1u << B) - 1u);
  precise float range = hi - lo;
  const float scale = hi > lo ? div_rn(range, levels) : 0.0;
  const float inv = scale != 0.0 ? div_rn(1.0, scale) : 0.0;
  for (uint w = tid; w < pc.row_words; w += 64u) {
    uint word = 0u;
    if (scale != 0.0) {
      const uint first = (32u * w) / B;
      const uint last = min(pc.rank, (32u * w + 31u) / B + 1u);
      for (uint i = first; i < last; ++i) {
        precise float d = ldf(pc.src, s0 + i) - lo;
        precise float x = d * inv;
        const uint q = uint(min(levels, max(0.0, roundEven(x))));
        const int p = int(i * B) - int(32u * w);
        word |= p < 0 ? (q >> uint(-p)) : (q << uint(p));
      }
    }
    pc.dst.v[w0 + w] = word;
  }
  if (tid == 0u) {
    const uint prm = pc.cap * pc.row_words + 2u * (pc.pos0 + r);
    stf(pc.dst, prm, scale);
    stf(pc.dst, prm + 1u, lo);
  }
}
