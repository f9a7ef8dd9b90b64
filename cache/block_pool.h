// BlockPool: a fixed-capacity pool of token blocks holding the KV cache (latents, or full K/V
// rows) of many sequences, with per-sequence block tables and a plan/commit API.
//
// Capacity: the pool owns one zero-initialised arena of num_blocks · block_bytes bytes,
// num_blocks = floor(budget_bytes / block_bytes) (layout formula in cache_layout.h). It never
// allocates after create. Or, created with a SharedBudget, it reserves address space for the
// whole budget and takes memory only for the blocks in use (see SharedBudget).
//
// Plan, then commit (the scheduler's contract):
//   Result<Plan> plan(requests)  validates a list of requests applied in order (create, append,
//                                fork, truncate, free) and counts the blocks they take and
//                                release. It has NO side effect. Does-not-fit is a value:
//                                RESOURCE_EXHAUSTED naming the bytes needed and free.
//   Status commit(const Plan&)   applies the plan; it cannot fail for a fresh plan. A plan made
//                                before any other commit (a "stale" plan) is refused with
//                                FAILED_PRECONDITION and changes nothing; a plan of another
//                                pool with INVALID_ARGUMENT.
//   Requests in one plan see the effect of the earlier ones (free S then create T reuses S's
//   blocks), and the plan fails if the free block count would drop below 0 at any step.
//
// Sequences: ids are caller-chosen, ≥ 0. A sequence has a length T (positions 0..T−1; a
// token's RoPE position is its index) and a block table of ceil(T / block_tokens) blocks;
// position p lives in block p / block_tokens, row p mod block_tokens. `append n` makes
// positions [T, T+n) exist (their rows are unspecified until written); `truncate n` forgets
// positions ≥ n and releases blocks no longer needed; `fork S → S'` COPIES S (all blocks and
// the window: no sharing, so every block has exactly one owner; copy-on-write sharing is a
// later optimisation); `free S` releases everything.
//
// Window (B-bit storage with window_tokens N > 0): every written row is quantized into its
// block at once (so the aged-out value is exactly fake_quantize of the written float values);
// rows at positions ≥ window_begin(S) are ALSO kept in f16 in the sequence's window ring (slot
// p mod N, in window blocks taken at create). Readers use the f16 copy for p ≥ window_begin and
// the B-bit row otherwise. Append sets window_begin = max(window_begin, T_new − N): a token
// ages out (switches to B-bit precision) exactly when the length reaches p + N + 1. Truncate
// sets window_begin = min(window_begin, n): tokens that aged out stay at B bits (their f16
// values are gone), so after a truncation the window holds fewer than N tokens until it refills.
//
// Images (for the disk tier and session files): export_sequence copies a sequence's blocks
// out as bytes (SequenceImage); import_sequence writes such bytes into a sequence the caller
// has already sized (plan + commit create(s), append(s, image.length)). The bytes are exactly
// what the arena holds, so reads after an import equal reads before the export, bit for bit.
// An image is bound to its layout by layout_hash(layout) (see below); import refuses another
// layout, a wrong byte size or window bounds before writing anything.
//
// Views (BlockView / WindowView) point into the arena; they are invalidated by commit and
// their contents by write_token. Thread-safety: one owner thread mutates (plan is const and
// may run concurrently with readers; commit / write_* need exclusive access). Const reads
// (views, read_token, check_invariants) may run from many threads while nothing mutates.
// Errors: values; unknown sequence → NOT_FOUND, position ≥ length → OUT_OF_RANGE, bad
// layer / kv / group / negative counts / non-finite latents → INVALID_ARGUMENT. assert() only
// checks the pool's own invariants.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "backends/base/status.h"
#include "cache/cache_layout.h"
#include "cache/latent_packing.h"

namespace palu::cache {

using SeqId = int64_t;

struct PoolRequest {
  enum class Kind : uint8_t { kCreate, kAppend, kFork, kTruncate, kFree };
  Kind kind = Kind::kCreate;
  SeqId seq = 0;       // the sequence (for fork: the source)
  SeqId dst = 0;       // fork: the new sequence
  int64_t tokens = 0;  // append: how many tokens; truncate: the new length

