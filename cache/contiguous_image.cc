#include "cache/contiguous_image.h"

#include <algorithm>
#include <cstring>
#include <string>

namespace palu::cache {
namespace {

// Checks the plan against the layout and the buffer; calls f(l, kv, g, segment) for each.
template <typename F>
Status for_each_segment(const CacheLayout& layout, const ContiguousCache& plan, size_t buf_bytes, F&& f) {
  const bool packed = storage_is_packed(layout.storage());
  const int N = layout.window_tokens();
  size_t i = 0;
  for (int l = 0; l < layout.num_layers(); ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const Proj p = (Proj)kv;
      for (int g = 0; g < layout.num_groups(l, p); ++g, ++i) {
        const std::string where = "contiguous cache segment (layer " + std::to_string(l) + ", " +
                                  (kv ? "V" : "K") + ", group " + std::to_string(g) + "): ";
        if (i >= plan.segments.size()) {
          return invalid_argument("contiguous cache: " + std::to_string(plan.segments.size()) +
                                  " segments, the layout has more");
        }
        const ContiguousSegment& s = plan.segments[i];
        if (s.rank != layout.rank(l, p, g) || s.row_bytes != layout.row_bytes(l, p, g)) {
          return invalid_argument(where + "rank " + std::to_string(s.rank) + " / row bytes " +
                                  std::to_string(s.row_bytes) + ", the layout has " +
                                  std::to_string(layout.rank(l, p, g)) + " / " +
                                  std::to_string(layout.row_bytes(l, p, g)));
        }
        const size_t cap = (size_t)plan.capacity;
        bool fits = s.rows + cap * s.row_bytes <= buf_bytes;
        if (packed) fits = fits && s.scales + cap * 4 <= buf_bytes && s.zeros + cap * 4 <= buf_bytes;
        if (N > 0) fits = fits && s.ring + (size_t)plan.ring_slots * s.rank * 2 <= buf_bytes;
        if (!fits) return invalid_argument(where + "offsets run past the buffer (" + std::to_string(buf_bytes) + " bytes)");
        PALU_RETURN_IF_ERROR(f(l, p, g, s));
      }
    }
  }
  if (i != plan.segments.size()) {
    return invalid_argument("contiguous cache: " + std::to_string(plan.segments.size()) + " segments, the layout has " +
                            std::to_string(i));
  }
  return Status::ok();
}

Status check_plan(const CacheLayout& layout, const ContiguousCache& plan) {
  const int N = layout.window_tokens();
  if (plan.capacity < 0) return invalid_argument("contiguous cache: negative capacity");
  const int want_slots = N > 0 ? (int)std::min<int64_t>(N, plan.capacity) : 0;
  if (plan.ring_slots != want_slots) {
    return invalid_argument("contiguous cache: " + std::to_string(plan.ring_slots) + " window ring slots, expected " +
                            std::to_string(want_slots));
  }
  return Status::ok();
}

}  // namespace

