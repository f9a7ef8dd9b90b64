#include "daemon/session_file.h"

#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <new>
#include <nlohmann/json.hpp>

namespace palu::daemon {
namespace {

using json = nlohmann::json;

constexpr size_t kHeaderBytes = 32;       // v1 fixed header
constexpr size_t kMaxHeaderBytes = 4096;  // any version
constexpr size_t kChunkHeaderBytes = 16;  // tag, index, length
constexpr size_t kChecksumBytes = 8;
constexpr int kMaxMetaDepth = 4;  // META is a flat object: refuse deep nesting before parsing

constexpr uint32_t tag_of(const char (&s)[5]) {
  return (uint32_t)(uint8_t)s[0] | (uint32_t)(uint8_t)s[1] << 8 | (uint32_t)(uint8_t)s[2] << 16 |
         (uint32_t)(uint8_t)s[3] << 24;
}
constexpr uint32_t kTagMeta = tag_of("META");
constexpr uint32_t kTagTokens = tag_of("TOKS");
constexpr uint32_t kTagImage = tag_of("IMAG");
constexpr uint32_t kTagEnd = tag_of("END ");

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (uint8_t)(v >> (8 * i));
}
void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = (uint8_t)(v >> (8 * i));
}
uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= (uint32_t)p[i] << (8 * i);
  return v;
}
uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= (uint64_t)p[i] << (8 * i);
  return v;
}

std::string hex64(uint64_t v) {
  static const char* kHex = "0123456789abcdef";
  std::string s = "0x";
  for (int i = 15; i >= 0; --i) s += kHex[(v >> (4 * i)) & 15];
  return s;
}

bool parse_hex64(const std::string& s, uint64_t* out) {
  if (s.size() != 18 || s[0] != '0' || s[1] != 'x') return false;
  uint64_t v = 0;
  for (size_t i = 2; i < s.size(); ++i) {
    const char c = s[i];
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else
      return false;
    v = v << 4 | (uint64_t)d;
  }
  *out = v;
  return true;
}

// "META", or "0x01020304" when the tag is not printable.
std::string tag_str(uint32_t tag) {
  std::string s;
  for (int i = 0; i < 4; ++i) {
    const char c = (char)(tag >> (8 * i));
    if (c < 0x20 || c > 0x7e) {
      char buf[16];
      std::snprintf(buf, sizeof buf, "0x%08x", tag);
      return buf;
    }
    s += c;
  }
  return "'" + s + "'";
}

std::string chunk_name(uint32_t tag) {
  if (tag == kTagMeta) return "metadata";
  if (tag == kTagTokens) return "tokens";
  if (tag == kTagImage) return "image";
  if (tag == kTagEnd) return "end";
  return tag_str(tag);
}

// Ancillary chunks (first tag byte a lowercase letter) may be added by later writers without a
// new format version; readers verify and skip them.
bool is_ancillary(uint32_t tag) {
  const char c = (char)(tag & 0xff);
  return c >= 'a' && c <= 'z';
}

uint64_t chunk_checksum(const uint8_t* header, const uint8_t* payload, size_t n) {
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  XXH3_64bits_update(&st, header, kChunkHeaderBytes);
  if (n) XXH3_64bits_update(&st, payload, n);
  return XXH3_64bits_digest(&st);
}

// One chunk (header, payload, checksum) as one append.
Status write_chunk(WritableFile& f, uint32_t tag, uint32_t index, const uint8_t* payload, size_t n,
                   std::string& buf) {
  buf.resize(kChunkHeaderBytes + n + kChecksumBytes);
  auto* p = reinterpret_cast<uint8_t*>(buf.data());
  put_u32(p, tag);
  put_u32(p + 4, index);
  put_u64(p + 8, n);
  if (n) std::memcpy(p + kChunkHeaderBytes, payload, n);
  put_u64(p + kChunkHeaderBytes + n, chunk_checksum(p, payload, n));
  return f.append(buf);
}

std::string header_bytes() {
  std::string h(kHeaderBytes, '\0');
  auto* p = reinterpret_cast<uint8_t*>(h.data());
  std::memcpy(p, kSessionMagic, 8);
  put_u32(p + 8, kSessionFormatVersion);
  put_u32(p + 12, (uint32_t)kHeaderBytes);
  put_u32(p + 16, 0);  // flags: none defined in version 1
  put_u32(p + 20, 0);  // reserved
  put_u64(p + 24, XXH3_64bits(p, kHeaderBytes - 8));
  return h;
}