  static PoolRequest create(SeqId s) { return {Kind::kCreate, s, 0, 0}; }
  static PoolRequest append(SeqId s, int64_t n) { return {Kind::kAppend, s, 0, n}; }
  static PoolRequest fork(SeqId src, SeqId dst) { return {Kind::kFork, src, dst, 0}; }
  static PoolRequest truncate(SeqId s, int64_t n) { return {Kind::kTruncate, s, 0, n}; }
  static PoolRequest free(SeqId s) { return {Kind::kFree, s, 0, 0}; }
};

// "create 3", "append 3 +16", "fork 3 -> 4", "truncate 3 to 10", "free 3".
std::string describe(const PoolRequest& r);

// Identity of a layout's byte format: XXH3-64 over, in order, layout.describe(), then as
// little-endian uint64 values: block_bytes, block_tokens, storage, window_tokens,
// window_rows_per_block, window_blocks, window_row_bytes, the number of layers, and for every
// segment (l, kv, g) in block order: rank, row_bytes, segment_offset, window_offset. Two
// layouts with the same hash store every token at the same bytes (describe() alone is not
// enough: it shows layer 0's ranks only). Stable across runs and machines (it is written
// into session files); changing this recipe changes every saved session's binding.
uint64_t layout_hash(const CacheLayout& layout);

// One sequence's cache state as bytes.
//   bytes = its token blocks in position order (ceil(length / block_tokens) blocks), then its
//           window blocks (layout.window_blocks() of them, the f16 ring), each exactly
//           layout.block_bytes() bytes copied from the arena (rows past `length` in the last
//           block and ring slots before window_begin are copied as they are).
struct SequenceImage {
  int64_t length = 0;        // tokens (positions 0..length−1)
  int64_t window_begin = 0;  // first position read from the f16 window (= length: no window)
  uint64_t layout_hash = 0;  // layout_hash() of the layout the bytes were exported from
  std::vector<uint8_t> bytes;
};

// The checks every importer of an image makes before writing anything (BlockPool,
// the device sequences through contiguous_from_image, the tools' KvSession): another layout's
// image (INVALID_ARGUMENT naming both hashes and `target`, e.g. "this pool"), a length above
// `max_length` (INVALID_ARGUMENT: the caller's capacity), and, as DATA_LOSS naming the expected
// and found values, a negative length, a window_begin outside
// [max(0, length − window_tokens), length] (= length without a window), or a byte size other
// than session_blocks(length) · block_bytes. `where` starts every message.
Status check_sequence_image(const CacheLayout& layout, const SequenceImage& image, int64_t max_length,
                            const std::string& where, const std::string& target);

// A byte budget several pools draw from (palud's host tier: the pools of every model and every
// cache setting). A pool created with one reserves address space for the whole budget (pages are
// mapped when first written and given back to the system when their block is released), and its
// plans also check the budget: the blocks a pool's sequences hold count against it, so the sum
// over its pools never exceeds capacity_bytes. Any commit of any of its pools makes the other
// pools' earlier plans stale (the budget has a version, like a pool). Not thread-safe (one owner
// thread, like the pools); it must outlive them.
class SharedBudget {
 public:
  explicit SharedBudget(uint64_t capacity_bytes) : capacity_(capacity_bytes) {}
  SharedBudget(const SharedBudget&) = delete;
  SharedBudget& operator=(const SharedBudget&) = delete;
  uint64_t capacity_bytes() const { return capacity_; }
  uint64_t used_bytes() const { return used_; }
  uint64_t free_bytes() const { return capacity_ - used_; }
  uint64_t version() const { return version_; }

 private:
  friend class BlockPool;
  uint64_t capacity_ = 0, used_ = 0, version_ = 0;
};

// The validated effect of a list of requests. Opaque: only BlockPool makes one.
class Plan {
 public:
  const std::vector<PoolRequest>& requests() const { return requests_; }
  int64_t blocks_taken() const { return blocks_taken_; }        // popped from the free list
  int64_t blocks_released() const { return blocks_released_; }  // returned to it
  uint64_t bytes_taken() const { return bytes_taken_; }
  uint64_t bytes_released() const { return bytes_released_; }

 private:
  friend class BlockPool;
  std::vector<PoolRequest> requests_;
  const void* pool_ = nullptr;  // identity of the pool (its arena)
  uint64_t version_ = 0;        // pool version the plan was made against
  uint64_t budget_version_ = 0; // the shared budget's version then (pools with one)
  int64_t blocks_taken_ = 0, blocks_released_ = 0;
  uint64_t bytes_taken_ = 0, bytes_released_ = 0;
};

// With a SharedBudget: num_blocks / capacity_bytes are the pool's address space (the whole
// budget), free_blocks / free_bytes what the budget still allows this pool to take.
struct PoolStats {
  int64_t num_blocks = 0;
  int64_t free_blocks = 0;
  int64_t used_blocks = 0;
  size_t block_bytes = 0;
  uint64_t capacity_bytes = 0;  // num_blocks · block_bytes
  uint64_t used_bytes = 0;      // used_blocks · block_bytes = Σ session_bytes(T_s)
  uint64_t free_bytes = 0;
  int64_t num_sequences = 0;
  int64_t tokens = 0;  // Σ T_s
};

// Rows of one (block, layer, kv, group) for kernels. Row t is position first_pos + t;
// rows [0, tokens) are valid positions of the sequence.
struct BlockView {
  CacheStorage storage = CacheStorage::kF16;
  int rank = 0;                   // values per row
  size_t row_bytes = 0;           // stride between rows of `rows`
  const uint8_t* rows = nullptr;  // [block_tokens][row_bytes]
  const float* scales = nullptr;  // [block_tokens], B-bit storage only (else null)
  const float* zeros = nullptr;   // [block_tokens], B-bit storage only (else null)
  int64_t first_pos = 0;
  int tokens = 0;

