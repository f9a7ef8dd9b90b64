#include "cache/cache_layout.h"

#include <algorithm>
#include <string>

namespace palu::cache {
namespace {

std::string seg_name(int layer, int kv, int group) {
  return "layer " + std::to_string(layer) + (kv == 0 ? " K" : " V") + " group " +
         std::to_string(group);
}

}  // namespace

CacheLayoutSpec full_layout_spec(int num_layers, int kv_width, CacheStorage storage,
                                 int block_tokens) {
  CacheLayoutSpec s;
  s.ranks.assign(
      num_layers < 0 ? 0 : (size_t)num_layers,
      std::array<std::vector<int>, 2>{std::vector<int>{kv_width}, std::vector<int>{kv_width}});
  s.full = true;
  s.block_tokens = block_tokens;
  s.storage = storage;
  return s;
}

CacheLayoutSpec uniform_latent_spec(int num_layers, const std::vector<int>& k_ranks,
                                    const std::vector<int>& v_ranks, CacheStorage storage,
                                    int block_tokens, int window_tokens) {
  CacheLayoutSpec s;
  s.ranks.assign(num_layers < 0 ? 0 : (size_t)num_layers,
                 std::array<std::vector<int>, 2>{k_ranks, v_ranks});
  s.block_tokens = block_tokens;
  s.storage = storage;
  s.window_tokens = window_tokens;
  return s;
}

Result<CacheLayout> CacheLayout::create(const CacheLayoutSpec& spec) {
  const int L = (int)std::min<size_t>(spec.ranks.size(), (size_t)kMaxLayers + 1);
  if (L < 1 || L > kMaxLayers) {
    return invalid_argument("cache layout: number of layers must be in [1, " +
                            std::to_string(kMaxLayers) + "], got " +
                            std::to_string(spec.ranks.size()));
  }
  if (spec.block_tokens < 1 || spec.block_tokens > kMaxBlockTokens) {
    return invalid_argument("cache layout: block_tokens must be in [1, " +
                            std::to_string(kMaxBlockTokens) + "], got " +
                            std::to_string(spec.block_tokens));
  }
  const int bits = storage_bits(spec.storage);
  if (storage_name(spec.storage)[0] == '?') {
    return invalid_argument("cache layout: unknown storage type " +
                            std::to_string((int)spec.storage));
  }
  if (spec.window_tokens < 0 || spec.window_tokens > kMaxWindowTokens) {
    return invalid_argument("cache layout: window_tokens must be in [0, " +
                            std::to_string(kMaxWindowTokens) + "], got " +
                            std::to_string(spec.window_tokens));
  }
  if (spec.window_tokens > 0 && bits == 0) {
    return invalid_argument(
        std::string("cache layout: an f16 window needs B-bit storage (q2/q3/q4/q8), got ") +
        storage_name(spec.storage) + " with window_tokens " + std::to_string(spec.window_tokens));
  }

  CacheLayout out;
  out.spec_ = spec;
  const size_t bt = (size_t)spec.block_tokens;
  const size_t param = storage_param_bytes(spec.storage);
  size_t offset = 0, window_offset = 0;
  out.seg_begin_.resize(2 * (size_t)L);
  out.total_rank_.resize(2 * (size_t)L);
  for (int l = 0; l < L; ++l) {
    for (int kv = 0; kv < 2; ++kv) {
      const std::vector<int>& ranks = spec.ranks[l][kv];
      if (ranks.empty() || ranks.size() > (size_t)kMaxGroups) {
        return invalid_argument("cache layout: layer " + std::to_string(l) +
                                (kv == 0 ? " K" : " V") + " must have 1.." +
                                std::to_string(kMaxGroups) + " groups, got " +
                                std::to_string(ranks.size()));
      }
      out.seg_begin_[2 * l + kv] = out.segments_.size();
      int64_t total = 0;
      for (size_t g = 0; g < ranks.size(); ++g) {
        const int r = ranks[g];
        if (r < 1 || r > kMaxRank) {
          return invalid_argument("cache layout: " + seg_name(l, kv, (int)g) +
                                  " rank must be in [1, " + std::to_string(kMaxRank) + "], got " +
                                  std::to_string(r));
        }
        Segment s;
        s.row_bytes = storage_row_bytes(spec.storage, (size_t)r);
        s.offset = offset;
        s.window_offset = window_offset;
        out.segments_.push_back(s);
        out.token_bytes_ += s.row_bytes + param;
        offset += (bt * (s.row_bytes + param) + 3) / 4 * 4;
        window_offset += (size_t)r;
        total += r;
      }
      out.total_rank_[2 * l + kv] = (int)std::min<int64_t>(total, INT32_MAX);
      if (total > INT32_MAX) {
        return invalid_argument("cache layout: layer " + std::to_string(l) +
                                " total rank overflows: " + std::to_string(total));
      }
    }
  }
  // Bounds above keep offset ≤ 4096·2·4096·4096·(4·2^20+8): fits in 64 bits, but a block must
  // stay addressable in practice.
  if (offset > ((size_t)1 << 40)) {
    return invalid_argument("cache layout: block_bytes " + std::to_string(offset) +
                            " exceeds 2^40");
  }
  out.block_bytes_ = offset;
  out.window_row_bytes_ = 2 * window_offset;
  if (spec.window_tokens > 0) {
    const size_t rpb = out.block_bytes_ / out.window_row_bytes_;
    if (rpb < 1) {
      return invalid_argument("cache layout: one f16 window row (" +
                              std::to_string(out.window_row_bytes_) +
                              " bytes) does not fit in a block (" +
                              std::to_string(out.block_bytes_) + " bytes); use more block_tokens");
    }
    out.window_rows_per_block_ = (int)std::min<size_t>(rpb, (size_t)spec.window_tokens);
    out.window_blocks_ =
        (spec.window_tokens + out.window_rows_per_block_ - 1) / out.window_rows_per_block_;
  }
  return out;
}

Status CacheLayout::check_index(int layer, Proj kv, int group) const {
  if (layer < 0 || layer >= num_layers()) {
    return invalid_argument("cache: layer must be in [0, " + std::to_string(num_layers()) +
                            "), got " + std::to_string(layer));
  }
  if ((int)kv != 0 && (int)kv != 1) {
    return invalid_argument("cache: kv must be K (0) or V (1), got " + std::to_string((int)kv));
  }
  const int G = num_groups(layer, kv);
  if (group < 0 || group >= G) {
    return invalid_argument("cache: layer " + std::to_string(layer) + ((int)kv == 0 ? " K" : " V") +
                            " group must be in [0, " + std::to_string(G) + "), got " +
                            std::to_string(group));
  }
  return Status::ok();
}

uint64_t CacheLayout::session_payload_bytes(int64_t tokens) const {
  const int64_t window = std::min<int64_t>(tokens, spec_.window_tokens);
  return (uint64_t)tokens * token_bytes_ + (uint64_t)window * window_row_bytes();
}

std::string CacheLayout::describe() const {
  std::string s = std::string(spec_.full ? "full " : "latent ") + storage_name(spec_.storage) +
                  " layers=" + std::to_string(num_layers());
  // Ranks of layer 0 (and a note when layers differ).
  bool uniform = true;
  for (int l = 1; l < num_layers(); ++l) uniform = uniform && spec_.ranks[l] == spec_.ranks[0];
  for (int kv = 0; kv < 2; ++kv) {
    s += kv == 0 ? " K{" : " V{";
    for (size_t g = 0; g < spec_.ranks[0][kv].size(); ++g) {
      if (g) s += ',';
      s += std::to_string(spec_.ranks[0][kv][g]);
    }
    s += "}";
  }
  if (!uniform) s += " (layer 0; ranks vary by layer)";
  s += " block=" + std::to_string(spec_.block_tokens) +
       "tok token_bytes=" + std::to_string(token_bytes_) +
       " block_bytes=" + std::to_string(block_bytes_);
  if (spec_.window_tokens > 0) {
    s += " window=" + std::to_string(spec_.window_tokens) + "tok(" +
         std::to_string(window_blocks_) + " blocks)";
  }
  return s;
}

}  // namespace palu::cache
