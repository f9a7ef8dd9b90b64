#include "tools/kv_session.h"

#include <algorithm>

namespace palu::tools {

Result<KvSession> KvSession::create(const model::LlamaModel& model, int capacity,
                                    std::optional<model::CacheOptions> options) {
  if (capacity <= 0) return invalid_argument("KV session: capacity must be > 0, got " + std::to_string(capacity));
  KvSession s;
  s.model_ = &model;
  s.capacity_ = capacity;
  if (!options) {
    PALU_ASSIGN_OR_RETURN(cache::KvCache c, model.make_cache(capacity));
    s.dense_ = std::make_unique<cache::KvCache>(std::move(c));
    return s;
  }
  PALU_ASSIGN_OR_RETURN(cache::CacheLayoutSpec spec, model.cache_layout_spec(*options));
  PALU_ASSIGN_OR_RETURN(cache::CacheLayout layout, cache::CacheLayout::create(spec));
  PALU_ASSIGN_OR_RETURN(cache::BlockPool pool, cache::BlockPool::create(layout, layout.session_bytes(capacity)));
  s.pool_ = std::make_unique<cache::BlockPool>(std::move(pool));
  PALU_ASSIGN_OR_RETURN(cache::Plan plan, s.pool_->plan(cache::PoolRequest::create(kSeq)));
  PALU_RETURN_IF_ERROR(s.pool_->commit(plan));
  return s;
}

Status KvSession::step(const int32_t* tokens, int n, model::LogitsMode mode, float* logits) {
  if (n <= 0) return invalid_argument("forward: no tokens");
  if (size_ + n > capacity_) {
    return out_of_range("forward: " + std::to_string(size_) + " cached + " + std::to_string(n) +
                        " new tokens exceed the context of " + std::to_string(capacity_));
  }
  if (dense_) {
    PALU_RETURN_IF_ERROR(model_->forward(tokens, n, dense_.get(), mode, logits));
    size_ += n;
    return Status::ok();
  }
  PALU_ASSIGN_OR_RETURN(cache::Plan plan, pool_->plan(cache::PoolRequest::append(kSeq, n)));
  PALU_RETURN_IF_ERROR(pool_->commit(plan));
  model::SeqStep st{kSeq, tokens, n, mode, logits};
  Status s = model_->forward_pooled({&st, 1}, pool_.get());
  if (!s.is_ok()) {
    // Forget the positions this step added (their rows may be half written).
    auto undo = pool_->plan(cache::PoolRequest::truncate(kSeq, size_));
    if (undo.is_ok()) (void)pool_->commit(undo.value());
    return s;
  }
  size_ += n;
  return Status::ok();
}

Status KvSession::reset() {
  size_ = 0;
  if (dense_) {
    dense_->clear();
    return Status::ok();
  }
  PALU_ASSIGN_OR_RETURN(cache::Plan plan, pool_->plan(cache::PoolRequest::truncate(kSeq, 0)));
  return pool_->commit(plan);
}

Status KvSession::truncate(int n) {
  if (n < 0 || n > size_) {
    return invalid_argument("truncate: " + std::to_string(n) + " is outside 0.." + std::to_string(size_) +
                            " (the tokens held)");
  }
  if (dense_) {
    PALU_RETURN_IF_ERROR(dense_->truncate(n));
  } else {
    PALU_ASSIGN_OR_RETURN(cache::Plan plan, pool_->plan(cache::PoolRequest::truncate(kSeq, n)));
    PALU_RETURN_IF_ERROR(pool_->commit(plan));
  }
  size_ = n;
  return Status::ok();
}

Result<const cache::CacheLayout*> KvSession::layout() const {
  if (!pool_) return failed_precondition("a dense session has no cache layout");
  return &pool_->layout();
}

Result<cache::SequenceImage> KvSession::export_image() const {
  if (!pool_) return failed_precondition("export_image: a dense session has no pooled cache");
  return pool_->export_sequence(kSeq);
}

Status KvSession::import_image(const cache::SequenceImage& image) {
  if (!pool_) return failed_precondition("import_image: a dense session has no pooled cache");
  const cache::CacheLayout& L = pool_->layout();
  // checked before the sequence is replaced
  PALU_RETURN_IF_ERROR(cache::check_sequence_image(L, image, capacity_, "import_image: ", "this session"));
  const cache::PoolRequest reqs[3] = {cache::PoolRequest::free(kSeq), cache::PoolRequest::create(kSeq),
                                      cache::PoolRequest::append(kSeq, image.length)};
  PALU_ASSIGN_OR_RETURN(cache::Plan plan, pool_->plan(reqs));
  PALU_RETURN_IF_ERROR(pool_->commit(plan));
  size_ = 0;
  PALU_RETURN_IF_ERROR(pool_->import_sequence(kSeq, image));
  size_ = (int)image.length;
  return Status::ok();
}

uint64_t KvSession::bytes() const {
  if (dense_) return dense_->bytes();
  return pool_->layout().session_bytes(size_);
}

uint64_t KvSession::bytes_per_token() const {
  if (dense_) return (uint64_t)2 * model_->config().num_layers * model_->config().kv_width() * sizeof(float);
  return pool_->layout().token_bytes();
}

std::string KvSession::describe() const {
  if (dense_) {
    return std::string(model_->is_compressed() ? "dense float32 K/V rebuilt from latents (simulation)" : "dense float32") +
           ", " + std::to_string(bytes_per_token()) + " B/token";
  }
  const auto& l = pool_->layout();
  std::string s = std::string(l.full() ? "paged full K/V " : "paged latents ") + cache::storage_name(l.storage());
  if (l.window_tokens() > 0) s += " (f16 window " + std::to_string(l.window_tokens()) + ")";
  return s + ", " + std::to_string(l.token_bytes()) + " B/token";
}

}  // namespace palu::tools