// Max nesting depth of JSON text (brackets outside strings), without parsing it.
int json_depth(std::string_view s) {
  int depth = 0, max_depth = 0;
  bool in_string = false, escape = false;
  for (char c : s) {
    if (in_string) {
      if (escape)
        escape = false;
      else if (c == '\\')
        escape = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return max_depth;
}

// Reads from a ReadableFile with bounds checks against the size seen at open.
class Reader {
 public:
  Reader(ReadableFile& f, std::string path) : f_(f), path_(std::move(path)) {}
  uint64_t offset() const { return offset_; }
  uint64_t left() const { return f_.size() - offset_; }
  const std::string& path() const { return path_; }

  Status read(uint8_t* out, size_t n, const std::string& what) {
    if (n > left()) {
      return data_loss(path_ + ": truncated: " + what + " needs " + std::to_string(n) +
                       " bytes at offset " + std::to_string(offset_) + ", the file has " +
                       std::to_string(left()) + " left");
    }
    auto got = f_.read_at(offset_, {out, n});
    if (!got.is_ok()) return got.status();
    if (*got != n) {
      return data_loss(path_ + ": truncated: " + what + " needs " + std::to_string(n) +
                       " bytes at offset " + std::to_string(offset_) + ", read " +
                       std::to_string(*got) + " (the file shrank while being read)");
    }
    offset_ += n;
    return Status::ok();
  }

 private:
  ReadableFile& f_;
  std::string path_;
  uint64_t offset_ = 0;
};

// Typed META field getters: DATA_LOSS naming the field.
struct Meta {
  const json& j;
  const std::string& where;

  Status missing(const char* key, const char* type) const {
    return data_loss(where + "field '" + key + "' is missing or not " + type);
  }
  Result<std::string> str(const char* key) const {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) return missing(key, "a string");
    return it->get<std::string>();
  }
  Result<uint64_t> u64(const char* key) const {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_unsigned()) return missing(key, "a non-negative integer");
    return it->get<uint64_t>();
  }
};

}  // namespace

// ---- writer -----------------------------------------------------------------------------------

Status write_session_file(FileSystem& fs, const std::string& path, const SessionFile& file,
                          size_t image_chunk_bytes) {
  const std::string where = "session file " + path + ": ";
  const cache::SequenceImage& img = file.image;
  if (image_chunk_bytes < 1 || image_chunk_bytes > kSessionImageChunkBytes) {
    return invalid_argument(where + "image_chunk_bytes must be in [1, " +
                            std::to_string(kSessionImageChunkBytes) + "], got " +
                            std::to_string(image_chunk_bytes));
  }
  if (img.length < 0 || (uint64_t)img.length != file.tokens.size()) {
    return invalid_argument(where + "image length " + std::to_string(img.length) +
                            " differs from the token history of " +
                            std::to_string(file.tokens.size()) + " tokens");
  }
  if (img.window_begin < 0 || img.window_begin > img.length) {
    return invalid_argument(where + "window_begin must be in [0, " + std::to_string(img.length) +
                            "], got " + std::to_string(img.window_begin));
  }
  for (size_t i = 0; i < file.tokens.size(); ++i) {
    if (file.tokens[i] < 0) {
      return invalid_argument(where + "token " + std::to_string(i) + " is " +
                              std::to_string(file.tokens[i]) + ", expected >= 0");
    }
  }
  json meta = {
      {"format", "palu-session"},
      {"name", file.name},
      {"owner_uid", file.owner_uid},
      {"model_name", file.model_name},
      {"model_fingerprint", file.model_fingerprint},
      {"cache_description", file.cache_description},
      {"layout_hash", hex64(img.layout_hash)},
      {"length", (uint64_t)img.length},
      {"window_begin", (uint64_t)img.window_begin},
      {"token_count", (uint64_t)file.tokens.size()},
      {"image_bytes", (uint64_t)img.bytes.size()},
      {"metadata", file.metadata_json},
  };
  std::string meta_text;
  try {
    meta_text = meta.dump();
  } catch (const json::exception& e) {
    return invalid_argument(where + "a text field is not valid UTF-8 (" + e.what() + ")");
  }
  if (meta_text.size() > kSessionMaxMetaBytes) {
    return invalid_argument(where + "metadata is " + std::to_string(meta_text.size()) +
                            " bytes, more than the limit of " +
                            std::to_string(kSessionMaxMetaBytes));
  }
  std::vector<uint8_t> toks(file.tokens.size() * 4);
  for (size_t i = 0; i < file.tokens.size(); ++i) put_u32(&toks[4 * i], (uint32_t)file.tokens[i]);

  return write_file_atomically(fs, path, [&](WritableFile& f) -> Status {
    std::string buf;
    PALU_RETURN_IF_ERROR(f.append(header_bytes()));
    uint32_t index = 0;
    PALU_RETURN_IF_ERROR(write_chunk(f, kTagMeta, index++,
                                     reinterpret_cast<const uint8_t*>(meta_text.data()),
                                     meta_text.size(), buf));
    PALU_RETURN_IF_ERROR(write_chunk(f, kTagTokens, index++, toks.data(), toks.size(), buf));
    for (size_t off = 0; off < img.bytes.size(); off += image_chunk_bytes) {
      const size_t n = std::min(image_chunk_bytes, img.bytes.size() - off);
      PALU_RETURN_IF_ERROR(write_chunk(f, kTagImage, index++, img.bytes.data() + off, n, buf));
    }
    uint8_t count[8];
    put_u64(count, index);
    return write_chunk(f, kTagEnd, index, count, sizeof count, buf);
  });
}

