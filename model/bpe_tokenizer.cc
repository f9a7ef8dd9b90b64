// Byte-level BPE tokenizer: PCRE2 pre-tokenizer, rank-ordered pair merges, and the readers
// of Meta's tiktoken files and Hugging Face tokenizer.json.
#include "model/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

namespace palu::model {
namespace {

using json = nlohmann::json;

// Upper bound on vocabulary ids read from files: keeps a corrupt id from sizing a huge table.
constexpr int64_t kMaxVocabIds = int64_t{1} << 24;
constexpr uint32_t kNoRank = UINT32_MAX;

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer patterns.
//
// \s is spelled out as Unicode White_Space (what tiktoken's Rust regex and Hugging Face's
// Oniguruma use): PCRE2's UCP \s also matches U+180E, which is not White_Space since Unicode 6.3.
#define PALU_WS                                            \
  "\\t-\\r\\x20\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}" \
  "\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
constexpr const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^" PALU_WS
    "\\p{L}\\p{N}]+[\\r\\n]*|[" PALU_WS "]*[\\r\\n]+|[" PALU_WS "]+(?![^" PALU_WS "])|[" PALU_WS
    "]+";
constexpr const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^" PALU_WS
    "\\p{L}\\p{N}]+[\\r\\n]*|[" PALU_WS "]*[\\r\\n]+|[" PALU_WS "]+(?![^" PALU_WS "])|[" PALU_WS
    "]+";
constexpr const char* kGpt2Regex = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" PALU_WS
                                   "\\p{L}\\p{N}]+|[" PALU_WS "]+(?![^" PALU_WS "])|[" PALU_WS "]+";
#undef PALU_WS

// The same patterns as they are written in tokenizer.json files (mapped to the ones above).
constexpr const char* kLlama3RegexHf =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kQwen2RegexHf =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr const char* kGpt2RegexHf =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// A compiled split regex (JIT when available). Matching allocates its own match data, so one
// Regex serves concurrent callers.
class Regex {
 public:
  static Result<std::unique_ptr<Regex>> compile(const std::string& pattern,
                                                std::string_view origin) {
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    pcre2_code* code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                      PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &err_offset, nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof(msg));
      return unimplemented(std::string(origin) +
                           ": pre-tokenizer regex does not compile with PCRE2 (" +
                           reinterpret_cast<const char*>(msg) + " at offset " +
                           std::to_string(err_offset) + "): " + pattern);
    }
    auto r = std::unique_ptr<Regex>(new Regex(code));
    r->jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    return r;
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Calls piece(view) for consecutive pieces that cover `text` exactly: the regex matches, and
  // the runs between them that nothing matched (bytes that are not valid UTF-8).
  template <typename F>
  Status split(std::string_view text, F&& piece) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> md(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    if (!md) return resource_exhausted("pre-tokenizer: cannot allocate PCRE2 match data");
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    const size_t n = text.size();
    size_t pos = 0;  // where the next search starts
    size_t gap = 0;  // first byte not yet handed out
    while (pos < n) {
      const int rc = jit_ ? pcre2_jit_match(code_, subject, n, pos, 0, md.get(), nullptr)
                          : pcre2_match(code_, subject, n, pos, 0, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {  // e.g. a match or JIT stack limit hit by a custom pattern
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof(msg));
        return resource_exhausted("pre-tokenizer: PCRE2 match failed at byte " +
                                  std::to_string(pos) + ": " + reinterpret_cast<const char*>(msg));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const size_t s = ov[0], e = ov[1];
      if (e <= s) {  // empty match (only custom patterns can): skip a character; it joins the gap
        pos = s + 1;
        while (pos < n && (text[pos] & 0xC0) == 0x80) ++pos;
        continue;
      }
      if (s > gap) piece(text.substr(gap, s - gap));
      piece(text.substr(s, e - s));
      pos = gap = e;
    }
    if (gap < n) piece(text.substr(gap));
    return Status::ok();
  }

 private:
  explicit Regex(pcre2_code* code) : code_(code) {}
  pcre2_code* code_;
  bool jit_ = false;
};

// ---------------------------------------------------------------------------------------------
// GPT-2's byte ↔ unicode map: printable bytes stand for themselves, the other 68 bytes for
// U+0100.. in byte order (space → U+0120 "Ġ", newline → U+010A "Ċ").
struct ByteLevelTables {
  std::array<uint16_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // −1 for codepoints outside the alphabet
  ByteLevelTables() {
    cp_to_byte.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      byte_to_cp[b] = (uint16_t)(printable ? b : next++);
      cp_to_byte[byte_to_cp[b]] = (int16_t)b;
    }
  }
};
const ByteLevelTables& byte_level() {
  static const ByteLevelTables t;
  return t;
}

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back((char)cp);
  } else if (cp < 0x800) {
    out->push_back((char)(0xC0 | (cp >> 6)));
    out->push_back((char)(0x80 | (cp & 0x3F)));
  } else {
    out->push_back((char)(0xE0 | (cp >> 12)));
    out->push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back((char)(0x80 | (cp & 0x3F)));
  }
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) append_utf8(byte_level().byte_to_cp[c], &out);
  return out;
}

