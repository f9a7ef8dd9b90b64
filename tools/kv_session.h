// KvSession: one sequence's KV state for the tools, over either cache path:
//   dense  — the contiguous float32 cache (cache::KvCache) and LlamaModel::forward: the
//            reference path (compressed models: K/V rebuilt from latents = the simulation);
//   pooled — a cache::BlockPool sized for one sequence of `capacity` tokens and
//            LlamaModel::forward_pooled: latents for compressed models, full K/V rows
//            otherwise (what the daemon runs).
// step() runs n tokens after the ones already held; reset() forgets them.
//
// Ownership: borrows the model (must outlive the session). Thread-safety: one thread.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "backends/base/status.h"
#include "cache/block_pool.h"
#include "cache/kv_cache.h"
#include "model/llama_model.h"

namespace palu::tools {

class KvSession {
 public:
  // options == nullopt: dense. Otherwise pooled with these cache options.
  static Result<KvSession> create(const model::LlamaModel& model, int capacity,
                                  std::optional<model::CacheOptions> options);

  Status step(const int32_t* tokens, int n, model::LogitsMode mode, float* logits);
  Status reset();
  // Forgets the tokens after the first n (0 ≤ n ≤ size()).
  Status truncate(int n);
  int size() const { return size_; }
  int capacity() const { return capacity_; }
  bool pooled() const { return pool_ != nullptr; }
  // Bytes the cache holds for the current tokens (pool: session_bytes; dense: the capacity's
  // float32 arrays, which are allocated up front).
  uint64_t bytes() const;
  // Bytes per token by the layout formula (dense: 2·L·H_kv·d_h·4).
  uint64_t bytes_per_token() const;
  // e.g. "latent q4 (window 32), 1234 B/token" or "dense f32, 16384 B/token".
  std::string describe() const;
  // Pooled sessions: the pool's layout, and the sequence as an image / from one
  // (BlockPool::export_sequence / import_sequence; import replaces the contents, length ≤
  // capacity). Dense: FAILED_PRECONDITION.
  Result<const cache::CacheLayout*> layout() const;
  Result<cache::SequenceImage> export_image() const;
  Status import_image(const cache::SequenceImage& image);

 private:
  const model::LlamaModel* model_ = nullptr;
  int capacity_ = 0, size_ = 0;
  std::unique_ptr<cache::KvCache> dense_;
  std::unique_ptr<cache::BlockPool> pool_;
  static constexpr cache::SeqId kSeq = 0;
};

}  // namespace palu::tools
