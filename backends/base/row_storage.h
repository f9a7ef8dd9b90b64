// RowStorage: how one row of cached values (a token's latent of one head group, or a full K/V
// row) is stored. Shared by the cache (which writes rows) and the kernels (which read them),
// so both name the same type.
//   kF32  float32; kF16 IEEE half (uint16 bits); kBF16 bfloat16 (uint16 bits)
//   kQ8/kQ4/kQ3/kQ2  B-bit codes packed as one little-endian bit string per row (code i at
//   bits [i·B, i·B+B)), decoded as z' = (float)q · scale + zero with a float32 scale and zero
//   per row (cache/latent_packing.h documents the codec).
#pragma once

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

}  // namespace palu::backends
