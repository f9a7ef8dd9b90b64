// KvCache: the standard (uncompressed) key/value cache of one sequence, float32, contiguous
// per layer. Keys are stored after RoPE. The latent block pool (issue "Latent KV cache")
// replaces this for compressed models and serves uncompressed ones through the same API.
//
// Thread-safety: one owner; not synchronised.
#pragma once

#include <cstddef>
#include <vector>

#include "backends/base/status.h"

namespace palu::cache {

class KvCache {
 public:
  // Fails (RESOURCE_EXHAUSTED) instead of throwing when the allocation is refused.
  // exact_copies: also hold unquantized K/V rows (the latent simulation with an f16 window).
  static Result<KvCache> create(int num_layers, int kv_width, int max_tokens, bool exact_copies = false);

  int num_layers() const { return num_layers_; }
  int kv_width() const { return kv_width_; }      // H_kv · d_h floats per token per layer
  int capacity() const { return max_tokens_; }    // tokens
  int size() const { return size_; }              // tokens stored
  size_t bytes() const { return data_.size() * sizeof(float); }

  // Keys of `layer`: [capacity, kv_width] row-major; rows [0, size) are valid.
  float* keys(int layer) { return data_.data() + (size_t)layer * planes_ * layer_stride(); }
  float* values(int layer) { return keys(layer) + layer_stride(); }
  const float* keys(int layer) const { return data_.data() + (size_t)layer * planes_ * layer_stride(); }
  const float* values(int layer) const { return keys(layer) + layer_stride(); }
  // With exact copies: the unquantized keys/values of `layer` (same layout); else nullptr.
  bool has_exact() const { return planes_ == 4; }
  float* exact_keys(int layer) { return has_exact() ? keys(layer) + 2 * layer_stride() : nullptr; }
  float* exact_values(int layer) { return has_exact() ? keys(layer) + 3 * layer_stride() : nullptr; }
  const float* exact_keys(int layer) const { return has_exact() ? keys(layer) + 2 * layer_stride() : nullptr; }
  const float* exact_values(int layer) const { return has_exact() ? keys(layer) + 3 * layer_stride() : nullptr; }

  // Marks `n` more tokens as stored (after the forward wrote their rows).
  Status advance(int n);
  // Forgets tokens from position `n` on (e.g. to re-run a prompt suffix).
  Status truncate(int n);
  void clear() { size_ = 0; }

 private:
  size_t layer_stride() const { return (size_t)max_tokens_ * kv_width_; }
  int num_layers_ = 0;
  int kv_width_ = 0;
  int max_tokens_ = 0;
  int size_ = 0;
  int planes_ = 2;           // K, V (and exact K, exact V)
  std::vector<float> data_;  // [num_layers][planes][max_tokens][kv_width]
};

}  // namespace palu::cache