// Raw bytes of a byte-level token string; nullopt when it has a character outside the
// alphabet (such tokens are then taken as raw text, as Hugging Face's ByteLevel decoder does).
std::optional<std::string> byte_level_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = (unsigned char)s[i];
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size() && ((unsigned char)s[i + 1] & 0xC0) == 0x80) {
      cp = ((c & 0x1Fu) << 6) | ((unsigned char)s[i + 1] & 0x3Fu);
      i += 2;
    } else {
      return std::nullopt;  // every byte-level character is below U+0800
    }
    if (cp >= byte_level().cp_to_byte.size() || byte_level().cp_to_byte[cp] < 0)
      return std::nullopt;
    out.push_back((char)byte_level().cp_to_byte[cp]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Strict base64 (RFC 4648, with padding), as in Meta's tokenizer.model.
std::optional<std::string> base64_decode(std::string_view s) {
  if (s.empty() || s.size() % 4 != 0) return std::nullopt;
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(s.size() / 4 * 3);
  for (size_t i = 0; i < s.size(); i += 4) {
    const bool last = i + 4 == s.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s[i + k];
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
      } else {
        if (pad > 0) return std::nullopt;  // data after padding
        v[k] = value(c);
        if (v[k] < 0) return std::nullopt;
      }
    }
    const uint32_t w = (uint32_t)(v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3]);
    out.push_back((char)(w >> 16));
    if (pad < 2) out.push_back((char)(w >> 8));
    if (pad < 1) out.push_back((char)w);
  }
  return out;
}

std::string quoted_excerpt(std::string_view s) {
  constexpr size_t kMax = 40;
  std::string out = "\"";
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7F || c == '"' || c == '\\') {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out.push_back((char)c);
    }
  }
  if (s.size() > kMax) out += "...";
  return out + "\"";
}

