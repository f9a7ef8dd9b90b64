// RowStorage: how one row of cached values (a token's latent of one head group, or a full K/V
// row) is stored. Shared by the cache (which writes rows) and the kernels (which read them),
// so both name the same type.
//   kF32  float32; kF16 IEEE half (uint16 bits); kBF16 bfloat16 (uint16 bits)
//   kQ8/kQ4/kQ3/kQ2  B-bit codes packed as one little-endian bit string per row (code i at
//   bits [i·B, i·B+B)), decoded as z' = (float)q · scale + zero with a float32 scale and zero
//   per row (cache/latent_packing.h documents the codec).
#pragma once

#include <cstddef>
#include <cstdint>

namespace palu::backends {

enum class RowStorage : uint8_t {
  kF32 = 0,
  kF16 = 1,
  kBF16 = 2,
  kQ8 = 3,
  kQ4 = 4,
  kQ3 = 5,
  kQ2 = 6,
};

// "f32", "f16", "bf16", "q8", "q4", "q3", "q2" ("?" for a value outside the enum).
constexpr const char* row_storage_name(RowStorage s) {
  switch (s) {
    case RowStorage::kF32: return "f32";
    case RowStorage::kF16: return "f16";
    case RowStorage::kBF16: return "bf16";
    case RowStorage::kQ8: return "q8";
    case RowStorage::kQ4: return "q4";
    case RowStorage::kQ3: return "q3";
    case RowStorage::kQ2: return "q2";
  }
  return "?";
}

// B for the packed types, 0 for f32/f16/bf16.
constexpr int row_storage_bits(RowStorage s) {
  switch (s) {
    case RowStorage::kQ8: return 8;
    case RowStorage::kQ4: return 4;
    case RowStorage::kQ3: return 3;
    case RowStorage::kQ2: return 2;
    default: return 0;
  }
}

// Bytes of one row of n values (codes only for the packed types: ceil(n·B / 8)).
constexpr size_t row_storage_bytes(RowStorage s, size_t n) {
  switch (s) {
    case RowStorage::kF32: return 4 * n;
    case RowStorage::kF16:
    case RowStorage::kBF16: return 2 * n;
    default: return (n * (size_t)row_storage_bits(s) + 7) / 8;
  }
}

}  // namespace palu::backends