  QuantParams params(int t) const {
    return scales ? QuantParams{scales[t], zeros[t]} : QuantParams{};
  }
  // Decodes row t (0 ≤ t < tokens) into out[rank] (the B-bit / stored value, not the window's).
  void dequantize_row(int t, float* out) const {
    decode_row(storage, rows + (size_t)t * row_bytes, (size_t)rank, params(t), out);
  }
};

// All token blocks of one (sequence, layer, kv, group) at once, in the paged form kernels
// take: position p is in block block_ids[p / block_tokens], row p mod block_tokens; the
// segment of the block with id b starts at b · block_bytes from the arrays below (which name
// the block with id 0: rows0 for codes / values, scales0 / zeros0 for B-bit parameters).
struct SegmentView {
  CacheStorage storage = CacheStorage::kF16;
  int rank = 0;
  size_t row_bytes = 0;  // stride between rows inside a block
  int block_tokens = 0;
  const int32_t* block_ids = nullptr;  // [ceil(length / block_tokens)]
  size_t block_bytes = 0;
  const uint8_t* rows0 = nullptr;
  const float* scales0 = nullptr;  // B-bit storage only (else null)
  const float* zeros0 = nullptr;   // B-bit storage only (else null)
  int64_t length = 0;              // valid positions [0, length)
};

// The f16 window rows of one (sequence, layer, kv, group): positions [begin, end).
struct WindowView {
  int64_t begin = 0, end = 0;  // empty when begin == end (always so without a window)
  int rank = 0;

  bool contains(int64_t pos) const { return pos >= begin && pos < end; }
  // f16[rank] of position pos (requires contains(pos)).
  const uint16_t* row(int64_t pos) const {
    const int64_t slot = pos % window_tokens_;
    const int32_t block = block_ids_[slot / rows_per_block_];
    const uint8_t* p = arena_ + (size_t)block * block_bytes_ +
                       (size_t)(slot % rows_per_block_) * window_row_bytes_;
    return reinterpret_cast<const uint16_t*>(p) + group_offset_;
  }

 private:
  friend class BlockPool;
  const uint8_t* arena_ = nullptr;
  const int32_t* block_ids_ = nullptr;
  size_t block_bytes_ = 0, window_row_bytes_ = 0, group_offset_ = 0;
  int window_tokens_ = 1, rows_per_block_ = 1;
};

class BlockPool {
 public:
  static constexpr int64_t kMaxSequenceTokens = int64_t{1} << 40;

  // num_blocks = floor(budget_bytes / layout.block_bytes()); fails with INVALID_ARGUMENT if
  // that is 0 or above 2^31 − 1, RESOURCE_EXHAUSTED if the arena cannot be allocated.
  static Result<BlockPool> create(CacheLayout layout, uint64_t budget_bytes);
  // A pool drawing from `budget` (see SharedBudget): address space for
  // floor(capacity / block_bytes) blocks, memory only for the blocks in use.
  static Result<BlockPool> create(CacheLayout layout, SharedBudget* budget);

  BlockPool(BlockPool&&) = default;
  BlockPool& operator=(BlockPool&&) = default;

  const CacheLayout& layout() const { return layout_; }
  PoolStats stats() const;
  uint64_t version() const { return version_; }  // bumped by every commit

  // ---- plan / commit ----
  Result<Plan> plan(std::span<const PoolRequest> requests) const;
  Result<Plan> plan(const PoolRequest& request) const {
    return plan(std::span<const PoolRequest>(&request, 1));
  }
  Status commit(const Plan& plan);

  // ---- sequences ----
  bool has_sequence(SeqId s) const { return seqs_.count(s) != 0; }
  Result<int64_t> length(SeqId s) const;
  // First position held in the f16 window (= length when there is no window).
  Result<int64_t> window_begin(SeqId s) const;
  // Token block ids of s, in position order (not the window blocks).
  Result<std::span<const int32_t>> block_table(SeqId s) const;
  std::vector<SeqId> sequences() const;  // sorted

  // ---- writes (position must be < length; latents are rank(layer, kv, group) floats) ----
  Status write_token(SeqId s, int64_t pos, int layer, Proj kv, int group, const float* latent);
  // All groups of (layer, kv) at once: latents[total_rank(layer, kv)], groups concatenated.
  Status write_token_row(SeqId s, int64_t pos, int layer, Proj kv, const float* latents);