// ---------------------------------------------------------------------------------------------
// Merge rules by pair of token ids: open addressing, linear probing, load factor ≤ 1/2.
class PairMap {
 public:
  struct Slot {
    uint64_t key = kEmpty;  // left id << 32 | right id
    uint32_t rank = kNoRank;
    int32_t merged = -1;
  };

  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    slots_.assign(cap, Slot{});
    mask_ = cap - 1;
    size_ = 0;
  }
  // Keeps the existing rule when the pair is already present.
  void insert(int32_t left, int32_t right, uint32_t rank, int32_t merged) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    const uint64_t key = make_key(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.key == key) {
        if (rank < s.rank) s = Slot{key, rank, merged};
        return;
      }
      if (s.key == kEmpty) {
        s = Slot{key, rank, merged};
        ++size_;
        return;
      }
    }
  }
  const Slot* find(int32_t left, int32_t right) const {
    const uint64_t key = make_key(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s;
      if (s.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static uint64_t make_key(int32_t l, int32_t r) {
    return (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
  }
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
  }
  void grow() {
    std::vector<Slot> old;
    old.swap(slots_);
    reserve(std::max<size_t>(16, old.size()));
    for (const Slot& s : old) {
      if (s.key != kEmpty)
        insert((int32_t)(s.key >> 32), (int32_t)(uint32_t)s.key, s.rank, s.merged);
    }
  }
  std::vector<Slot> slots_ = std::vector<Slot>(16);
  size_t mask_ = 15;
  size_t size_ = 0;
};

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct MergeRule {
  int32_t left;
  int32_t right;
  int32_t merged;
  uint32_t rank;
};

bool is_control(BpeTokenType t) {
  return t == BpeTokenType::kControl || t == BpeTokenType::kUnknown;
}
bool is_normal(BpeTokenType t) {
  return t == BpeTokenType::kNormal || t == BpeTokenType::kByte;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
Result<BpePreTokenizer> bpe_pre_tokenizer(std::string_view name) {
  if (name == "llama3" || name == "llama-bpe" || name == "llama-v3") {
    return BpePreTokenizer{kLlama3Regex, true};
  }
  if (name == "qwen2" || name == "deepseek-r1-qwen") return BpePreTokenizer{kQwen2Regex, false};
  if (name == "gpt2" || name == "gpt-2" || name == "default")
    return BpePreTokenizer{kGpt2Regex, false};
  return unimplemented("BPE pre-tokenizer \"" + std::string(name) +
                       "\" is not supported; expected one of llama3, llama-bpe, llama-v3, qwen2, "
                       "deepseek-r1-qwen, gpt2, gpt-2, default");
}

Result<std::vector<std::pair<std::string, std::string>>> split_bpe_merges(
    const std::vector<std::string>& lines, std::string_view origin) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& m = lines[i];
    const size_t sp = m.find(' ');
    if (sp == std::string::npos || sp == 0 || sp + 1 == m.size() ||
        m.find(' ', sp + 1) != std::string::npos) {
      return data_loss(std::string(origin) + ": merge " + std::to_string(i) + " is " +
                       quoted_excerpt(m) + "; expected two tokens separated by one space");
    }
    out.emplace_back(m.substr(0, sp), m.substr(sp + 1));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
namespace detail {

struct BpeState {
  std::string origin;
  std::vector<std::string> bytes;  // by id: raw bytes (normal) or raw text (others)
  std::vector<BpeTokenType> types;
  std::vector<uint8_t> raw_piece;       // 1: id_to_piece returns bytes as they are
  std::array<int32_t, 256> byte_ids{};  // the token of each single byte, −1 when none
  StringIdMap whole;                    // raw bytes → id of normal tokens (first id wins)
  PairMap merges;
  std::unique_ptr<Regex> regex;
  bool ignore_merges = false;
  int32_t bos = -1;
  int32_t eos = -1;

  struct Special {
    std::string_view text;  // into `bytes`
    int32_t id;
    bool control;  // matched only with parse_special
  };
  std::vector<Special> specials;
  std::array<std::vector<uint32_t>, 256> specials_by_first_byte;  // indices, longest text first
  StringIdMap special_ids;
  bool has_user_defined = false;  // some special is matched even without parse_special

  Status encode_text(std::string_view text, bool parse_special, std::vector<int32_t>* out) const;
  Status encode_segment(std::string_view text, std::vector<int32_t>* out) const;
  Status merge_piece(std::string_view piece, std::vector<int32_t>* out) const;
  Status merge_long_piece(std::string_view piece, std::vector<int32_t>* out) const;
  Status missing_byte(unsigned char c) const {
    char buf[8];
    std::snprintf(buf, sizeof(buf), "0x%02X", c);
    return invalid_argument(origin + ": the text has byte " + buf +
                            ", which has no token in this vocabulary");
  }
};

Status BpeState::encode_text(std::string_view text, bool parse_special,
                             std::vector<int32_t>* out) const {
  if (specials.empty() || (!parse_special && !has_user_defined)) return encode_segment(text, out);
  size_t segment = 0;
  for (size_t i = 0; i < text.size();) {
    const Special* hit = nullptr;
    for (uint32_t c : specials_by_first_byte[(unsigned char)text[i]]) {
      const Special& sp = specials[c];
      if (sp.control && !parse_special) continue;
      if (text.compare(i, sp.text.size(), sp.text) == 0) {
        hit = &sp;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    PALU_RETURN_IF_ERROR(encode_segment(text.substr(segment, i - segment), out));
    out->push_back(hit->id);
    i += hit->text.size();
    segment = i;
  }
  return encode_segment(text.substr(segment), out);
}

Status BpeState::encode_segment(std::string_view text, std::vector<int32_t>* out) const {
  if (text.empty()) return Status::ok();
  Status merge_status;
  PALU_RETURN_IF_ERROR(regex->split(text, [&](std::string_view piece) {
    if (merge_status.is_ok()) merge_status = merge_piece(piece, out);
  }));
  return merge_status;
}

// Pieces up to kShortPiece bytes merge in place with a linear scan for the lowest rank (the
// common case, as in tiktoken); longer ones use a heap over a linked list (no quadratic time
// on long runs of punctuation or invalid bytes).
Status BpeState::merge_piece(std::string_view piece, std::vector<int32_t>* out) const {
  constexpr size_t kShortPiece = 64;
  const size_t n = piece.size();
  if (n == 1) {
    const int32_t id = byte_ids[(unsigned char)piece[0]];
    if (id < 0) return missing_byte((unsigned char)piece[0]);
    out->push_back(id);
    return Status::ok();
  }
  if (ignore_merges) {
    auto it = whole.find(piece);
    if (it != whole.end()) {
      out->push_back(it->second);
      return Status::ok();
    }
  }
  if (n > kShortPiece) return merge_long_piece(piece, out);

  int32_t ids[kShortPiece];
  uint32_t ranks[kShortPiece];  // ranks[i]: rank of merging parts i and i + 1
  int32_t merged[kShortPiece];  // merged[i]: the token that merge makes
  for (size_t i = 0; i < n; ++i) {
    ids[i] = byte_ids[(unsigned char)piece[i]];
    if (ids[i] < 0) return missing_byte((unsigned char)piece[i]);
  }
  auto look_up = [&](size_t i) {
    const PairMap::Slot* m = merges.find(ids[i], ids[i + 1]);
    ranks[i] = m ? m->rank : kNoRank;
    merged[i] = m ? m->merged : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) look_up(i);
  size_t parts = n;
  while (parts > 1) {
    size_t best = 0;
    uint32_t best_rank = kNoRank;
    for (size_t i = 0; i + 1 < parts; ++i) {
      if (ranks[i] < best_rank) {
        best_rank = ranks[i];
        best = i;
      }
    }
    if (best_rank == kNoRank) break;
    ids[best] = merged[best];
    for (size_t j = best + 1; j + 1 < parts; ++j) {
      ids[j] = ids[j + 1];
      ranks[j] = ranks[j + 1];
      merged[j] = merged[j + 1];
    }
    --parts;
    if (best + 1 < parts) look_up(best);
    if (best > 0) look_up(best - 1);
  }
  out->insert(out->end(), ids, ids + parts);
  return Status::ok();
}

Status BpeState::merge_long_piece(std::string_view piece, std::vector<int32_t>* out) const {
  // Parts form a linked list indexed by their first byte.
  const int32_t n = (int32_t)piece.size();
  std::vector<int32_t> id(n), next(n), prev(n);
  for (int32_t i = 0; i < n; ++i) {
    id[i] = byte_ids[(unsigned char)piece[i]];
    if (id[i] < 0) return missing_byte((unsigned char)piece[i]);
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    uint32_t rank;
    int32_t left;  // byte offset of the left part: on equal ranks the leftmost merges first
    int32_t left_id;
    int32_t right_id;
    int32_t merged;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int32_t l) {
    if (l < 0 || next[l] < 0) return;
    const PairMap::Slot* m = merges.find(id[l], id[next[l]]);
    if (m != nullptr) heap.push({m->rank, l, id[l], id[next[l]], m->merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    // Stale when either part changed since the push (parts only grow, so an id never comes
    // back at the same offset; a dead part's successor link no longer reaches it).
    if (id[c.left] != c.left_id) continue;
    const int32_t r = next[c.left];
    if (r < 0 || id[r] != c.right_id) continue;
    id[c.left] = c.merged;
    id[r] = -1;
    next[c.left] = next[r];
    if (next[r] >= 0) prev[next[r]] = c.left;
    push(prev[c.left]);
    push(c.left);
  }
  for (int32_t i = 0; i >= 0; i = next[i]) out->push_back(id[i]);
  return Status::ok();
}

}  // namespace detail

namespace {

using detail::BpeState;

// What every format reader produces before the tables are built.
struct RawVocab {
  std::vector<std::string> bytes;  // by id: raw bytes (normal) or raw text (others)
  std::vector<BpeTokenType> types;
  std::vector<uint8_t> raw_piece;
  std::vector<MergeRule> merges;
  bool merges_from_ranks = false;  // tiktoken: a + b merges when a + b is a token; rank = its id
  BpePreTokenizer pre_tokenizer;
  int32_t bos = -1;
  int32_t eos = -1;
};

Result<std::unique_ptr<BpeState>> build_state(RawVocab raw, std::string origin) {
  auto s = std::make_unique<BpeState>();
  const size_t n = raw.bytes.size();
  if (n == 0) return data_loss(origin + ": the vocabulary has no tokens");
  assert(raw.types.size() == n && raw.raw_piece.size() == n);
  for (int32_t id : {raw.bos, raw.eos}) {
    if (id < -1 || id >= (int64_t)n) {
      return data_loss(origin + ": special token id " + std::to_string(id) +
                       " is outside the vocabulary [0, " + std::to_string(n) + ")");
    }
  }
  PALU_ASSIGN_OR_RETURN(s->regex, Regex::compile(raw.pre_tokenizer.regex, origin));
  s->origin = std::move(origin);
  s->bytes = std::move(raw.bytes);
  s->types = std::move(raw.types);
  s->raw_piece = std::move(raw.raw_piece);
  s->ignore_merges = raw.pre_tokenizer.ignore_merges;
  s->bos = raw.bos;
  s->eos = raw.eos;

  s->whole.reserve(n);
  for (size_t id = 0; id < n; ++id) {
    if (is_normal(s->types[id]) && !s->bytes[id].empty())
      s->whole.emplace(s->bytes[id], (int32_t)id);
  }
  for (int b = 0; b < 256; ++b) {
    const char c = (char)b;
    auto it = s->whole.find(std::string_view(&c, 1));
    s->byte_ids[b] = it == s->whole.end() ? -1 : it->second;
  }

  if (raw.merges_from_ranks) {
    // tiktoken: parts are always tokens, and adjacent parts a, b merge exactly when a + b is a
    // token, lowest rank (= id) first. Enumerate every two-token split of every token.
    raw.merges.clear();
    for (size_t id = 0; id < n; ++id) {
      const std::string_view t = s->bytes[id];
      if (!is_normal(s->types[id]) || t.size() < 2) continue;
      for (size_t k = 1; k < t.size(); ++k) {
        auto l = s->whole.find(t.substr(0, k));
        if (l == s->whole.end()) continue;
        auto r = s->whole.find(t.substr(k));
        if (r == s->whole.end()) continue;
        raw.merges.push_back({l->second, r->second, (int32_t)id, (uint32_t)id});
      }
    }
  }
  s->merges.reserve(raw.merges.size());
  for (const MergeRule& m : raw.merges) s->merges.insert(m.left, m.right, m.rank, m.merged);

  for (size_t id = 0; id < n; ++id) {
    const BpeTokenType t = s->types[id];
    if ((is_control(t) || t == BpeTokenType::kUserDefined) && !s->bytes[id].empty()) {
      if (s->special_ids.emplace(s->bytes[id], (int32_t)id).second) {
        s->specials.push_back({s->bytes[id], (int32_t)id, is_control(t)});
        s->has_user_defined |= !is_control(t);
      }
    }
  }
  for (uint32_t i = 0; i < s->specials.size(); ++i) {
    s->specials_by_first_byte[(unsigned char)s->specials[i].text[0]].push_back(i);
  }
  for (auto& v : s->specials_by_first_byte) {
    std::stable_sort(v.begin(), v.end(), [&](uint32_t a, uint32_t b) {
      return s->specials[a].text.size() > s->specials[b].text.size();
    });
  }
  return s;
}

// A BpeVocab (token strings in byte-level form) as raw bytes and merge rules by id.
Result<RawVocab> raw_from_vocab(const BpeVocab& v, const std::string& origin) {
  const size_t n = v.tokens.size();
  if (n == 0) return data_loss(origin + ": the vocabulary has no tokens");
  if ((int64_t)n > kMaxVocabIds) {
    return data_loss(origin + ": the vocabulary has " + std::to_string(n) + " tokens; at most " +
                     std::to_string(kMaxVocabIds) + " expected");
  }
  if (!v.token_types.empty() && v.token_types.size() != n) {
    return data_loss(origin + ": token_types has " + std::to_string(v.token_types.size()) +
                     " entries; expected " + std::to_string(n) + " (one per token)");
  }
  RawVocab raw;
  raw.bytes.resize(n);
  raw.types.resize(n);
  raw.raw_piece.resize(n);
  StringIdMap by_text;  // token strings as stored, for the merges
  by_text.reserve(n);
  for (size_t id = 0; id < n; ++id) {
    const int32_t t = v.token_types.empty() ? 1 : v.token_types[id];
    if (t < 1 || t > 6) {
      return data_loss(origin + ": token_types[" + std::to_string(id) + "] is " +
                       std::to_string(t) +
                       "; expected 1..6 (normal, unknown, control, user-defined, unused, byte)");
    }
    raw.types[id] = (BpeTokenType)t;
    if (is_normal(raw.types[id])) {
      std::optional<std::string> b = byte_level_decode(v.tokens[id]);
      raw.raw_piece[id] = !b.has_value();
      raw.bytes[id] = b ? std::move(*b) : v.tokens[id];
    } else {
      raw.raw_piece[id] = 1;
      raw.bytes[id] = v.tokens[id];
    }
    if (raw.types[id] != BpeTokenType::kUnused) by_text.emplace(v.tokens[id], (int32_t)id);
  }
  raw.merges.reserve(v.merges.size());
  std::string joined;
  for (size_t k = 0; k < v.merges.size(); ++k) {
    // Named references, not a structured binding: clang before 16 cannot capture bindings.
    const std::string& a = v.merges[k].first;
    const std::string& b = v.merges[k].second;
    auto describe = [&] {
      return "merge " + std::to_string(k) + " (" + quoted_excerpt(a) + " + " + quoted_excerpt(b) +
             ")";
    };
    auto l = by_text.find(a);
    auto r = by_text.find(b);
    if (l == by_text.end() || r == by_text.end()) {
      return data_loss(origin + ": " + describe() + ": token " +
                       quoted_excerpt(l == by_text.end() ? a : b) + " is not in the vocabulary");
    }
    joined = a;
    joined += b;
    auto m = by_text.find(joined);
    if (m == by_text.end()) {
      return data_loss(origin + ": " + describe() + ": the merged token " + quoted_excerpt(joined) +
                       " is not in the vocabulary");
    }
    raw.merges.push_back({l->second, r->second, m->second, (uint32_t)k});
  }
  raw.pre_tokenizer = v.pre_tokenizer;
  raw.bos = v.bos_id;
  raw.eos = v.eos_id;
  return raw;
}

// Applies config.bos_token / eos_token: "" clears, a text must name a token.
Status apply_special_config(const BpeSpecialConfig& config, RawVocab* raw,
                            const std::string& origin) {
  auto resolve = [&](const std::optional<std::string>& text, const char* what,
                     int32_t* id) -> Status {
    if (!text) return Status::ok();
    if (text->empty()) {
      *id = -1;
      return Status::ok();
    }
    int32_t found = -1;  // a control / user-defined token with that text first, else a normal one
    for (size_t i = 0; i < raw->bytes.size(); ++i) {
      if (raw->types[i] == BpeTokenType::kUnused || raw->bytes[i] != *text) continue;
      if (found < 0 || !is_normal(raw->types[i])) found = (int32_t)i;
      if (!is_normal(raw->types[i])) break;
    }
    if (found < 0) {
      return data_loss(origin + ": " + what + " " + quoted_excerpt(*text) +
                       " is not a token of the vocabulary");
    }
    *id = found;
    return Status::ok();
  };
  PALU_RETURN_IF_ERROR(resolve(config.bos_token, "bos_token", &raw->bos));
  return resolve(config.eos_token, "eos_token", &raw->eos);
}

// Id of the first of `texts` that is a control / user-defined token, −1 when none is.
int32_t find_special(const RawVocab& raw, std::initializer_list<std::string_view> texts) {
  for (std::string_view t : texts) {
    for (size_t i = 0; i < raw.bytes.size(); ++i) {
      if (!is_normal(raw.types[i]) && raw.types[i] != BpeTokenType::kUnused && raw.bytes[i] == t) {
        return (int32_t)i;
      }
    }
  }
  return -1;
}

std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> v = {
      "<|begin_of_text|>",
      "<|end_of_text|>",
      "<|reserved_special_token_0|>",
      "<|reserved_special_token_1|>",
      "<|reserved_special_token_2|>",
      "<|reserved_special_token_3|>",
      "<|start_header_id|>",
      "<|end_header_id|>",
      "<|reserved_special_token_4|>",
      "<|eot_id|>",
  };
  constexpr int kReserved = 256;  // Meta's num_reserved_special_tokens
  for (int i = 5; i < kReserved - 5; ++i) {
    v.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
  }
  return v;
}

// The pre-tokenizer of a tokenizer.json "pre_tokenizer" value.
Result<BpePreTokenizer> json_pre_tokenizer(const json& pre, const std::string& origin) {
  auto type_of = [](const json& j) -> std::string {
    return j.is_object() && j.contains("type") && j["type"].is_string()
               ? j["type"].get<std::string>()
               : std::string("(no type)");
  };
  auto flag = [](const json& j, const char* key, bool fallback) {
    return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : fallback;
  };
  if (pre.is_null()) {
    return unimplemented(origin +
                         ": pre_tokenizer is null; only byte-level BPE (a ByteLevel "
                         "pre-tokenizer) is supported");
  }
  const std::string type = type_of(pre);
  if (type == "ByteLevel") {
    if (flag(pre, "add_prefix_space", false)) {
      return unimplemented(origin +
                           ": pre_tokenizer ByteLevel with add_prefix_space true is not supported");
    }
    if (!flag(pre, "use_regex", true)) {
      return unimplemented(origin +
                           ": pre_tokenizer ByteLevel with use_regex false is not supported");
    }
    return BpePreTokenizer{kGpt2Regex, false};
  }
  if (type != "Sequence") {
    return unimplemented(
        origin + ": pre_tokenizer type \"" + type +
        "\" is not supported; expected ByteLevel, or a Sequence of Split and ByteLevel");
  }
  const json steps = pre.contains("pretokenizers") ? pre["pretokenizers"] : json();
  if (!steps.is_array() || steps.size() != 2 || type_of(steps[0]) != "Split" ||
      type_of(steps[1]) != "ByteLevel") {
    std::string found;
    if (steps.is_array()) {
      for (const json& st : steps) found += (found.empty() ? "" : ", ") + type_of(st);
    }
    return unimplemented(origin + ": pre_tokenizer Sequence [" + found +
                         "] is not supported; expected [Split, ByteLevel]");
  }
  const json& split = steps[0];
  const json& byte_level = steps[1];
  if (flag(byte_level, "add_prefix_space", false) || flag(byte_level, "use_regex", true)) {
    return unimplemented(origin +
                         ": pre_tokenizer ByteLevel after a Split must have "
                         "add_prefix_space false and use_regex false");
  }
  if (!split.contains("behavior") || split["behavior"] != "Isolated" ||
      flag(split, "invert", false)) {
    return unimplemented(origin +
                         ": pre_tokenizer Split must have behavior \"Isolated\" and invert false");
  }
  if (!split.contains("pattern") || !split["pattern"].is_object() ||
      !split["pattern"].contains("Regex") || !split["pattern"]["Regex"].is_string()) {
    return unimplemented(origin + ": pre_tokenizer Split needs a {\"Regex\": \"...\"} pattern");
  }
  const std::string pattern = split["pattern"]["Regex"].get<std::string>();
  if (pattern == kLlama3RegexHf) return BpePreTokenizer{kLlama3Regex, false};
  if (pattern == kQwen2RegexHf) return BpePreTokenizer{kQwen2Regex, false};
  if (pattern == kGpt2RegexHf) return BpePreTokenizer{kGpt2Regex, false};
  return BpePreTokenizer{pattern, false};  // anything else is compiled as it is with PCRE2
}

// Text of the token the post_processor template puts before the input (BOS), or "".
std::string json_template_bos(const json& post) {
  if (!post.is_object() || !post.contains("type") || !post["type"].is_string()) return "";
  const std::string type = post["type"].get<std::string>();
  if (type == "Sequence" && post.contains("processors") && post["processors"].is_array()) {
    for (const json& p : post["processors"]) {
      std::string bos = json_template_bos(p);
      if (!bos.empty()) return bos;
    }
    return "";
  }
  if (type != "TemplateProcessing" || !post.contains("single") || !post["single"].is_array())
    return "";
  for (const json& item : post["single"]) {
    if (!item.is_object() || item.contains("Sequence")) return "";
    if (item.contains("SpecialToken") && item["SpecialToken"].is_object() &&
        item["SpecialToken"].contains("id") && item["SpecialToken"]["id"].is_string()) {
      return item["SpecialToken"]["id"].get<std::string>();
    }
  }
  return "";
}

Result<int32_t> json_token_id(const json& v, const std::string& origin, const std::string& where) {
  if (!v.is_number_integer()) {
    return data_loss(origin + ": " + where + " is " + v.dump().substr(0, 40) +
                     "; expected an integer token id");
  }
  const int64_t id = v.get<int64_t>();
  if (id < 0 || id >= kMaxVocabIds) {
    return data_loss(origin + ": " + where + " is " + std::to_string(id) +
                     "; expected an id in [0, " + std::to_string(kMaxVocabIds) + ")");
  }
  return (int32_t)id;
}

// A tokenizer.json as a BpeVocab (BOS / EOS from the template and well-known texts).
Result<BpeVocab> tokenizer_json_vocab(std::string_view text, const std::string& origin) {
  json j;
  try {
    j = json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return data_loss(origin + ": not valid JSON: " + e.what());
  }
  if (!j.is_object()) return data_loss(origin + ": expected a JSON object at the top level");
  if (!j.contains("model") || !j["model"].is_object()) {
    return data_loss(origin +
                     ": the \"model\" object is missing (not a Hugging Face tokenizer.json?)");
  }
  const json& model = j["model"];
  if (!model.contains("type") || !model["type"].is_string()) {
    return data_loss(origin + ": model.type is missing; expected \"BPE\"");
  }
  const std::string type = model["type"].get<std::string>();
  if (type != "BPE") {
    return unimplemented(origin + ": model.type is \"" + type + "\"; only \"BPE\" is supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && model[key].is_string() && !model[key].get<std::string>().empty()) {
      return unimplemented(origin + ": model." + key + " is set; byte-level BPE does not use one");
    }
  }
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& norm = j["normalizer"];
    const std::string nt = norm.is_object() && norm.contains("type") && norm["type"].is_string()
                               ? norm["type"].get<std::string>()
                               : std::string("(no type)");
    if (nt != "NFC") {
      return unimplemented(origin + ": normalizer type \"" + nt +
                           "\" is not supported; expected null or NFC");
    }
  }
  BpeVocab v;
  PALU_ASSIGN_OR_RETURN(
      v.pre_tokenizer,
      json_pre_tokenizer(j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json(), origin));
  if (model.contains("ignore_merges") && model["ignore_merges"].is_boolean()) {
    v.pre_tokenizer.ignore_merges = model["ignore_merges"].get<bool>();
  }

  // Vocabulary, then added tokens (which may repeat a vocabulary entry under its id).
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return data_loss(origin + ": model.vocab is missing or not an object of token → id");
  }
  std::vector<std::optional<std::pair<std::string, BpeTokenType>>> by_id;
  for (const auto& [tok, id_json] : model["vocab"].items()) {
    PALU_ASSIGN_OR_RETURN(
        int32_t id, json_token_id(id_json, origin, "model.vocab[" + quoted_excerpt(tok) + "]"));
    if ((size_t)id >= by_id.size()) by_id.resize((size_t)id + 1);
    if (by_id[id]) {
      return data_loss(origin + ": model.vocab: id " + std::to_string(id) + " is given to both " +
                       quoted_excerpt(by_id[id]->first) + " and " + quoted_excerpt(tok));
    }
    by_id[id].emplace(tok, BpeTokenType::kNormal);
  }
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) return data_loss(origin + ": added_tokens is not an array");
    size_t k = 0;
    for (const json& a : j["added_tokens"]) {
      const std::string where = "added_tokens[" + std::to_string(k++) + "]";
      if (!a.is_object() || !a.contains("id") || !a.contains("content") ||
          !a["content"].is_string()) {
        return data_loss(origin + ": " + where +
                         " needs an integer \"id\" and a string \"content\"");
      }
      PALU_ASSIGN_OR_RETURN(int32_t id, json_token_id(a["id"], origin, where + ".id"));
      const bool special =
          a.contains("special") && a["special"].is_boolean() && a["special"].get<bool>();
      if ((size_t)id >= by_id.size()) by_id.resize((size_t)id + 1);
      by_id[id].emplace(a["content"].get<std::string>(),
                        special ? BpeTokenType::kControl : BpeTokenType::kUserDefined);
    }
  }
  v.tokens.resize(by_id.size());
  v.token_types.assign(by_id.size(), (int32_t)BpeTokenType::kUnused);
  for (size_t id = 0; id < by_id.size(); ++id) {
    if (!by_id[id]) continue;
    v.tokens[id] = std::move(by_id[id]->first);
    v.token_types[id] = (int32_t)by_id[id]->second;
  }

  // Merges: "a b" strings or ["a", "b"] arrays.
  if (!model.contains("merges") || !model["merges"].is_array()) {
    return data_loss(origin + ": model.merges is missing or not an array");
  }
  v.merges.reserve(model["merges"].size());
  size_t k = 0;
  for (const json& m : model["merges"]) {
    if (m.is_string()) {
      const std::string line = m.get<std::string>();
      const size_t sp = line.find(' ');
      if (sp == std::string::npos || sp == 0 || sp + 1 == line.size() ||
          line.find(' ', sp + 1) != std::string::npos) {
        return data_loss(origin + ": model.merges[" + std::to_string(k) + "] is " +
                         quoted_excerpt(line) +
                         "; expected \"left right\" (two tokens, one space)");
      }
      v.merges.emplace_back(line.substr(0, sp), line.substr(sp + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      v.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return data_loss(origin + ": model.merges[" + std::to_string(k) + "] is " +
                       m.dump().substr(0, 60) +
                       "; expected \"left right\" or [\"left\", \"right\"]");
    }
    ++k;
  }

  // BOS: the post-processor template's, else a well-known text; EOS: a well-known text.
  const std::string template_bos =
      j.contains("post_processor") ? json_template_bos(j["post_processor"]) : "";
  auto find = [&](std::string_view t) -> int32_t {
    for (size_t id = 0; id < v.tokens.size(); ++id) {
      const auto type = (BpeTokenType)v.token_types[id];
      if (type != BpeTokenType::kUnused && !is_normal(type) && v.tokens[id] == t)
        return (int32_t)id;
    }
    return -1;
  };
  if (!template_bos.empty()) v.bos_id = find(template_bos);
  for (std::string_view t : {"<|begin_of_text|>", "<s>"}) {
    if (v.bos_id < 0) v.bos_id = find(t);
  }
  for (std::string_view t : {"<|end_of_text|>", "</s>", "<|endoftext|>", "<|im_end|>"}) {
    if (v.eos_id < 0) v.eos_id = find(t);
  }
  return v;
}

// Meta's tiktoken text as a RawVocab with Llama-3 special tokens.
Result<RawVocab> tiktoken_vocab(std::string_view text, const BpeSpecialConfig& config,
                                const std::string& origin) {
  std::vector<std::optional<std::string>> by_rank;
  std::unordered_map<std::string, size_t> line_of_token;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::string where = origin + ": line " + std::to_string(line_no);
    const size_t sp = line.find(' ');
    if (sp == std::string_view::npos) {
      return data_loss(where + " is " + quoted_excerpt(line) +
                       "; expected \"<base64 token> <rank>\"");
    }
    const std::string_view b64 = line.substr(0, sp), rank_text = line.substr(sp + 1);
    std::optional<std::string> token = base64_decode(b64);
    if (!token) return data_loss(where + ": token " + quoted_excerpt(b64) + " is not valid base64");
    int64_t rank = -1;
    const auto [ptr, ec] =
        std::from_chars(rank_text.data(), rank_text.data() + rank_text.size(), rank);
    if (rank_text.empty() || ec != std::errc() || ptr != rank_text.data() + rank_text.size() ||
        rank < 0) {
      return data_loss(where + ": rank " + quoted_excerpt(rank_text) +
                       " is not a non-negative integer");
    }
    if (rank >= kMaxVocabIds - 1024) {
      return data_loss(where + ": rank " + std::to_string(rank) + " is out of range; expected < " +
                       std::to_string(kMaxVocabIds - 1024));
    }
    if ((size_t)rank >= by_rank.size()) by_rank.resize((size_t)rank + 1);
    if (by_rank[rank])
      return data_loss(where + ": rank " + std::to_string(rank) + " is given twice");
    auto [it, fresh] = line_of_token.emplace(*token, line_no);
    if (!fresh) {
      return data_loss(where + ": token " + quoted_excerpt(b64) + " repeats line " +
                       std::to_string(it->second));
    }
    by_rank[rank] = std::move(token);
  }
  if (by_rank.empty()) return data_loss(origin + ": no \"<base64 token> <rank>\" lines");

  RawVocab raw;
  const std::vector<std::string> names = llama3_special_tokens();
  const size_t n_base = by_rank.size();
  const size_t n = n_base + names.size();
  raw.bytes.resize(n);
  raw.types.assign(n, BpeTokenType::kUnused);
  raw.raw_piece.assign(n, 0);
  for (size_t id = 0; id < n_base; ++id) {
    if (!by_rank[id]) continue;
    raw.bytes[id] = std::move(*by_rank[id]);
    raw.types[id] = BpeTokenType::kNormal;
  }
  for (size_t i = 0; i < names.size(); ++i) {
    raw.bytes[n_base + i] = names[i];
    raw.types[n_base + i] = BpeTokenType::kControl;
    raw.raw_piece[n_base + i] = 1;
  }
  for (const auto& [id, name] : config.names) {
    if (id < (int64_t)n_base || id >= (int64_t)n || name.empty()) {
      return data_loss(origin + ": special token " + quoted_excerpt(name) + " has id " +
                       std::to_string(id) + "; expected an id in [" + std::to_string(n_base) +
                       ", " + std::to_string(n) + ")");
    }
    raw.bytes[id] = name;
  }
  raw.merges_from_ranks = true;
  PALU_ASSIGN_OR_RETURN(raw.pre_tokenizer, bpe_pre_tokenizer("llama3"));
  raw.bos = find_special(raw, {"<|begin_of_text|>"});
  raw.eos = find_special(raw, {"<|end_of_text|>"});
  return raw;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
BpeTokenizer::BpeTokenizer(std::unique_ptr<detail::BpeState> state) : s_(std::move(state)) {}
BpeTokenizer::~BpeTokenizer() = default;

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::from_vocab(const BpeVocab& vocab,
                                                               std::string origin) {
  PALU_ASSIGN_OR_RETURN(RawVocab raw, raw_from_vocab(vocab, origin));
  PALU_ASSIGN_OR_RETURN(auto state, build_state(std::move(raw), std::move(origin)));
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(state)));
}

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::from_tiktoken(std::string_view text,
                                                                  const BpeSpecialConfig& config,
                                                                  std::string origin) {
  PALU_ASSIGN_OR_RETURN(RawVocab raw, tiktoken_vocab(text, config, origin));
  PALU_RETURN_IF_ERROR(apply_special_config(config, &raw, origin));
  PALU_ASSIGN_OR_RETURN(auto state, build_state(std::move(raw), std::move(origin)));
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(state)));
}

Result<std::unique_ptr<BpeTokenizer>> BpeTokenizer::from_tokenizer_json(
    std::string_view json_text, const BpeSpecialConfig& config, std::string origin) {
  PALU_ASSIGN_OR_RETURN(BpeVocab vocab, tokenizer_json_vocab(json_text, origin));
  PALU_ASSIGN_OR_RETURN(RawVocab raw, raw_from_vocab(vocab, origin));
  PALU_RETURN_IF_ERROR(apply_special_config(config, &raw, origin));
  PALU_ASSIGN_OR_RETURN(auto state, build_state(std::move(raw), std::move(origin)));
  return std::unique_ptr<BpeTokenizer>(new BpeTokenizer(std::move(state)));
}

Result<std::vector<int32_t>> BpeTokenizer::encode(std::string_view text, bool add_bos) const {
  return encode(text, EncodeOptions{add_bos, false});
}

Result<std::vector<int32_t>> BpeTokenizer::encode(std::string_view text,
                                                  const EncodeOptions& options) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (options.add_bos && s_->bos >= 0) out.push_back(s_->bos);
  PALU_RETURN_IF_ERROR(s_->encode_text(text, options.parse_special, &out));
  return out;
}

