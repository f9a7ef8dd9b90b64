#include "cache/block_pool.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>

#include "backends/base/dtype.h"
#include "backends/base/host_alloc.h"

// Header-only XXH3 (palu_cache does not link libxxhash; XXH_INLINE_ALL keeps the symbols
// private to this translation unit).
#define XXH_INLINE_ALL
#include <xxhash.h>

namespace palu::cache {
namespace {

std::string seq_str(SeqId s) {
  return "sequence " + std::to_string(s);
}

std::string bytes_str(uint64_t b) {
  return std::to_string(b) + " bytes";
}

}  // namespace

std::string describe(const PoolRequest& r) {
  switch (r.kind) {
    case PoolRequest::Kind::kCreate:
      return "create " + std::to_string(r.seq);
    case PoolRequest::Kind::kAppend:
      return "append " + std::to_string(r.seq) + " +" + std::to_string(r.tokens);
    case PoolRequest::Kind::kFork:
      return "fork " + std::to_string(r.seq) + " -> " + std::to_string(r.dst);
    case PoolRequest::Kind::kTruncate:
      return "truncate " + std::to_string(r.seq) + " to " + std::to_string(r.tokens);
    case PoolRequest::Kind::kFree:
      return "free " + std::to_string(r.seq);
  }
  return "request of unknown kind " + std::to_string((int)r.kind);
}

void BlockPool::FreeDeleter::operator()(uint8_t* p) const {
  if (reserved_bytes > 0) host_unreserve(p, reserved_bytes);
  else std::free(p);
}

Result<BlockPool> BlockPool::create(CacheLayout layout, SharedBudget* budget) {
  if (budget == nullptr) return invalid_argument("cache pool: no shared budget given");
  const uint64_t block_bytes = layout.block_bytes();
  const uint64_t n = block_bytes ? budget->capacity_bytes() / block_bytes : 0;
  if (n == 0) {
    return invalid_argument("cache pool: the shared budget (" + bytes_str(budget->capacity_bytes()) +
                            ") is smaller than one block (" + bytes_str(block_bytes) + ")");
  }
  if (n > (uint64_t)INT32_MAX) {
    return invalid_argument("cache pool: the shared budget " + std::to_string(budget->capacity_bytes()) +
                            " bytes gives " + std::to_string(n) + " blocks, more than 2^31 - 1");
  }
  BlockPool pool;
  const size_t bytes = (size_t)(n * block_bytes);
  pool.arena_ = std::unique_ptr<uint8_t, FreeDeleter>(static_cast<uint8_t*>(host_reserve(bytes)),
                                                      FreeDeleter{bytes});
  if (!pool.arena_) {
    return resource_exhausted("cache pool: cannot allocate address space for " + std::to_string(n) +
                              " blocks of " + bytes_str(block_bytes));
  }
  pool.layout_ = std::move(layout);
  pool.arena_bytes_ = bytes;
  pool.num_blocks_ = (int64_t)n;
  pool.owner_.assign((size_t)n, kNoOwner);
  pool.free_list_.resize((size_t)n);
  for (int64_t i = 0; i < (int64_t)n; ++i)
    pool.free_list_[(size_t)i] = (int32_t)(n - 1 - i);  // 0 first
  pool.charge_.budget = budget;
  return pool;
}

Result<BlockPool> BlockPool::create(CacheLayout layout, uint64_t budget_bytes) {
  const uint64_t block_bytes = layout.block_bytes();
  const uint64_t n = block_bytes ? budget_bytes / block_bytes : 0;
  if (n == 0) {
    return invalid_argument("cache pool: budget_bytes " + std::to_string(budget_bytes) +
                            " is smaller than one block (" + bytes_str(block_bytes) + ")");
  }
  if (n > (uint64_t)INT32_MAX) {
    return invalid_argument("cache pool: budget_bytes " + std::to_string(budget_bytes) + " gives " +
                            std::to_string(n) + " blocks, more than 2^31 - 1");
  }
  BlockPool pool;
  // calloc: zeroed (deterministic unwritten rows) and, for large arenas, pages the OS maps
  // lazily; 16-byte aligned, enough for the 4-byte aligned segments.
  pool.arena_.reset(static_cast<uint8_t*>(host_calloc((size_t)n, (size_t)block_bytes)));
  if (!pool.arena_) {
    return resource_exhausted("cache pool: cannot allocate " + std::to_string(n) + " blocks of " +
                              bytes_str(block_bytes));
  }
  pool.layout_ = std::move(layout);
  pool.arena_bytes_ = (size_t)(n * block_bytes);
  pool.num_blocks_ = (int64_t)n;
  pool.owner_.assign((size_t)n, kNoOwner);
  pool.free_list_.resize((size_t)n);
  for (int64_t i = 0; i < (int64_t)n; ++i)
    pool.free_list_[(size_t)i] = (int32_t)(n - 1 - i);  // 0 first
  return pool;
}

PoolStats BlockPool::stats() const {
  PoolStats s;
  s.num_blocks = num_blocks_;
  s.used_blocks = num_blocks_ - (int64_t)free_list_.size();
  s.free_blocks = (int64_t)free_list_.size();
  s.block_bytes = layout_.block_bytes();
  if (charge_.budget != nullptr) {
    s.free_blocks = std::min<int64_t>(s.free_blocks, (int64_t)(charge_.budget->free_bytes() / s.block_bytes));
  }
  s.capacity_bytes = (uint64_t)s.num_blocks * s.block_bytes;
  s.used_bytes = (uint64_t)s.used_blocks * s.block_bytes;
  s.free_bytes = (uint64_t)s.free_blocks * s.block_bytes;
  s.num_sequences = (int64_t)seqs_.size();
  for (const auto& [id, q] : seqs_) s.tokens += q.length;
  return s;
}

// ---- plan / commit ----------------------------------------------------------------------------

Result<Plan> BlockPool::plan(std::span<const PoolRequest> requests) const {
  // Overlay of the sequences the requests touch: id → (exists, length).
  struct Sim {
    bool exists = false;
    int64_t length = 0;
  };
  std::unordered_map<SeqId, Sim> overlay;
  auto get = [&](SeqId s) -> Sim {
    if (auto it = overlay.find(s); it != overlay.end()) return it->second;
    if (auto it = seqs_.find(s); it != seqs_.end()) return Sim{true, it->second.length};
    return Sim{};
  };
  Plan p;
  p.requests_.assign(requests.begin(), requests.end());
  p.pool_ = arena_.get();
  p.version_ = version_;
  int64_t free_blocks = (int64_t)free_list_.size();
  const size_t bb = layout_.block_bytes();
  SharedBudget* const budget = charge_.budget;
  // Bytes the shared budget has in use as the requests apply (pools with one).
  uint64_t budget_used = budget ? budget->used_bytes() : 0;
  if (budget) p.budget_version_ = budget->version();
  for (size_t i = 0; i < requests.size(); ++i) {
    const PoolRequest& r = requests[i];
    const std::string where =
        "cache plan: request " + std::to_string(i) + " (" + describe(r) + "): ";
    int64_t take = 0, release = 0;
    const Sim cur = get(r.seq);
    auto need_existing = [&]() -> Status {
      if (!cur.exists) return not_found(where + seq_str(r.seq) + " does not exist");
      return Status::ok();
    };
    switch (r.kind) {
      case PoolRequest::Kind::kCreate:
        if (r.seq < 0)
          return invalid_argument(where + "sequence id must be >= 0, got " + std::to_string(r.seq));
        if (cur.exists) return invalid_argument(where + seq_str(r.seq) + " already exists");
        take = layout_.window_blocks();
        overlay[r.seq] = Sim{true, 0};
        break;
      case PoolRequest::Kind::kAppend: {
        PALU_RETURN_IF_ERROR(need_existing());
        if (r.tokens < 0 || r.tokens > kMaxSequenceTokens - cur.length) {
          return invalid_argument(where + "tokens must be in [0, " +
                                  std::to_string(kMaxSequenceTokens - cur.length) + "], got " +
                                  std::to_string(r.tokens));
        }
        const int64_t len = cur.length + r.tokens;
        take = layout_.blocks_for_tokens(len) - layout_.blocks_for_tokens(cur.length);
        overlay[r.seq] = Sim{true, len};
        break;
      }
      case PoolRequest::Kind::kFork: {
        PALU_RETURN_IF_ERROR(need_existing());
        if (r.dst < 0)
          return invalid_argument(where + "sequence id must be >= 0, got " + std::to_string(r.dst));
        if (get(r.dst).exists) return invalid_argument(where + seq_str(r.dst) + " already exists");
        take = layout_.session_blocks(cur.length);
        overlay[r.dst] = Sim{true, cur.length};
        break;
      }
      case PoolRequest::Kind::kTruncate:
        PALU_RETURN_IF_ERROR(need_existing());
        if (r.tokens < 0 || r.tokens > cur.length) {
          return out_of_range(where + "new length must be in [0, " + std::to_string(cur.length) +
                              "], got " + std::to_string(r.tokens));
        }
        release = layout_.blocks_for_tokens(cur.length) - layout_.blocks_for_tokens(r.tokens);
        overlay[r.seq] = Sim{true, r.tokens};
        break;
      case PoolRequest::Kind::kFree:
        PALU_RETURN_IF_ERROR(need_existing());
        release = layout_.session_blocks(cur.length);
        overlay[r.seq] = Sim{};
        break;
      default:
        return invalid_argument(where + "unknown request kind");
    }
    if (take > free_blocks) {
      return resource_exhausted(
          where + "needs " + std::to_string(take) + " blocks (" + bytes_str((uint64_t)take * bb) +
          ") but " + std::to_string(free_blocks) + " blocks (" +
          bytes_str((uint64_t)free_blocks * bb) +
          ") are free (pool: " + std::to_string(num_blocks_) + " blocks of " + bytes_str(bb) + ")");
    }
    if (budget && budget_used + (uint64_t)take * bb > budget->capacity_bytes()) {
      return resource_exhausted(where + "needs " + std::to_string(take) + " blocks (" +
                                bytes_str((uint64_t)take * bb) + ") but the shared budget has " +
                                bytes_str(budget->capacity_bytes() - budget_used) + " of " +
                                bytes_str(budget->capacity_bytes()) + " free");
    }
    if (budget) budget_used = budget_used + (uint64_t)take * bb - (uint64_t)release * bb;
    free_blocks += release - take;
    p.blocks_taken_ += take;
    p.blocks_released_ += release;
  }
  p.bytes_taken_ = (uint64_t)p.blocks_taken_ * bb;
  p.bytes_released_ = (uint64_t)p.blocks_released_ * bb;
  return p;
}

Status BlockPool::commit(const Plan& plan) {
  if (plan.pool_ != arena_.get())
    return invalid_argument("cache commit: the plan was made by another pool");
  if (plan.version_ != version_) {
    return failed_precondition("cache commit: stale plan (made at pool version " +
                               std::to_string(plan.version_) + ", pool is at version " +
                               std::to_string(version_) + "); plan again");
  }
  SharedBudget* const budget = charge_.budget;
  if (budget && plan.budget_version_ != budget->version()) {
    return failed_precondition("cache commit: stale plan (the shared budget changed since: another pool "
                               "committed); plan again");
  }
  for (const PoolRequest& r : plan.requests_) apply(r);
  ++version_;
  if (budget) {
    const uint64_t taken = plan.bytes_taken_, released = plan.bytes_released_;
    budget->used_ = budget->used_ + taken - released;
    charge_.bytes = charge_.bytes + taken - released;
    ++budget->version_;
  }
  return Status::ok();
}

int32_t BlockPool::take_block(SeqId owner) {
  assert(!free_list_.empty() && "take_block: a validated plan ran out of blocks");
  const int32_t b = free_list_.back();
  free_list_.pop_back();
  owner_[(size_t)b] = owner;
  return b;
}

void BlockPool::release_block(int32_t b) {
  // A pool on a shared budget gives the block's memory back: another pool may need it.
  if (charge_.budget != nullptr) host_discard(block_ptr(b), layout_.block_bytes());
  owner_[(size_t)b] = kNoOwner;
  free_list_.push_back(b);
}

void BlockPool::apply(const PoolRequest& r) {
  const int64_t N = layout_.window_tokens();
  switch (r.kind) {
    case PoolRequest::Kind::kCreate: {
      Sequence q;
      for (int i = 0; i < layout_.window_blocks(); ++i)
        q.window_blocks.push_back(take_block(r.seq));
      seqs_.emplace(r.seq, std::move(q));
      break;
    }
    case PoolRequest::Kind::kAppend: {
      Sequence& q = seqs_.at(r.seq);
      q.length += r.tokens;
      while ((int64_t)q.blocks.size() < layout_.blocks_for_tokens(q.length))
        q.blocks.push_back(take_block(r.seq));
      q.window_begin = std::max(q.window_begin, q.length - N);
      break;
    }
    case PoolRequest::Kind::kFork: {
      Sequence copy;
      const Sequence& src = seqs_.at(r.seq);
      copy.length = src.length;
      copy.window_begin = src.window_begin;
      for (int32_t b : src.blocks) {
        const int32_t nb = take_block(r.dst);
        std::memcpy(block_ptr(nb), block_ptr(b), layout_.block_bytes());
        copy.blocks.push_back(nb);
      }
      for (int32_t b : src.window_blocks) {
        const int32_t nb = take_block(r.dst);
        std::memcpy(block_ptr(nb), block_ptr(b), layout_.block_bytes());
        copy.window_blocks.push_back(nb);
      }
      seqs_.emplace(r.dst, std::move(copy));
      break;
    }
    case PoolRequest::Kind::kTruncate: {
      Sequence& q = seqs_.at(r.seq);
      q.length = r.tokens;
      while ((int64_t)q.blocks.size() > layout_.blocks_for_tokens(q.length)) {
        release_block(q.blocks.back());
        q.blocks.pop_back();
      }
      q.window_begin = std::min(q.window_begin, q.length);
      break;
    }
    case PoolRequest::Kind::kFree: {
      auto it = seqs_.find(r.seq);
      assert(it != seqs_.end());
      for (int32_t b : it->second.blocks) release_block(b);
      for (int32_t b : it->second.window_blocks) release_block(b);
      seqs_.erase(it);
      break;
    }
  }
}

// ---- sequences -------------------------------------------------------------------------------

Result<const BlockPool::Sequence*> BlockPool::find(SeqId s) const {
  auto it = seqs_.find(s);
  if (it == seqs_.end()) return not_found("cache: " + seq_str(s) + " does not exist");
  return &it->second;
}

Status BlockPool::check_pos(const Sequence& q, SeqId s, int64_t pos) const {
  if (pos < 0 || pos >= q.length) {
    return out_of_range("cache: position must be in [0, " + std::to_string(q.length) + ") for " +
                        seq_str(s) + ", got " + std::to_string(pos));
  }
  return Status::ok();
}

Result<int64_t> BlockPool::length(SeqId s) const {
  PALU_ASSIGN_OR_RETURN(const Sequence* q, find(s));
  return q->length;
}

Result<int64_t> BlockPool::window_begin(SeqId s) const {
  PALU_ASSIGN_OR_RETURN(const Sequence* q, find(s));
  return q->window_begin;
}

Result<std::span<const int32_t>> BlockPool::block_table(SeqId s) const {
  PALU_ASSIGN_OR_RETURN(const Sequence* q, find(s));
  return std::span<const int32_t>(q->blocks);
}

std::vector<SeqId> BlockPool::sequences() const {
  std::vector<SeqId> ids;
  ids.reserve(seqs_.size());
  for (const auto& [id, q] : seqs_) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  return ids;
}

// ---- writes ----------------------------------------------------------------------------------

namespace {

Status check_finite(const float* z, int n, int layer, Proj kv, int group) {
  for (int i = 0; i < n; ++i) {
    if (!std::isfinite(z[i])) {
      return invalid_argument("cache write: layer " + std::to_string(layer) +
                              (kv == Proj::kKey ? " K" : " V") + " group " + std::to_string(group) +
                              " value " + std::to_string(i) + " is not finite (" +
                              std::to_string(z[i]) + ")");
    }
  }
  return Status::ok();
}

}  // namespace

void BlockPool::write_group(Sequence& q, int64_t pos, int layer, Proj kv, int group,
                            const float* z) {
  const int64_t bt = layout_.block_tokens();
  const size_t t = (size_t)(pos % bt);
  const int r = layout_.rank(layer, kv, group);
  const size_t row_bytes = layout_.row_bytes(layer, kv, group);
  uint8_t* seg = block_ptr(q.blocks[(size_t)(pos / bt)]) + layout_.segment_offset(layer, kv, group);
  if (storage_is_packed(layout_.storage())) {
    float* scales = reinterpret_cast<float*>(seg);
    float* zeros = scales + bt;
    QuantParams p;
    encode_row(layout_.storage(), z, (size_t)r, seg + 8 * (size_t)bt + t * row_bytes, &p);
    scales[t] = p.scale;
    zeros[t] = p.zero;
  } else {
    encode_row(layout_.storage(), z, (size_t)r, seg + t * row_bytes, nullptr);
  }
  const int64_t N = layout_.window_tokens();
  if (N > 0 && pos >= q.window_begin) {
    const int64_t slot = pos % N;
    const int rpb = layout_.window_rows_per_block();
    uint8_t* row = block_ptr(q.window_blocks[(size_t)(slot / rpb)]) +
                   (size_t)(slot % rpb) * layout_.window_row_bytes();
    uint16_t* w = reinterpret_cast<uint16_t*>(row) + layout_.window_offset(layer, kv, group);
    for (int i = 0; i < r; ++i) w[i] = f32_to_f16(z[i]);
  }
}

Status BlockPool::write_token(SeqId s, int64_t pos, int layer, Proj kv, int group,
                              const float* latent) {
  auto it = seqs_.find(s);
  if (it == seqs_.end()) return not_found("cache write: " + seq_str(s) + " does not exist");
  PALU_RETURN_IF_ERROR(check_pos(it->second, s, pos));
  PALU_RETURN_IF_ERROR(layout_.check_index(layer, kv, group));
  if (latent == nullptr) return invalid_argument("cache write: latent is null");
  PALU_RETURN_IF_ERROR(check_finite(latent, layout_.rank(layer, kv, group), layer, kv, group));
  write_group(it->second, pos, layer, kv, group, latent);
  return Status::ok();
}

Status BlockPool::write_token_row(SeqId s, int64_t pos, int layer, Proj kv, const float* latents) {
  auto it = seqs_.find(s);
  if (it == seqs_.end()) return not_found("cache write: " + seq_str(s) + " does not exist");
  PALU_RETURN_IF_ERROR(check_pos(it->second, s, pos));
  PALU_RETURN_IF_ERROR(layout_.check_index(layer, kv, 0));
  if (latents == nullptr) return invalid_argument("cache write: latents is null");
  const int G = layout_.num_groups(layer, kv);
  // Validate everything before writing anything.
  for (int g = 0, off = 0; g < G; off += layout_.rank(layer, kv, g), ++g) {
    PALU_RETURN_IF_ERROR(check_finite(latents + off, layout_.rank(layer, kv, g), layer, kv, g));
  }
  for (int g = 0, off = 0; g < G; off += layout_.rank(layer, kv, g), ++g) {
    write_group(it->second, pos, layer, kv, g, latents + off);
  }
  return Status::ok();
}

// ---- reads -----------------------------------------------------------------------------------

Status BlockPool::read_token(SeqId s, int64_t pos, int layer, Proj kv, int group,
                             float* out) const {
  PALU_ASSIGN_OR_RETURN(const Sequence* q, find(s));
  PALU_RETURN_IF_ERROR(check_pos(*q, s, pos));
  PALU_RETURN_IF_ERROR(layout_.check_index(layer, kv, group));
  if (out == nullptr) return invalid_argument("cache read: out is null");
  const int64_t bt = layout_.block_tokens();
  PALU_ASSIGN_OR_RETURN(WindowView w, window_view(s, layer, kv, group));
  if (w.contains(pos)) {
    const uint16_t* h = w.row(pos);
    for (int i = 0; i < w.rank; ++i) out[i] = f16_to_f32(h[i]);
    return Status::ok();
  }
  PALU_ASSIGN_OR_RETURN(BlockView v, block_view(s, pos / bt, layer, kv, group));
  v.dequantize_row((int)(pos % bt), out);
  return Status::ok();
}

Result<BlockView> BlockPool::block_view(SeqId s, int64_t block_index, int layer, Proj kv,
                                        int group) const {
  PALU_ASSIGN_OR_RETURN(const Sequence* q, find(s));
  PALU_RETURN_IF_ERROR(layout_.check_index(layer, kv, group));
  if (block_index < 0 || block_index >= (int64_t)q->blocks.size()) {
    return out_of_range("cache: block index must be in [0, " + std::to_string(q->blocks.size()) +
                        ") for " + seq_str(s) + ", got " + std::to_string(block_index));
  }
  const int64_t bt = layout_.block_tokens();
  const uint8_t* seg =
      block_ptr(q->blocks[(size_t)block_index]) + layout_.segment_offset(layer, kv, group);
  BlockView v;
  v.storage = layout_.storage();
  v.rank = layout_.rank(layer, kv, group);
  v.row_bytes = layout_.row_bytes(layer, kv, group);
  v.first_pos = block_index * bt;
  v.tokens = (int)std::min<int64_t>(bt, q->length - v.first_pos);
  if (storage_is_packed(v.storage)) {
    v.scales = reinterpret_cast<const float*>(seg);
    v.zeros = v.scales + bt;
    v.rows = seg + 8 * (size_t)bt;
  } else {
    v.rows = seg;
  }
  return v;
}

Result<SegmentView> BlockPool::segment_view(SeqId s, int layer, Proj kv, int group) const {
  PALU_ASSIGN_OR_RETURN(const Sequence* q, find(s));
  PALU_RETURN_IF_ERROR(layout_.check_index(layer, kv, group));
  const size_t bt = (size_t)layout_.block_tokens();
  const uint8_t* seg0 = arena_.get() + layout_.segment_offset(layer, kv, group);
  SegmentView v;
  v.storage = layout_.storage();
  v.rank = layout_.rank(layer, kv, group);
  v.row_bytes = layout_.row_bytes(layer, kv, group);
  v.block_tokens = layout_.block_tokens();
  v.block_ids = q->blocks.data();
  v.block_bytes = layout_.block_bytes();
  v.length = q->length;
  if (storage_is_packed(v.storage)) {
    v.scales0 = reinterpret_cast<const float*>(seg0);
    v.zeros0 = v.scales0 + bt;
    v.rows0 = seg0 + 8 * bt;
  } else {
    v.rows0 = seg0;
  }
  return v;
}

Result<WindowView> BlockPool::window_view(SeqId s, int layer, Proj kv, int group) const {
  PALU_ASSIGN_OR_RETURN(const Sequence* q, find(s));
  PALU_RETURN_IF_ERROR(layout_.check_index(layer, kv, group));
  WindowView w;
  w.rank = layout_.rank(layer, kv, group);
  w.begin = w.end = q->length;
  if (layout_.window_tokens() > 0) {
    w.begin = q->window_begin;
    w.arena_ = arena_.get();
    w.block_ids_ = q->window_blocks.data();
    w.block_bytes_ = layout_.block_bytes();
    w.window_row_bytes_ = layout_.window_row_bytes();
    w.group_offset_ = layout_.window_offset(layer, kv, group);
    w.window_tokens_ = layout_.window_tokens();
    w.rows_per_block_ = layout_.window_rows_per_block();
  }
  return w;
}

// ---- images ----------------------------------------------------------------------------------

uint64_t layout_hash(const CacheLayout& layout) {
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  const std::string d = layout.describe();
  XXH3_64bits_update(&st, d.data(), d.size());
  auto put = [&](uint64_t v) {
    uint8_t le[8];
    for (int i = 0; i < 8; ++i) le[i] = (uint8_t)(v >> (8 * i));
    XXH3_64bits_update(&st, le, sizeof le);
  };
  put(layout.block_bytes());
  put((uint64_t)layout.block_tokens());
  put((uint64_t)layout.storage());
  put((uint64_t)layout.window_tokens());
  put((uint64_t)layout.window_rows_per_block());
  put((uint64_t)layout.window_blocks());
  put(layout.window_row_bytes());
  put((uint64_t)layout.num_layers());
  for (int l = 0; l < layout.num_layers(); ++l) {
    for (Proj kv : {Proj::kKey, Proj::kValue}) {
      put((uint64_t)layout.num_groups(l, kv));
      for (int g = 0; g < layout.num_groups(l, kv); ++g) {
        put((uint64_t)layout.rank(l, kv, g));
        put(layout.row_bytes(l, kv, g));
        put(layout.segment_offset(l, kv, g));
        put(layout.window_offset(l, kv, g));
      }
    }
  }
  return XXH3_64bits_digest(&st);
}

namespace {

std::string hash_str(uint64_t h) {
  static const char* kHex = "0123456789abcdef";
  std::string s = "0x";
  for (int i = 15; i >= 0; --i) s += kHex[(h >> (4 * i)) & 15];
  return s;
}

}  // namespace

Result<SequenceImage> BlockPool::export_sequence(SeqId s) const {
  PALU_ASSIGN_OR_RETURN(const Sequence* q, find(s));
  const size_t bb = layout_.block_bytes();
  const size_t n = q->blocks.size() + q->window_blocks.size();
  SequenceImage image;
  image.length = q->length;
  image.window_begin = q->window_begin;
  image.layout_hash = layout_hash(layout_);
  try {
    if (host_alloc_should_fail()) throw std::bad_alloc();  // the test seam (backends/base/host_alloc.h)
    image.bytes.resize(n * bb);
  } catch (const std::bad_alloc&) {
    return resource_exhausted("cache export: cannot allocate " + bytes_str((uint64_t)n * bb) +
                              " for the image of " + seq_str(s));
  }
  uint8_t* out = image.bytes.data();
  for (const auto* table : {&q->blocks, &q->window_blocks}) {
    for (int32_t b : *table) {
      std::memcpy(out, block_ptr(b), bb);
      out += bb;
    }
  }
  return image;
}

Status check_sequence_image(const CacheLayout& layout, const SequenceImage& image, int64_t max_length,
                            const std::string& where, const std::string& target) {
  const uint64_t want_hash = layout_hash(layout);
  if (image.layout_hash != want_hash) {
    return invalid_argument(where + "image layout hash " + hash_str(image.layout_hash) + " differs from " + target +
                            "'s " + hash_str(want_hash) + " (" + layout.describe() + ")");
  }
  if (image.length < 0) return data_loss(where + "image length " + std::to_string(image.length) + " is negative");
  if (image.length > max_length) {
    return invalid_argument(where + "image length " + std::to_string(image.length) + " is over " + target +
                            "'s capacity of " + std::to_string(max_length) + " tokens");
  }
  const int64_t N = layout.window_tokens();
  const int64_t lo = N > 0 ? std::max<int64_t>(0, image.length - N) : image.length;
  if (image.window_begin < lo || image.window_begin > image.length) {
    return data_loss(where + "image window_begin must be in [" + std::to_string(lo) + ", " +
                     std::to_string(image.length) + "], got " + std::to_string(image.window_begin));
  }
  const uint64_t want_bytes = layout.session_bytes(image.length);
  if ((uint64_t)image.bytes.size() != want_bytes) {
    return data_loss(where + "image is " + bytes_str(image.bytes.size()) + ", expected " + bytes_str(want_bytes) +
                     " (" + std::to_string(layout.blocks_for_tokens(image.length)) + " token blocks + " +
                     std::to_string(layout.window_blocks()) + " window blocks of " + bytes_str(layout.block_bytes()) +
                     ")");
  }
  return Status::ok();
}

Status BlockPool::import_sequence(SeqId s, const SequenceImage& image) {
  const std::string where = "cache import into " + seq_str(s) + ": ";
  auto it = seqs_.find(s);
  if (it == seqs_.end()) {
    return not_found(where + "the sequence does not exist (plan create + append " +
                     std::to_string(image.length) + " first)");
  }
  Sequence& q = it->second;
  PALU_RETURN_IF_ERROR(check_sequence_image(layout_, image, kMaxSequenceTokens, where, "this pool"));
  if (q.length != image.length) {
    return failed_precondition(where + "the sequence has length " + std::to_string(q.length) +
                               ", the image " + std::to_string(image.length) +
                               " (append to the image's length first)");
  }
  const size_t bb = layout_.block_bytes();
  assert(q.blocks.size() + q.window_blocks.size() == (size_t)layout_.session_blocks(q.length));
  // Everything validated: write.
  const uint8_t* in = image.bytes.data();
  for (const auto* table : {&q.blocks, &q.window_blocks}) {
    for (int32_t b : *table) {
      std::memcpy(block_ptr(b), in, bb);
      in += bb;
    }
  }
  q.window_begin = image.window_begin;
  return Status::ok();
}

// ---- invariants ------------------------------------------------------------------------------

Status BlockPool::check_invariants() const {
  auto fail = [](std::string m) { return internal_error("cache invariant: " + std::move(m)); };
  if (arena_bytes_ != (size_t)num_blocks_ * layout_.block_bytes()) {
    return fail("arena is " + bytes_str(arena_bytes_) + ", expected " +
                std::to_string(num_blocks_) + " x " + bytes_str(layout_.block_bytes()));
  }
  if ((int64_t)owner_.size() != num_blocks_)
    return fail("owner table size differs from the block count");
  std::vector<int> refs((size_t)num_blocks_, 0);
  for (int32_t b : free_list_) {
    if (b < 0 || b >= num_blocks_)
      return fail("free list holds block id " + std::to_string(b) + " out of range");
    if (owner_[(size_t)b] != kNoOwner) {
      return fail("free block " + std::to_string(b) + " is owned by " + seq_str(owner_[(size_t)b]));
    }
    ++refs[(size_t)b];
  }
  const int64_t N = layout_.window_tokens();
  uint64_t formula_bytes = 0;
  for (const auto& [id, q] : seqs_) {
    const std::string who = seq_str(id);
    if (id < 0) return fail(who + " has a negative id");
    if (q.length < 0 || q.length > kMaxSequenceTokens)
      return fail(who + " has length " + std::to_string(q.length));
    if ((int64_t)q.blocks.size() != layout_.blocks_for_tokens(q.length)) {
      return fail(who + " of length " + std::to_string(q.length) + " holds " +
                  std::to_string(q.blocks.size()) + " token blocks, expected " +
                  std::to_string(layout_.blocks_for_tokens(q.length)));
    }
    if ((int)q.window_blocks.size() != layout_.window_blocks()) {
      return fail(who + " holds " + std::to_string(q.window_blocks.size()) +
                  " window blocks, expected " + std::to_string(layout_.window_blocks()));
    }
    if (q.window_begin > q.length || q.window_begin < std::max<int64_t>(0, q.length - N)) {
      return fail(who + " window_begin " + std::to_string(q.window_begin) + " outside [" +
                  std::to_string(std::max<int64_t>(0, q.length - N)) + ", " +
                  std::to_string(q.length) + "]");
    }
    for (const auto* table : {&q.blocks, &q.window_blocks}) {
      for (int32_t b : *table) {
        if (b < 0 || b >= num_blocks_)
          return fail(who + " references block id " + std::to_string(b) + " out of range");
        if (owner_[(size_t)b] != id) {
          return fail(
              who + " references block " + std::to_string(b) + " owned by " +
              (owner_[(size_t)b] == kNoOwner ? std::string("nobody") : seq_str(owner_[(size_t)b])));
        }
        ++refs[(size_t)b];
      }
    }
    formula_bytes += layout_.session_bytes(q.length);
  }
  for (int64_t b = 0; b < num_blocks_; ++b) {
    if (refs[(size_t)b] != 1) {
      return fail("block " + std::to_string(b) + " is referenced " +
                  std::to_string(refs[(size_t)b]) +
                  " times (free list + tables), expected exactly 1" +
                  (refs[(size_t)b] == 0 ? " (leak)" : ""));
    }
  }
  const PoolStats st = stats();
  if (st.used_bytes != formula_bytes) {
    return fail("used bytes " + std::to_string(st.used_bytes) + " differ from the formula sum " +
                std::to_string(formula_bytes));
  }
  if (charge_.budget != nullptr) {
    if (charge_.bytes != st.used_bytes) {
      return fail("the shared budget holds " + std::to_string(charge_.bytes) + " bytes for this pool, which uses " +
                  std::to_string(st.used_bytes));
    }
    if (charge_.budget->used_bytes() > charge_.budget->capacity_bytes()) {
      return fail("the shared budget has " + std::to_string(charge_.budget->used_bytes()) + " bytes in use, over its " +
                  std::to_string(charge_.budget->capacity_bytes()));
    }
  } else if (st.used_bytes + st.free_bytes != st.capacity_bytes || st.used_bytes > arena_bytes_) {
    return fail("byte totals inconsistent: used " + std::to_string(st.used_bytes) + " + free " +
                std::to_string(st.free_bytes) + " != capacity " +
                std::to_string(st.capacity_bytes));
  }
  return Status::ok();
}

}  // namespace palu::cache
