#include "cache/kv_cache.h"

#include <new>
#include <string>

namespace palu::cache {

Result<KvCache> KvCache::create(int num_layers, int kv_width, int max_tokens, bool exact_copies) {
  if (num_layers <= 0 || kv_width <= 0 || max_tokens <= 0) {
    return invalid_argument("KvCache: layers, kv_width and max_tokens must be positive (got " +
                            std::to_string(num_layers) + ", " + std::to_string(kv_width) + ", " +
                            std::to_string(max_tokens) + ")");
  }
  KvCache c;
  c.num_layers_ = num_layers;
  c.kv_width_ = kv_width;
  c.max_tokens_ = max_tokens;
  c.planes_ = exact_copies ? 4 : 2;
  const size_t n = (size_t)num_layers * c.planes_ * max_tokens * kv_width;
  try {
    c.data_.assign(n, 0.f);
  } catch (const std::bad_alloc&) {
    return resource_exhausted("KvCache: cannot allocate " + std::to_string(n * sizeof(float)) + " bytes for " +
                              std::to_string(max_tokens) + " tokens");
  }
  return c;
}

Status KvCache::advance(int n) {
  if (n < 0 || size_ + n > max_tokens_) {
    return out_of_range("KvCache: " + std::to_string(size_) + " + " + std::to_string(n) +
                        " tokens exceed the capacity of " + std::to_string(max_tokens_));
  }
  size_ += n;
  return Status::ok();
}

Status KvCache::truncate(int n) {
  if (n < 0 || n > size_) {
    return out_of_range("KvCache: cannot truncate to " + std::to_string(n) + " tokens (holding " +
                        std::to_string(size_) + ")");
  }
  size_ = n;
  return Status::ok();
}

}  // namespace palu::cache