Result<std::string> BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  return decode(ids, false);
}

Result<std::string> BpeTokenizer::decode(const std::vector<int32_t>& ids,
                                         bool render_special) const {
  std::string text;
  text.reserve(ids.size() * 4);
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      return invalid_argument("token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(vocab_size()) + ")");
    }
    const BpeTokenType t = s_->types[id];
    if (t == BpeTokenType::kUnused || (is_control(t) && !render_special)) continue;
    text += s_->bytes[id];
  }
  return text;
}

std::string BpeTokenizer::id_to_piece(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return "";
  return s_->raw_piece[id] ? s_->bytes[id] : byte_level_encode(s_->bytes[id]);
}

std::string BpeTokenizer::token_bytes(int32_t id, int32_t /*prev*/) const {
  if (id < 0 || id >= vocab_size()) return "";
  const BpeTokenType t = s_->types[id];
  if (t == BpeTokenType::kUnused || is_control(t)) return "";
  return s_->bytes[id];
}

int32_t BpeTokenizer::vocab_size() const {
  return (int32_t)s_->bytes.size();
}
int32_t BpeTokenizer::bos_id() const {
  return s_->bos;
}
int32_t BpeTokenizer::eos_id() const {
  return s_->eos;
}
size_t BpeTokenizer::merge_count() const {
  return s_->merges.size();
}

Result<std::vector<std::string_view>> BpeTokenizer::pre_tokenize(std::string_view text) const {
  std::vector<std::string_view> pieces;
  PALU_RETURN_IF_ERROR(s_->regex->split(text, [&](std::string_view p) { pieces.push_back(p); }));
  return pieces;
}

int32_t BpeTokenizer::special_token_id(std::string_view text) const {
  auto it = s_->special_ids.find(text);
  return it == s_->special_ids.end() ? -1 : it->second;
}

BpeTokenType BpeTokenizer::token_type(int32_t id) const {
  if (id < 0 || id >= vocab_size()) return BpeTokenType::kUnused;
  return s_->types[id];
}

}  // namespace palu::model