  // ---- reads ----
  // The value kernels see: the f16 window copy when pos ≥ window_begin, else the stored row.
  Status read_token(SeqId s, int64_t pos, int layer, Proj kv, int group, float* out) const;
  // Block `block_index` (0 ≤ i < ceil(T / block_tokens)) of s for (layer, kv, group).
  Result<BlockView> block_view(SeqId s, int64_t block_index, int layer, Proj kv, int group) const;
  Result<WindowView> window_view(SeqId s, int layer, Proj kv, int group) const;
  // Every block of s for (layer, kv, group) (invalidated like the views above).
  Result<SegmentView> segment_view(SeqId s, int layer, Proj kv, int group) const;

  // ---- images ----
  // s's blocks as bytes (SequenceImage above). NOT_FOUND for an unknown sequence;
  // RESOURCE_EXHAUSTED when the copy cannot be allocated.
  Result<SequenceImage> export_sequence(SeqId s) const;
  // Writes `image` into s, which must exist with length == image.length (NOT_FOUND /
  // FAILED_PRECONDITION otherwise). Refused before anything is written: another layout's
  // image (INVALID_ARGUMENT naming both hashes), a byte size other than
  // session_blocks(length) · block_bytes, a negative length, or a window_begin outside
  // [max(0, length − window_tokens), length] (= length without a window) (DATA_LOSS naming
  // the expected and found values). On success the token blocks, the window ring and
  // window_begin equal the exported sequence's: every read returns what it returned there.
  // Invalidates the contents of views of s (not the views themselves: no block moves).
  Status import_sequence(SeqId s, const SequenceImage& image);

  // Every block free xor owned by exactly one sequence and referenced exactly once in its
  // tables; table sizes match lengths; byte totals match the layout formula; window bounds.
  // INTERNAL naming the first violation.
  Status check_invariants() const;

  // The arena (for tests that check "byte-for-byte unchanged", and for tier copies).
  std::span<const uint8_t> raw_storage() const { return {arena_.get(), arena_bytes_}; }

 private:
  struct Sequence {
    int64_t length = 0;
    int64_t window_begin = 0;
    std::vector<int32_t> blocks;         // token blocks
    std::vector<int32_t> window_blocks;  // f16 ring (layout.window_blocks() of them)
  };
  struct FreeDeleter {
    size_t reserved_bytes;  // > 0: a host_reserve mapping of that size, else calloc memory
    void operator()(uint8_t* p) const;
  };
  // The bytes this pool's blocks hold in a SharedBudget, given back when the pool goes (moves
  // carry the charge with them).
  struct BudgetCharge {
    SharedBudget* budget = nullptr;
    uint64_t bytes = 0;
    BudgetCharge() = default;
    BudgetCharge(BudgetCharge&& o) noexcept : budget(o.budget), bytes(o.bytes) { o.budget = nullptr; }
    BudgetCharge& operator=(BudgetCharge&& o) noexcept {
      if (this != &o) {
        release();
        budget = o.budget;
        bytes = o.bytes;
        o.budget = nullptr;
      }
      return *this;
    }
    ~BudgetCharge() { release(); }
    void release() {
      if (budget != nullptr) BlockPool::uncharge(budget, bytes);
      budget = nullptr;
      bytes = 0;
    }
  };
  static constexpr SeqId kNoOwner = -1;
  static void uncharge(SharedBudget* b, uint64_t bytes) {
    b->used_ -= bytes;
    ++b->version_;
  }

  BlockPool() = default;
  Result<const Sequence*> find(SeqId s) const;
  Status check_pos(const Sequence& q, SeqId s, int64_t pos) const;
  uint8_t* block_ptr(int32_t b) { return arena_.get() + (size_t)b * layout_.block_bytes(); }
  const uint8_t* block_ptr(int32_t b) const {
    return arena_.get() + (size_t)b * layout_.block_bytes();
  }
  int32_t take_block(SeqId owner);
  void release_block(int32_t b);
  void apply(const PoolRequest& r);
  // Writes one validated group row.
  void write_group(Sequence& q, int64_t pos, int layer, Proj kv, int group, const float* z);

  CacheLayout layout_;
  std::unique_ptr<uint8_t, FreeDeleter> arena_;
  size_t arena_bytes_ = 0;
  int64_t num_blocks_ = 0;
  std::vector<int32_t> free_list_;  // stack; back() is taken next
  std::vector<SeqId> owner_;        // [num_blocks]: owning sequence or kNoOwner
  std::unordered_map<SeqId, Sequence> seqs_;
  uint64_t version_ = 0;
  BudgetCharge charge_;  // budget == nullptr: the pool's own arena is its budget
};

}  // namespace palu::cache
