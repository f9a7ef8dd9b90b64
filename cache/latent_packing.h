// Storage of one cache row (one token's latent of one head group, or one token's full K or V
// row) in the block pool: the element types, the bit packing of quantized codes, and the
// encode / decode functions that the pool and the attention kernels call.
//
// Storage types (CacheStorage):
//   kF32   4 bytes per value, no parameters
//   kF16   2 bytes per value (IEEE half, round to nearest even), no parameters
//   kBF16  2 bytes per value (bfloat16, round to nearest even), no parameters
//   kQ8/kQ4/kQ3/kQ2  B-bit codes, B ∈ {8, 4, 3, 2}, plus a float32 scale and a float32 zero
//          per row (= per token per group).
//
// Quantization: exactly the asymmetric per-vector formula of cache/latent_codec.h
//   (scale, zero) = quant_params(z, n, B)                 scale = (max − min)/(2^B − 1), zero = min
//   q_i = min(2^B − 1, max(0, nearbyint((z_i − zero) · (1/scale))))     (code; 0 when scale == 0)
//   decode: z'_i = (float)q_i · scale + zero,  or z'_i = zero when scale == 0
// so decode(encode(z)) is bit-for-bit fake_quantize(z) (tests check this). Scale and zero are
// stored as float32, not f16: rounding them to f16 would change every decoded value and break
// the bit-exact match with the accuracy simulation (8 bytes per row instead of 4).
// Note for builds with FMA (-march=native): fake_quantize and decode_row must be compiled
// with the same contraction setting (-ffp-contract) or `q·scale + zero` may round differently.
//
// Bit packing of a row of n B-bit codes (row_bytes = ceil(n·B / 8)):
//   the row is one little-endian bit string; code i occupies bits [i·B, i·B + B), where bit k
//   of the string is bit (k mod 8) (LSB = 0) of byte k / 8. Unused high bits of the last byte
//   are zero. Hence
//     B = 8: one code per byte;
//     B = 4: two codes per byte, code 2j in the low nibble of byte j, code 2j+1 in the high;
//     B = 2: four codes per byte, code 4j+m in bits [2m, 2m+2) of byte j;
//     B = 3: eight codes in three bytes: codes 8j..8j+7 form the 24-bit little-endian integer
//            of bytes 3j..3j+2, code 8j+m in its bits [3m, 3m+3).
//   A row starts on a byte boundary (rows are never packed across each other).
//
// Thread-safety: pure functions. Errors: none; callers validate bits and sizes (see
// valid_latent_bits); these functions assume n ≥ 0 and buffers of the documented sizes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "backends/base/row_storage.h"
#include "cache/latent_codec.h"

namespace palu::cache {

using CacheStorage = backends::RowStorage;

// "f32", "f16", "bf16", "q8", "q4", "q3", "q2".
const char* storage_name(CacheStorage s);
// B for the packed types, 0 for f32/f16/bf16.
int storage_bits(CacheStorage s);
inline bool storage_is_packed(CacheStorage s) {
  return storage_bits(s) != 0;
}
// The packed type of `bits` ∈ {2, 3, 4, 8}; false otherwise.
bool storage_for_bits(int bits, CacheStorage* out);

// Bytes of n packed B-bit codes: ceil(n·B/8).
inline size_t packed_row_bytes(int bits, size_t n) {
  return (n * (size_t)bits + 7) / 8;
}
// Bytes of one row of n values in storage s (codes only, without scale/zero).
size_t storage_row_bytes(CacheStorage s, size_t n);
// Bytes of the per-row parameters: 8 (float32 scale + float32 zero) for packed types, else 0.
inline size_t storage_param_bytes(CacheStorage s) {
  return storage_is_packed(s) ? 8 : 0;
}

// Packs n codes (each < 2^bits) into packed_row_bytes(bits, n) bytes at out (layout above).
void pack_codes(const uint8_t* codes, size_t n, int bits, uint8_t* out);
// Inverse of pack_codes.
void unpack_codes(const uint8_t* packed, size_t n, int bits, uint8_t* codes);

// Quantizes z[n] to B bits and packs the codes into out[packed_row_bytes(bits, n)].
// Returns the row's parameters (to be stored next to the row).
QuantParams encode_packed_row(const float* z, size_t n, int bits, uint8_t* out);
// Decodes a packed row: out[i] = code_i · p.scale + p.zero (p.zero when p.scale == 0).
void decode_packed_row(const uint8_t* packed, size_t n, int bits, QuantParams p, float* out);

// Storage-generic row encode/decode (what the pool and the kernels use).
// encode: row[storage_row_bytes(s, n)]; for packed types *p receives scale/zero, otherwise
// it is left untouched (may be null).
void encode_row(CacheStorage s, const float* z, size_t n, uint8_t* row, QuantParams* p);
// decode: p is ignored for f32/f16/bf16.
void decode_row(CacheStorage s, const uint8_t* row, size_t n, QuantParams p, float* out);

}  // namespace palu::cache
