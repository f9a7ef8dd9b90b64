// CacheLayout: the shape of one token in the block pool, in plain numbers, and its exact byte
// accounting. The cache does not know models: a layout is a list of layers, each with a list
// of row widths ("group ranks") for K and for V, a block size, a storage type and an
// optional f16 window.
//
//   latent layout: ranks[layer][kv][group] = r (latent width of one head group; K and V and
//                  layers may differ). One row = one token's latent of one group (pre-RoPE).
//   full layout:   one "group" per layer and projection of width H_kv·d_h (the whole K or V
//                  row of the token). Everything above the pool uses the same API for both.
//
// ---- Byte formula (what BlockPool reserves; tests check it) ---------------------------------
//   For every segment (l, kv, g) with width r:
//     row_bytes(r)   = 4r (f32), 2r (f16, bf16), ceil(r·B/8) (B-bit codes, see latent_packing.h)
//     param_bytes    = 8 for B-bit storage (float32 scale + float32 zero per token), else 0
//   token_bytes      = Σ_{l,kv,g} (row_bytes(r_{l,kv,g}) + param_bytes)       (bytes per token)
//   segment_bytes    = round_up(block_tokens · (row_bytes(r) + param_bytes), 4)
//   block_bytes      = Σ_{l,kv,g} segment_bytes      (= block_tokens · token_bytes when
//                                                      block_tokens is a multiple of 4)
//   window (B-bit storage only, N = window_tokens > 0): the newest N tokens are kept in f16 in
//   a per-sequence ring of N rows; one ring row holds a whole token:
//     window_row_bytes = 2 · Σ_{l,kv,g} r
//     window_rows_per_block = min(N, floor(block_bytes / window_row_bytes))  (must be ≥ 1)
//     window_blocks    = ceil(N / window_rows_per_block)               (0 when N = 0)
//   A sequence of T tokens holds
//     session_bytes(T) = (ceil(T / block_tokens) + window_blocks) · block_bytes
//   (window blocks are taken when the sequence is created, even at T = 0), and its payload
//   (the bytes actually meaningful, without block rounding) is
//     session_payload_bytes(T) = T · token_bytes + min(T, N) · window_row_bytes.
//
// ---- Block byte layout ------------------------------------------------------------------------
//   A block holds block_tokens consecutive positions of one sequence. It is the concatenation of
//   the segments in order layer 0..L−1, then K before V, then group 0..G−1; segment (l, kv, g)
//   starts at segment_offset(l, kv, g) (a multiple of 4) and is
//     B-bit: scales float32[block_tokens], zeros float32[block_tokens],
//            codes [block_tokens][row_bytes]  (row t = position first_pos + t), padding to 4
//     f32/f16/bf16: rows [block_tokens][row_bytes], padding to 4
//   A window ring row (in a window block, at (slot mod rows_per_block) · window_row_bytes) is
//   f16[Σ r]: the same (l, kv, g) order, group (l, kv, g) at window_offset(l, kv, g) elements.
//
// Thread-safety: immutable after create; safe to share. Errors: create() returns
// INVALID_ARGUMENT naming the field, the expected and the found value.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "backends/base/status.h"
#include "cache/latent_packing.h"

namespace palu::cache {

// Which projection a row belongs to.
enum class Proj : int { kKey = 0, kValue = 1 };

// Plain description of a layout; validated by CacheLayout::create.
struct CacheLayoutSpec {
  // ranks[layer][kv][group]: row width of each group; kv 0 = K, 1 = V.
  std::vector<std::array<std::vector<int>, 2>> ranks;
  bool full = false;  // informational: rows are full K/V rows (width H_kv·d_h), not latents
  int block_tokens = 16;
  CacheStorage storage = CacheStorage::kF16;
  int window_tokens = 0;  // newest N tokens also kept in f16 (B-bit storage only)
};

// A full (uncompressed) cache: per layer one K row and one V row of kv_width = H_kv·d_h values.
CacheLayoutSpec full_layout_spec(int num_layers, int kv_width,
                                 CacheStorage storage = CacheStorage::kF32, int block_tokens = 16);
// A latent cache whose K and V groups have the same ranks in every layer.
CacheLayoutSpec uniform_latent_spec(int num_layers, const std::vector<int>& k_ranks,
                                    const std::vector<int>& v_ranks, CacheStorage storage,
                                    int block_tokens = 16, int window_tokens = 0);

class CacheLayout {
 public:
  static constexpr int kMaxLayers = 4096;
  static constexpr int kMaxGroups = 4096;
  static constexpr int kMaxRank = 1 << 20;
  static constexpr int kMaxBlockTokens = 4096;
  static constexpr int kMaxWindowTokens = 1 << 20;