Result<SequenceImage> image_from_contiguous(const CacheLayout& layout, const ContiguousCache& plan,
                                            std::span<const uint8_t> buf, int64_t length,
                                            int64_t window_begin) {
  PALU_RETURN_IF_ERROR(check_plan(layout, plan));
  if (length < 0 || length > plan.capacity) {
    return invalid_argument("contiguous cache: length " + std::to_string(length) + " outside [0, " +
                            std::to_string(plan.capacity) + "]");
  }
  const int64_t N = layout.window_tokens();
  const int64_t lo = N > 0 ? std::max<int64_t>(0, length - N) : length;
  if (window_begin < lo || window_begin > length) {
    return invalid_argument("contiguous cache: window_begin " + std::to_string(window_begin) + " outside [" +
                            std::to_string(lo) + ", " + std::to_string(length) + "]");
  }
  SequenceImage img;
  img.length = length;
  img.window_begin = window_begin;
  img.layout_hash = layout_hash(layout);
  const int64_t token_blocks = layout.blocks_for_tokens(length);
  const size_t bb = layout.block_bytes();
  img.bytes.assign((size_t)layout.session_blocks(length) * bb, 0);
  const int64_t bt = layout.block_tokens();
  const bool packed = storage_is_packed(layout.storage());
  const int rows_per_wblock = layout.window_rows_per_block();
  PALU_RETURN_IF_ERROR(for_each_segment(layout, plan, buf.size(), [&](int l, Proj p, int g, const ContiguousSegment& s) {
    const size_t off = layout.segment_offset(l, p, g);
    for (int64_t pos = 0; pos < length; ++pos) {
      uint8_t* seg = img.bytes.data() + (size_t)(pos / bt) * bb + off;
      const size_t t = (size_t)(pos % bt);
      if (packed) {
        std::memcpy(seg + t * 4, buf.data() + s.scales + (size_t)pos * 4, 4);
        std::memcpy(seg + (size_t)bt * 4 + t * 4, buf.data() + s.zeros + (size_t)pos * 4, 4);
        seg += 8 * (size_t)bt;
      }
      std::memcpy(seg + t * s.row_bytes, buf.data() + s.rows + (size_t)pos * s.row_bytes, s.row_bytes);
    }
    for (int slot = 0; slot < plan.ring_slots; ++slot) {
      uint8_t* row = img.bytes.data() + (size_t)(token_blocks + slot / rows_per_wblock) * bb +
                     (size_t)(slot % rows_per_wblock) * layout.window_row_bytes() +
                     layout.window_offset(l, p, g) * 2;
      std::memcpy(row, buf.data() + s.ring + (size_t)slot * s.rank * 2, (size_t)s.rank * 2);
    }
    return Status::ok();
  }));
  return img;
}

Status contiguous_from_image(const CacheLayout& layout, const ContiguousCache& plan,
                             const SequenceImage& image, std::span<uint8_t> buf) {
  PALU_RETURN_IF_ERROR(check_plan(layout, plan));
  PALU_RETURN_IF_ERROR(check_sequence_image(layout, image, plan.capacity, "cache image: ", "the sequence"));
  const size_t bb = layout.block_bytes();
  const int64_t token_blocks = layout.blocks_for_tokens(image.length);
  // Validate every offset before writing anything.
  PALU_RETURN_IF_ERROR(
      for_each_segment(layout, plan, buf.size(), [](int, Proj, int, const ContiguousSegment&) { return Status::ok(); }));
  std::memset(buf.data(), 0, buf.size());
  const int64_t bt = layout.block_tokens();
  const bool packed = storage_is_packed(layout.storage());
  const int rows_per_wblock = layout.window_rows_per_block();
  return for_each_segment(layout, plan, buf.size(), [&](int l, Proj p, int g, const ContiguousSegment& s) {
    const size_t off = layout.segment_offset(l, p, g);
    for (int64_t pos = 0; pos < image.length; ++pos) {
      const uint8_t* seg = image.bytes.data() + (size_t)(pos / bt) * bb + off;
      const size_t t = (size_t)(pos % bt);
      if (packed) {
        std::memcpy(buf.data() + s.scales + (size_t)pos * 4, seg + t * 4, 4);
        std::memcpy(buf.data() + s.zeros + (size_t)pos * 4, seg + (size_t)bt * 4 + t * 4, 4);
        seg += 8 * (size_t)bt;
      }
      std::memcpy(buf.data() + s.rows + (size_t)pos * s.row_bytes, seg + t * s.row_bytes, s.row_bytes);
    }
    for (int slot = 0; slot < plan.ring_slots; ++slot) {
      const uint8_t* row = image.bytes.data() + (size_t)(token_blocks + slot / rows_per_wblock) * bb +
                           (size_t)(slot % rows_per_wblock) * layout.window_row_bytes() +
                           layout.window_offset(l, p, g) * 2;
      std::memcpy(buf.data() + s.ring + (size_t)slot * s.rank * 2, row, (size_t)s.rank * 2);
    }
    return Status::ok();
  });
}

}  // namespace palu::cache
