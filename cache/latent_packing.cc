#include "cache/latent_packing.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

#include "backends/base/dtype.h"

namespace palu::cache {
namespace {

// Little-endian load/store of `nbytes` ≤ 8 bytes, independent of the host byte order.
inline uint64_t load_le(const uint8_t* p, int nbytes) {
  uint64_t v = 0;
  for (int i = 0; i < nbytes; ++i) v |= (uint64_t)p[i] << (8 * i);
  return v;
}
inline void store_le(uint8_t* p, int nbytes, uint64_t v) {
  for (int i = 0; i < nbytes; ++i) p[i] = (uint8_t)(v >> (8 * i));
}

// Eight B-bit codes fill exactly B bytes, so rows are processed in chunks of 8 codes and a
// tail of < 8 codes (ceil(k·B/8) bytes).
template <int B>
void pack_t(const uint8_t* codes, size_t n, uint8_t* out) {
  const size_t full = n / 8;
  for (size_t c = 0; c < full; ++c) {
    uint64_t v = 0;
    for (int j = 0; j < 8; ++j) v |= (uint64_t)codes[8 * c + j] << (B * j);
    store_le(out + B * c, B, v);
  }
  const size_t k = n - 8 * full;
  if (k) {
    uint64_t v = 0;
    for (size_t j = 0; j < k; ++j) v |= (uint64_t)codes[8 * full + j] << (B * j);
    store_le(out + B * full, (int)((k * B + 7) / 8), v);
  }
}

template <int B>
void unpack_t(const uint8_t* in, size_t n, uint8_t* codes) {
  constexpr uint64_t mask = (1u << B) - 1;
  const size_t full = n / 8;
  for (size_t c = 0; c < full; ++c) {
    const uint64_t v = load_le(in + B * c, B);
    for (int j = 0; j < 8; ++j) codes[8 * c + j] = (uint8_t)((v >> (B * j)) & mask);
  }
  const size_t k = n - 8 * full;
  if (k) {
    const uint64_t v = load_le(in + B * full, (int)((k * B + 7) / 8));
    for (size_t j = 0; j < k; ++j) codes[8 * full + j] = (uint8_t)((v >> (B * j)) & mask);
  }
}

template <int B>
void decode_t(const uint8_t* in, size_t n, float scale, float zero, float* out) {
  constexpr uint64_t mask = (1u << B) - 1;
  const size_t full = n / 8;
  for (size_t c = 0; c < full; ++c) {
    const uint64_t v = load_le(in + B * c, B);
    float* o = out + 8 * c;
    for (int j = 0; j < 8; ++j) {
      // Same expression as fake_quantize: (float)q * scale + zero.
      const float q = (float)((v >> (B * j)) & mask);
      o[j] = q * scale + zero;
    }
  }
  const size_t k = n - 8 * full;
  if (k) {
    const uint64_t v = load_le(in + B * full, (int)((k * B + 7) / 8));
    for (size_t j = 0; j < k; ++j) {
      const float q = (float)((v >> (B * j)) & mask);
      out[8 * full + j] = q * scale + zero;
    }
  }
}

}  // namespace

const char* storage_name(CacheStorage s) { return backends::row_storage_name(s); }

int storage_bits(CacheStorage s) { return backends::row_storage_bits(s); }

bool storage_for_bits(int bits, CacheStorage* out) {
  switch (bits) {
    case 8:
      *out = CacheStorage::kQ8;
      return true;
    case 4:
      *out = CacheStorage::kQ4;
      return true;
    case 3:
      *out = CacheStorage::kQ3;
      return true;
    case 2:
      *out = CacheStorage::kQ2;
      return true;
    default:
      return false;
  }
}

size_t storage_row_bytes(CacheStorage s, size_t n) { return backends::row_storage_bytes(s, n); }

void pack_codes(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  switch (bits) {
    case 2:
      pack_t<2>(codes, n, out);
      break;
    case 3:
      pack_t<3>(codes, n, out);
      break;
    case 4:
      pack_t<4>(codes, n, out);
      break;
    case 8:
      if (n) std::memcpy(out, codes, n);  // n = 0 may come with null pointers
      break;
    default:
      assert(false && "pack_codes: unsupported bits");
  }
}

void unpack_codes(const uint8_t* packed, size_t n, int bits, uint8_t* codes) {
  switch (bits) {
    case 2:
      unpack_t<2>(packed, n, codes);
      break;
    case 3:
      unpack_t<3>(packed, n, codes);
      break;
    case 4:
      unpack_t<4>(packed, n, codes);
      break;
    case 8:
      if (n) std::memcpy(codes, packed, n);
      break;
    default:
      assert(false && "unpack_codes: unsupported bits");
  }
}

QuantParams encode_packed_row(const float* z, size_t n, int bits, uint8_t* out) {
  const QuantParams p = quant_params(z, n, bits);
  const size_t bytes = packed_row_bytes(bits, n);
  if (p.scale == 0.f) {  // constant row: every code 0, decodes to `zero` exactly
    if (bytes) std::memset(out, 0, bytes);
    return p;
  }
  // Codes in chunks of 8 (one chunk = `bits` bytes), computed exactly as in fake_quantize.
  const float levels = (float)((1 << bits) - 1);
  const float inv = 1.0f / p.scale;
  uint8_t chunk[8];
  for (size_t c = 0; c < n; c += 8) {
    const size_t k = std::min<size_t>(8, n - c);
    for (size_t j = 0; j < k; ++j) {
      const float q = std::min(levels, std::max(0.f, std::nearbyint((z[c + j] - p.zero) * inv)));
      chunk[j] = (uint8_t)q;
    }
    pack_codes(chunk, k, bits, out + (c / 8) * bits);
  }
  return p;
}

void decode_packed_row(const uint8_t* packed, size_t n, int bits, QuantParams p, float* out) {
  if (p.scale == 0.f) {  // fake_quantize fills with zero (keeps e.g. −0.0 bit for bit)
    std::fill(out, out + n, p.zero);
    return;
  }
  switch (bits) {
    case 2:
      decode_t<2>(packed, n, p.scale, p.zero, out);
      break;
    case 3:
      decode_t<3>(packed, n, p.scale, p.zero, out);
      break;
    case 4:
      decode_t<4>(packed, n, p.scale, p.zero, out);
      break;
    case 8:
      for (size_t i = 0; i < n; ++i) out[i] = (float)packed[i] * p.scale + p.zero;
      break;
    default:
      assert(false && "decode_packed_row: unsupported bits");
  }
}

void encode_row(CacheStorage s, const float* z, size_t n, uint8_t* row, QuantParams* p) {
  switch (s) {
    case CacheStorage::kF32:
      if (n) std::memcpy(row, z, 4 * n);
      return;
    case CacheStorage::kF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_f16(z[i]);
        std::memcpy(row + 2 * i, &h, 2);
      }
      return;
    case CacheStorage::kBF16:
      for (size_t i = 0; i < n; ++i) {
        const uint16_t h = f32_to_bf16(z[i]);
        std::memcpy(row + 2 * i, &h, 2);
      }
      return;
    default: {
      const QuantParams q = encode_packed_row(z, n, storage_bits(s), row);
      if (p) *p = q;
    }
  }
}

void decode_row(CacheStorage s, const uint8_t* row, size_t n, QuantParams p, float* out) {
  switch (s) {
    case CacheStorage::kF32:
      if (n) std::memcpy(out, row, 4 * n);
      return;
    case CacheStorage::kF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        out[i] = f16_to_f32(h);
      }
      return;
    case CacheStorage::kBF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, row + 2 * i, 2);
        out[i] = bf16_to_f32(h);
      }
      return;
    default:
      decode_packed_row(row, n, storage_bits(s), p, out);
  }
}

}  // namespace palu::cache
