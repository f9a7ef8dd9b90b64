// Conversion between a cache::SequenceImage (the block pool's bytes of one sequence, what the
// disk tier and session files hold) and the contiguous per-sequence cache buffers that device
// backends keep (backends/cuda/cuda_model.cc): one buffer holding, per (layer, kv, group)
// segment, the rows of every position [capacity][row_bytes], for B-bit storage the per-token
// float32 scales and zeros, and with an f16 window the ring [ring_slots][rank] (slot p mod N).
// palud moves a session between a device (GPU tier) and a BlockPool (host tier) through these,
// bit for bit: the stored codes, parameters and window rows are copied, never re-encoded.
//
// Errors: a segment plan that does not match the layout (count, rank, row bytes), offsets past
// the buffer, a length over the capacity, or an image of another layout / byte size / window
// bounds → INVALID_ARGUMENT or DATA_LOSS naming the value. Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "backends/base/status.h"
#include "cache/block_pool.h"

namespace palu::cache {

// Byte offsets of one segment in a contiguous buffer (scales / zeros: B-bit storage only;
// ring: with a window only).
struct ContiguousSegment {
  size_t rows = 0, scales = 0, zeros = 0, ring = 0;
  size_t row_bytes = 0;
  int rank = 0;
};

struct ContiguousCache {
  std::span<const ContiguousSegment> segments;  // (layer, kv, group) order, as the layout
  int64_t capacity = 0;                         // positions the buffer holds
  int ring_slots = 0;                           // f16 window ring slots (min(N, capacity); 0: none)
};

// The image of `length` positions held in `buf` (window_begin as the device tracked it;
// = length without a window).
Result<SequenceImage> image_from_contiguous(const CacheLayout& layout, const ContiguousCache& plan,
                                            std::span<const uint8_t> buf, int64_t length,
                                            int64_t window_begin);

// Writes `image` into `buf` (zeroed first: positions ≥ image.length and unused ring slots
// read as zeros). The image is checked first (check_sequence_image, the sequence's capacity as the
// largest length).
Status contiguous_from_image(const CacheLayout& layout, const ContiguousCache& plan,
                             const SequenceImage& image, std::span<uint8_t> buf);

}  // namespace palu::cache