  static Result<CacheLayout> create(const CacheLayoutSpec& spec);

  const CacheLayoutSpec& spec() const { return spec_; }
  int num_layers() const { return (int)spec_.ranks.size(); }
  int num_groups(int layer, Proj kv) const { return (int)spec_.ranks[layer][(int)kv].size(); }
  int rank(int layer, Proj kv, int group) const { return spec_.ranks[layer][(int)kv][group]; }
  // Σ of the ranks of (layer, kv) (the width of a concatenated latent row).
  int total_rank(int layer, Proj kv) const { return total_rank_[2 * layer + (int)kv]; }
  bool full() const { return spec_.full; }
  int block_tokens() const { return spec_.block_tokens; }
  CacheStorage storage() const { return spec_.storage; }
  int bits() const { return storage_bits(spec_.storage); }
  int window_tokens() const { return spec_.window_tokens; }

  // Checks layer / kv / group; INVALID_ARGUMENT naming the bad index.
  Status check_index(int layer, Proj kv, int group) const;

  // Per segment: bytes of one row's codes, of its parameters, and the offset in a block.
  size_t row_bytes(int layer, Proj kv, int group) const { return seg(layer, kv, group).row_bytes; }
  size_t param_bytes() const { return storage_param_bytes(spec_.storage); }
  size_t segment_offset(int layer, Proj kv, int group) const {
    return seg(layer, kv, group).offset;
  }
  // Offset (in f16 elements) of the group inside a window ring row.
  size_t window_offset(int layer, Proj kv, int group) const {
    return seg(layer, kv, group).window_offset;
  }

  size_t token_bytes() const { return token_bytes_; }
  size_t block_bytes() const { return block_bytes_; }
  size_t window_row_bytes() const { return spec_.window_tokens > 0 ? window_row_bytes_ : 0; }
  int window_rows_per_block() const { return window_rows_per_block_; }
  int window_blocks() const { return window_blocks_; }

  static int64_t blocks_for_tokens(int64_t tokens, int block_tokens) {
    return (tokens + block_tokens - 1) / block_tokens;
  }
  int64_t blocks_for_tokens(int64_t tokens) const {
    return blocks_for_tokens(tokens, spec_.block_tokens);
  }
  // Blocks a sequence of `tokens` tokens holds (token blocks + window blocks).
  int64_t session_blocks(int64_t tokens) const {
    return blocks_for_tokens(tokens) + window_blocks_;
  }
  // Exact bytes the pool holds for a sequence of `tokens` tokens (formula above).
  uint64_t session_bytes(int64_t tokens) const {
    return (uint64_t)session_blocks(tokens) * block_bytes_;
  }
  // Payload bytes without block rounding (formula above).
  uint64_t session_payload_bytes(int64_t tokens) const;

  // One line, e.g. "latent q4 L=8 K/V ranks per layer ... block 16 tok, 1234 B/token, window 32".
  std::string describe() const;

 private:
  struct Segment {
    size_t row_bytes = 0;
    size_t offset = 0;         // bytes from the block start
    size_t window_offset = 0;  // f16 elements from the ring row start
  };
  const Segment& seg(int layer, Proj kv, int group) const {
    return segments_[seg_begin_[2 * layer + (int)kv] + group];
  }

  CacheLayoutSpec spec_;
  std::vector<Segment> segments_;  // (l, kv, g) order
  std::vector<size_t> seg_begin_;  // [2L]: index of (l, kv, 0) in segments_
  std::vector<int> total_rank_;    // [2L]
  size_t token_bytes_ = 0;
  size_t block_bytes_ = 0;
  size_t window_row_bytes_ = 0;
  int window_rows_per_block_ = 0;
  int window_blocks_ = 0;
};

}  // namespace palu::cache