// ---- reader -----------------------------------------------------------------------------------

Result<SessionFile> read_session_file(FileSystem& fs, const std::string& path, uint64_t max_bytes) {
  PALU_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, fs.open_file(path));
  if (f->size() > max_bytes) {
    return resource_exhausted(path + ": session file is " + std::to_string(f->size()) +
                              " bytes, more than the limit of " + std::to_string(max_bytes) +
                              " bytes");
  }
  Reader in(*f, path);
  const std::string& P = path;

  // ---- header ----
  if (f->size() == 0) return data_loss(P + ": empty file (not a palu session file)");
  uint8_t head[kMaxHeaderBytes];
  const size_t first = (size_t)std::min<uint64_t>(f->size(), 16);
  PALU_RETURN_IF_ERROR(in.read(head, first, "the header"));
  if (first < 8 || std::memcmp(head, kSessionMagic, 8) != 0) {
    if (first < 8 && std::memcmp(head, kSessionMagic, first) == 0) {
      return data_loss(P + ": truncated: " + std::to_string(first) +
                       " bytes, shorter than the session file header");
    }
    return data_loss(P + ": not a palu session file (the magic is not \"PALUSESS\")");
  }
  if (first < 16) {
    return data_loss(P + ": truncated: " + std::to_string(first) +
                     " bytes, shorter than the session file header");
  }
  const uint32_t version = get_u32(head + 8);
  const uint32_t header_len = get_u32(head + 12);
  if (header_len < kHeaderBytes || header_len > kMaxHeaderBytes) {
    return data_loss(P + ": header length must be in [" + std::to_string(kHeaderBytes) + ", " +
                     std::to_string(kMaxHeaderBytes) + "], got " + std::to_string(header_len));
  }
  PALU_RETURN_IF_ERROR(in.read(head + 16, header_len - 16, "the header"));
  if (get_u64(head + header_len - 8) != XXH3_64bits(head, header_len - 8))
    return data_loss(P + ": header checksum mismatch");
  if (version == 0) return data_loss(P + ": format version 0 is invalid");
  if (version > kSessionFormatVersion) {
    return failed_precondition(P + ": session file format version " + std::to_string(version) +
                               " is not supported (this palu reads version " +
                               std::to_string(kSessionFormatVersion) + "; saved by a newer palu?)");
  }
  if (header_len != kHeaderBytes) {
    return data_loss(P + ": version 1 header length must be " + std::to_string(kHeaderBytes) +
                     ", got " + std::to_string(header_len));
  }
  const uint32_t flags = get_u32(head + 16);
  if (flags != 0) {
    return failed_precondition(P + ": unsupported header flags " + hex64(flags) +
                               " (this palu knows none)");
  }

  // ---- chunks ----
  SessionFile out;
  bool have_meta = false, have_tokens = false, have_end = false;
  uint64_t token_count = 0, image_bytes = 0, image_done = 0;
  std::vector<uint8_t> payload;
  for (uint32_t k = 0; !have_end; ++k) {
    const std::string chunk = "chunk " + std::to_string(k);
    if (in.left() == 0)
      return data_loss(P + ": truncated: the file ends before the END chunk (" + chunk + ")");
    uint8_t ch[kChunkHeaderBytes];
    PALU_RETURN_IF_ERROR(in.read(ch, sizeof ch, chunk + " header"));
    const uint32_t tag = get_u32(ch), index = get_u32(ch + 4);
    const uint64_t length = get_u64(ch + 8);
    const std::string name = chunk + " (" + chunk_name(tag) + ")";
    if (index != k) {
      return data_loss(P + ": " + name + " has index " + std::to_string(index) +
                       " (chunks missing or out of order)");
    }
    if (in.left() < kChecksumBytes || length > in.left() - kChecksumBytes) {
      return data_loss(P + ": " + name + " length " + std::to_string(length) + " exceeds the " +
                       std::to_string(in.left()) +
                       " bytes left in the file with its checksum (truncated, or a lying length)");
    }
    // Which chunk may come here, and how long it may be.
    uint64_t limit = 0;
    const bool ancillary = is_ancillary(tag);
    if (tag == kTagMeta) {
      if (have_meta) return data_loss(P + ": " + name + ": a second metadata chunk");
      limit = kSessionMaxMetaBytes;
    } else if (!have_meta && !ancillary) {
      return data_loss(P + ": " + name + ": expected the metadata chunk first");
    } else if (tag == kTagTokens) {
      if (have_tokens) return data_loss(P + ": " + name + ": a second tokens chunk");
      limit = 4 * token_count;
      if (length != limit) {
        return data_loss(P + ": " + name + " length " + std::to_string(length) + ", expected " +
                         std::to_string(limit) + " (" + std::to_string(token_count) + " tokens)");
      }
    } else if (!have_tokens && !ancillary) {
      return data_loss(P + ": " + name + ": expected the tokens chunk");
    } else if (tag == kTagImage) {
      if (image_done == image_bytes) {
        return data_loss(P + ": " + name + ": an image chunk after the whole image (" +
                         std::to_string(image_bytes) + " bytes)");
      }
      limit = std::min<uint64_t>(kSessionImageChunkBytes, image_bytes - image_done);
      if (length == 0 || length > limit) {
        return data_loss(P + ": " + name + " length " + std::to_string(length) +
                         " must be in [1, " + std::to_string(limit) + "] (" +
                         std::to_string(image_bytes - image_done) + " image bytes still to come)");
      }
    } else if (tag == kTagEnd) {
      limit = 8;
      if (length != 8)
        return data_loss(P + ": " + name + " length " + std::to_string(length) + ", expected 8");
    } else if (ancillary) {
      limit = kSessionImageChunkBytes;
    } else {
      return data_loss(P + ": " + name + " has an unknown type " + tag_str(tag));
    }
    if (length > limit) {
      return data_loss(P + ": " + name + " length " + std::to_string(length) +
                       " exceeds the limit of " + std::to_string(limit) + " bytes");
    }
    // Payload (bounded above by the bytes left and by the chunk's limit).
    uint8_t* dst;
    try {
      if (tag == kTagImage) {
        dst = out.image.bytes.data() + image_done;
      } else {
        payload.resize((size_t)length);
        dst = payload.data();
      }
    } catch (const std::bad_alloc&) {
      return resource_exhausted(P + ": " + name + ": cannot allocate " + std::to_string(length) +
                                " bytes");
    }
    PALU_RETURN_IF_ERROR(in.read(dst, (size_t)length, name + " payload"));
    uint8_t sum[kChecksumBytes];
    PALU_RETURN_IF_ERROR(in.read(sum, sizeof sum, name + " checksum"));
    if (get_u64(sum) != chunk_checksum(ch, dst, (size_t)length))
      return data_loss(P + ": " + name + " checksum mismatch");

    if (tag == kTagMeta) {
      const std::string where = P + ": " + name + ": ";
      const std::string_view text(reinterpret_cast<const char*>(dst), (size_t)length);
      if (json_depth(text) > kMaxMetaDepth)
        return data_loss(where + "JSON nested deeper than " + std::to_string(kMaxMetaDepth));
      const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) return data_loss(where + "not a JSON object");
      const Meta m{j, where};
      PALU_ASSIGN_OR_RETURN(std::string format, m.str("format"));
      if (format != "palu-session")
        return data_loss(where + "format is \"" + format + "\", expected \"palu-session\"");
      PALU_ASSIGN_OR_RETURN(out.name, m.str("name"));
      PALU_ASSIGN_OR_RETURN(uint64_t uid, m.u64("owner_uid"));
      if (uid > UINT32_MAX)
        return data_loss(where + "owner_uid " + std::to_string(uid) + " > 2^32-1");
      out.owner_uid = (uint32_t)uid;
      PALU_ASSIGN_OR_RETURN(out.model_name, m.str("model_name"));
      PALU_ASSIGN_OR_RETURN(out.model_fingerprint, m.str("model_fingerprint"));
      PALU_ASSIGN_OR_RETURN(out.cache_description, m.str("cache_description"));
      PALU_ASSIGN_OR_RETURN(out.metadata_json, m.str("metadata"));
      PALU_ASSIGN_OR_RETURN(std::string hash, m.str("layout_hash"));
      if (!parse_hex64(hash, &out.image.layout_hash))
        return data_loss(where + "layout_hash \"" + hash + "\" is not 0x + 16 hex digits");
      PALU_ASSIGN_OR_RETURN(uint64_t length_tokens, m.u64("length"));
      PALU_ASSIGN_OR_RETURN(uint64_t window_begin, m.u64("window_begin"));
      PALU_ASSIGN_OR_RETURN(token_count, m.u64("token_count"));
      PALU_ASSIGN_OR_RETURN(image_bytes, m.u64("image_bytes"));
      if (length_tokens > (uint64_t)cache::BlockPool::kMaxSequenceTokens) {
        return data_loss(where + "length " + std::to_string(length_tokens) + " exceeds " +
                         std::to_string(cache::BlockPool::kMaxSequenceTokens));
      }
      if (token_count != length_tokens) {
        return data_loss(where + "token_count " + std::to_string(token_count) +
                         " differs from length " + std::to_string(length_tokens));
      }
      if (window_begin > length_tokens) {
        return data_loss(where + "window_begin " + std::to_string(window_begin) +
                         " exceeds length " + std::to_string(length_tokens));
      }
      // Bound every size by the bytes left before allocating (tokens + image + END at least).
      const uint64_t left = in.left();
      if (token_count > left / 4 || image_bytes > left - 4 * token_count) {
        return data_loss(where + std::to_string(token_count) + " tokens and " +
                         std::to_string(image_bytes) + " image bytes do not fit in the " +
                         std::to_string(left) + " bytes left in the file");
      }
      out.image.length = (int64_t)length_tokens;
      out.image.window_begin = (int64_t)window_begin;
      try {
        out.image.bytes.resize((size_t)image_bytes);
      } catch (const std::bad_alloc&) {
        return resource_exhausted(where + "cannot allocate " + std::to_string(image_bytes) +
                                  " image bytes");
      }
      have_meta = true;
    } else if (tag == kTagTokens) {
      out.tokens.resize((size_t)token_count);
      for (size_t i = 0; i < out.tokens.size(); ++i) {
        out.tokens[i] = (int32_t)get_u32(dst + 4 * i);
        if (out.tokens[i] < 0) {
          return data_loss(P + ": " + name + ": token " + std::to_string(i) + " is " +
                           std::to_string(out.tokens[i]));
        }
      }
      have_tokens = true;
    } else if (tag == kTagImage) {
      image_done += length;
    } else if (tag == kTagEnd) {
      const uint64_t count = get_u64(dst);
      if (count != k) {
        return data_loss(P + ": " + name + " counts " + std::to_string(count) +
                         " chunks before it, the file has " + std::to_string(k));
      }
      if (image_done != image_bytes) {
        return data_loss(P + ": " + name + ": the image has " + std::to_string(image_done) +
                         " of " + std::to_string(image_bytes) + " bytes");
      }
      have_end = true;
    }
  }
  if (in.left() != 0) {
    return data_loss(P + ": " + std::to_string(in.left()) +
                     " bytes of garbage after the END chunk");
  }
  return out;
}

