// Shared by every palu compute shader: buffers are passed by device address (push constants
// hold VkDeviceAddress values, GL_EXT_buffer_reference), read and written as 32-bit words.
// f16/bf16 values are unpacked from words in the shader, so no 16-bit storage feature is
// needed; packed latent codes follow cache/latent_packing.h (one little-endian bit string per
// row; device rows are padded to whole 32-bit words).
#extension GL_EXT_buffer_reference : require

layout(buffer_reference, std430, buffer_reference_align = 4) buffer Buf { uint v[]; };

// RowStorage values (backends/base/row_storage.h) and weight dtypes.
const uint ST_F32 = 0u;
const uint ST_F16 = 1u;
const uint ST_BF16 = 2u;
const uint ST_Q8 = 3u;
const uint ST_Q4 = 4u;
const uint ST_Q3 = 5u;
const uint ST_Q2 = 6u;

#define NEG_INF uintBitsToFloat(0xff800000u)

float ldf(Buf b, uint i) { return uintBitsToFloat(b.v[i]); }
void stf(Buf b, uint i, float x) { b.v[i] = floatBitsToUint(x); }
float ldh(Buf b, uint i) { return unpackHalf2x16(b.v[i >> 1] >> ((i & 1u) << 4)).x; }
float ldbf(Buf b, uint i) { return uintBitsToFloat(((b.v[i >> 1] >> ((i & 1u) << 4)) & 0xffffu) << 16); }
// Element i of a weight tensor stored as f32 (0), f16 (1) or bf16 (2).
float ldw(Buf b, uint i, uint dt) {
  if (dt == ST_F16) return ldh(b, i);
  if (dt == ST_BF16) return ldbf(b, i);
  return ldf(b, i);
}

uint storage_bits(uint st) {
  if (st == ST_Q8) return 8u;
  if (st == ST_Q4) return 4u;
  if (st == ST_Q3) return 3u;
  if (st == ST_Q2) return 2u;
  return 0u;
}

// Element c of the row that starts at word w0 (f32/f16/bf16 or packed codes); packed rows read
// their float32 scale and zero at words prm, prm + 1. z' = q·scale + zero (two roundings,
// never contracted to an FMA, exactly cache::decode_row), zero when scale == 0.
float ld_row(Buf b, uint w0, uint c, uint st, uint prm) {
  if (st == ST_F32) return uintBitsToFloat(b.v[w0 + c]);
  if (st == ST_F16) return unpackHalf2x16(b.v[w0 + (c >> 1)] >> ((c & 1u) << 4)).x;
  if (st == ST_BF16) return uintBitsToFloat(((b.v[w0 + (c >> 1)] >> ((c & 1u) << 4)) & 0xffffu) << 16);
  const uint B = storage_bits(st);
  const uint bit = c * B;
  const uint sh = bit & 31u;
  uint code = b.v[w0 + (bit >> 5)] >> sh;
  if (sh + B > 32u) code |= b.v[w0 + (bit >> 5) + 1u] << (32u - sh);
  code &= (1u << B) - 1u;
  const float scale = uintBitsToFloat(b.v[prm]);
  const float zero = uintBitsToFloat(b.v[prm + 1u]);
  precise float prod = float(code) * scale;
  precise float r = prod + zero;
  return scale == 0.0 ? zero : r;
}

// Row `pos` of a latent region, element c, honouring the f16 window of packed storage: a
// region of cap rows of `words` words (+ cap (scale, zero) pairs when packed) may be followed by
// an f16 ring (the newest positions kept exact, model/llama_model.h CacheOptions.window_tokens):
// win > 0 and pos ≥ win_begin read slot pos mod win, rows of (rank + 1)/2 words at word
// cap·(words + 2); every other position reads the stored row (ld_row). win = 0: no window.
float ld_lat(Buf b, uint pos, uint words, uint c, uint st, uint cap, uint rank, uint win, uint win_begin) {
  if (win != 0u && pos >= win_begin) {
    const uint w0 = cap * (words + 2u) + (pos % win) * ((rank + 1u) >> 1);
    return unpackHalf2x16(b.v[w0 + (c >> 1)] >> ((c & 1u) << 4)).x;
  }
  return ld_row(b, pos * words, c, st, cap * words + 2u * pos);
}

// IEEE half bits of x, round to nearest even (what the CPU cache stores).
uint f32_to_f16_rne(float f) {
  const uint x = floatBitsToUint(f);
  const uint sign = (x >> 16) & 0x8000u;
  const uint e = (x >> 23) & 0xffu;
  uint m = x & 0x7fffffu;
  if (e == 0xffu) return sign | 0x7c00u | (m != 0u ? 0x200u : 0u);
  const int ne = int(e) - 112;
  if (ne >= 31) return sign | 0x7c00u;
  if (ne <= 0) {
    if (ne < -10) return sign;
    m |= 0x800000u;
    const uint shift = uint(14 - ne);
    uint hm = m >> shift;
    const uint rem = m & ((1u << shift) - 1u);
    const uint halfway = 1u << (shift - 1u);
    if (rem > halfway || (rem == halfway && (hm & 1u) != 0u)) hm += 1u;
    return sign | hm;
  }
  uint h = sign | (uint(ne) << 10) | (m >> 13);
  const uint rem = m & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) != 0u)) h += 1u;
  return h;
}

uint f32_to_bf16_rne(float f) {
  const uint x = floatBitsToUint(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (x >> 16) | 0x40u;  // quiet NaN
  return (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
}

// a / b correctly rounded (IEEE round to nearest even) for finite a ≥ 0, b > 0, by long
// division of the significands: the shader division may be off by 2.5 ulp, and the cache's
// quantization scale must equal the host's bit for bit. Falls back to a / b for results that
// would be subnormal or overflow (never for latents of sane magnitude).
uint significand(float x, out int e) {
  const uint ix = floatBitsToUint(x);
  e = int((ix >> 23) & 0xffu);
  uint m = ix & 0x7fffffu;
  if (e == 0) {
    e = 1;
    while (m < 0x800000u) {
      m <<= 1;
      e -= 1;
    }
  } else {
    m |= 0x800000u;
  }
  return m;
}
float div_rn(float a, float b) {
  if (a == 0.0) return 0.0;
  int ea, eb;
  const uint ma = significand(a, ea);
  const uint mb = significand(b, eb);
  int e = ea - eb + 127;
  uint r = ma;
  if (ma < mb) {
    r <<= 1;
    e -= 1;
  }
  uint q = 0u;
  for (int i = 0; i < 24; ++i) {
    q <<= 1;
    if (r >= mb) {
      r -= mb;
      q |= 1u;
    }
    r <<= 1;
  }
  if (r > mb || (r == mb && (q & 1u) != 0u)) q += 1u;
  if (q == 0x1000000u) {
    q >>= 1;
    e += 1;
  }
  if (e <= 0 || e >= 255) return a / b;
  return uintBitsToFloat((uint(e) << 23) | (q & 0x7fffffu));
}

// Flat workgroup index for row-style kernels whose count may exceed 65535 in x.
uint flat_group() { return gl_WorkGroupID.x + gl_NumWorkGroups.x * gl_WorkGroupID.y; }