// ---- binding, move aside -----------------------------------------------------------------------

Status check_session_binding(const SessionFile& file, const std::string& fingerprint,
                             uint64_t layout_hash, const std::string& path) {
  const std::string who = path.empty() ? "session '" + file.name + "'" : "session file " + path;
  if (file.model_fingerprint != fingerprint) {
    return failed_precondition(who + " was saved by model " + file.model_name + " (fingerprint " +
                               file.model_fingerprint + "), this model is " + fingerprint);
  }
  if (file.image.layout_hash != layout_hash) {
    return failed_precondition(who + " was saved with cache layout " +
                               hex64(file.image.layout_hash) + " (" + file.cache_description +
                               "), this cache is " + hex64(layout_hash) +
                               "; restore it with the compression settings it was saved with");
  }
  return Status::ok();
}

Result<std::string> move_aside(FileSystem& fs, const std::string& path) {
  const std::string base = path + ".corrupt-" + std::to_string((long long)std::time(nullptr));
  std::string target = base;
  for (int i = 2;; ++i) {
    PALU_ASSIGN_OR_RETURN(bool taken, fs.exists(target));
    if (!taken) break;
    if (i > 1000) return io_error("move aside " + path + ": " + base + " and 999 more names exist");
    target = base + "-" + std::to_string(i);
  }
  PALU_RETURN_IF_ERROR(fs.rename(path, target));
  PALU_RETURN_IF_ERROR(
      fs.sync_dir(parent_dir(path)).with_context("move aside " + path + ": moved to " + target));
  return target;
}

}  // namespace palu::daemon
