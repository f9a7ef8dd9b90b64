// Session files: round trip (file → pool → identical reads), a table of handcrafted corrupt
// files each refused with the expected code and message, every single-byte flip detected,
// binding to the model fingerprint and cache layout, move_aside, and crash safety under
// injected write / fsync failures, power cuts (drop_unsynced) and a full disk.
#include "daemon/session_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include "tests/common/status_assert.h"

namespace palu::daemon {
namespace {

using cache::BlockPool;
using cache::CacheLayout;
using cache::CacheStorage;
using cache::PoolRequest;
using cache::Proj;
using cache::SeqId;
using json = nlohmann::json;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "palu_session_XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    path_ = tmpl;
  }
  ~TempDir() {
    RealFileSystem fs;
    if (auto names = fs.list_dir(path_); names.is_ok()) {
      for (const auto& n : *names) ::unlink((path_ + "/" + n).c_str());
    }
    ::rmdir(path_.c_str());
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Read-only in-memory files, for the corrupt-file table (thousands of variants, no disk).
class BytesFileSystem final : public FileSystem {
 public:
  std::map<std::string, std::string> files;

  class Reader final : public ReadableFile {
   public:
    Reader(std::string path, const std::string& data) : path_(std::move(path)), data_(data) {}
    const std::string& path() const override { return path_; }
    uint64_t size() const override { return data_.size(); }
    Result<size_t> read_at(uint64_t offset, std::span<uint8_t> out) override {
      if (offset >= data_.size() || out.empty()) return size_t{0};
      const size_t n = std::min<size_t>(out.size(), data_.size() - (size_t)offset);
      std::memcpy(out.data(), data_.data() + offset, n);
      return n;
    }

   private:
    std::string path_;
    const std::string& data_;
  };

  Result<std::unique_ptr<ReadableFile>> open_file(const std::string& path) override {
    auto it = files.find(path);
    if (it == files.end()) return errno_status("open", path, ENOENT);
    return std::unique_ptr<ReadableFile>(new Reader(path, it->second));
  }
  Result<std::string> read_file(const std::string& path, uint64_t) override {
    auto it = files.find(path);
    if (it == files.end()) return errno_status("open", path, ENOENT);
    return it->second;
  }
  Result<std::unique_ptr<WritableFile>> create_file(const std::string&, CreateMode,
                                                    mode_t) override {
    return unimplemented("read-only");
  }
  Status rename(const std::string&, const std::string&) override {
    return unimplemented("read-only");
  }
  Status sync_dir(const std::string&) override { return unimplemented("read-only"); }
  Result<std::vector<std::string>> list_dir(const std::string&) override {
    return unimplemented("read-only");
  }
  Status remove(const std::string&) override { return unimplemented("read-only"); }
  Status make_dir(const std::string&, mode_t) override { return unimplemented("read-only"); }
  Result<uint64_t> file_size(const std::string& path) override {
    return (uint64_t)files.at(path).size();
  }
  Result<bool> exists(const std::string& path) override { return files.count(path) != 0; }
};

// ---- sessions from a real pool ----------------------------------------------------------------

CacheLayout small_layout(CacheStorage st = CacheStorage::kQ4, int window = 5) {
  auto l = CacheLayout::create(cache::uniform_latent_spec(1, {16}, {16}, st, 8, window));
  EXPECT_TRUE(l.is_ok()) << l.status().to_string();
  return std::move(l).value();
}

BlockPool make_pool(const CacheLayout& l) {
  auto p = BlockPool::create(l, 64 * l.block_bytes());
  EXPECT_TRUE(p.is_ok()) << p.status().to_string();
  return std::move(p).value();
}

// A pool with sequence 1 of `length` random tokens.
BlockPool filled_pool(const CacheLayout& l, int64_t length, uint32_t seed) {
  BlockPool pool = make_pool(l);
  auto plan =
      pool.plan(std::vector<PoolRequest>{PoolRequest::create(1), PoolRequest::append(1, length)});
  EXPECT_TRUE(plan.is_ok());
  EXPECT_TRUE(pool.commit(*plan).is_ok());
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (int64_t p = 0; p < length; ++p) {
    for (Proj kv : {Proj::kKey, Proj::kValue}) {
      std::vector<float> z(16);
      for (auto& v : z) v = normal(rng);
      EXPECT_TRUE(pool.write_token(1, p, 0, kv, 0, z.data()).is_ok());
    }
  }
  return pool;
}

SessionFile session_from(const BlockPool& pool, SeqId s, const std::string& name) {
  SessionFile f;
  f.name = name;
  f.owner_uid = 1000;
  f.model_name = "ref-mha";
  f.model_fingerprint = "xxh3-64:0123456789abcdef";
  f.cache_description = pool.layout().describe();
  f.image = *pool.export_sequence(s);
  for (int64_t i = 0; i < f.image.length; ++i) f.tokens.push_back((int32_t)(i * 7 + 1));
  f.metadata_json = R"({"temperature":0.7,"created":"2024-01-01T00:00:00Z","note":"é \"q\""})";
  return f;
}

void expect_same(const SessionFile& a, const SessionFile& b) {
  EXPECT_EQ(a.name, b.name);
  EXPECT_EQ(a.owner_uid, b.owner_uid);
  EXPECT_EQ(a.model_name, b.model_name);
  EXPECT_EQ(a.model_fingerprint, b.model_fingerprint);
  EXPECT_EQ(a.cache_description, b.cache_description);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.metadata_json, b.metadata_json);
  EXPECT_EQ(a.image.length, b.image.length);
  EXPECT_EQ(a.image.window_begin, b.image.window_begin);
  EXPECT_EQ(a.image.layout_hash, b.image.layout_hash);
  EXPECT_TRUE(a.image.bytes == b.image.bytes);
}

// Every value a reader of sequence s sees.
std::vector<float> reads(const BlockPool& pool, SeqId s) {
  std::vector<float> out;
  const int64_t T = *pool.length(s);
  for (int64_t p = 0; p < T; ++p) {
    for (Proj kv : {Proj::kKey, Proj::kValue}) {
      std::vector<float> z(16);
      EXPECT_TRUE(pool.read_token(s, p, 0, kv, 0, z.data()).is_ok());
      out.insert(out.end(), z.begin(), z.end());
    }
  }
  return out;
}

// ---- the format, rebuilt independently (a check of docs/formats.md) ---------------------------

constexpr uint64_t kMaxRead = uint64_t{1} << 30;

uint32_t tag(const char (&s)[5]) {
  uint32_t t;
  std::memcpy(&t, s, 4);  // little-endian host: the tag's bytes in file order
  return t;
}

struct Part {
  uint32_t tag;
  std::string payload;
};

void put32(std::string& s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s += (char)(v >> (8 * i));
}
void put64(std::string& s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s += (char)(v >> (8 * i));
}
uint64_t get64(const std::string& s, size_t off) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= (uint64_t)(uint8_t)s[off + i] << (8 * i);
  return v;
}
void set32(std::string& s, size_t off, uint32_t v) {
  for (int i = 0; i < 4; ++i) s[off + i] = (char)(v >> (8 * i));
}
void set64(std::string& s, size_t off, uint64_t v) {
  for (int i = 0; i < 8; ++i) s[off + i] = (char)(v >> (8 * i));
}

std::string header(uint32_t version = 1, uint32_t flags = 0) {
  std::string h = "PALUSESS";
  put32(h, version);
  put32(h, 32);
  put32(h, flags);
  put32(h, 0);
  put64(h, XXH3_64bits(h.data(), h.size()));
  return h;
}

void reseal_header(std::string& f) {
  const uint32_t len = (uint32_t)(uint8_t)f[12] | (uint32_t)(uint8_t)f[13] << 8;
  set64(f, len - 8, XXH3_64bits(f.data(), len - 8));
}

std::string chunk(uint32_t t, uint32_t index, const std::string& payload) {
  std::string c;
  put32(c, t);
  put32(c, index);
  put64(c, payload.size());
  c += payload;
  put64(c, XXH3_64bits(c.data(), c.size()));
  return c;
}

// header + parts (indices 0..n−1) + END counting them (unless with_end is false).
std::string assemble(const std::vector<Part>& parts, bool with_end = true) {
  std::string f = header();
  uint32_t i = 0;
  for (const Part& p : parts) f += chunk(p.tag, i++, p.payload);
  if (with_end) {
    std::string count;
    put64(count, i);
    f += chunk(tag("END "), i, count);
  }
  return f;
}

struct ChunkAt {
  size_t begin;  // offset of the chunk header
  uint32_t tag;
  uint64_t length;
  size_t end() const { return begin + 16 + length + 8; }
};

std::vector<ChunkAt> chunks_of(const std::string& f) {
  std::vector<ChunkAt> out;
  for (size_t off = 32; off + 16 <= f.size();) {
    ChunkAt c{off, 0, get64(f, off + 8)};
    std::memcpy(&c.tag, f.data() + off, 4);
    out.push_back(c);
    off = c.end();
  }
  return out;
}

// The parts of a file (without END).
std::vector<Part> parts_of(const std::string& f) {
  std::vector<Part> parts;
  for (const ChunkAt& c : chunks_of(f)) {
    if (c.tag == tag("END ")) break;
    parts.push_back({c.tag, f.substr(c.begin + 16, c.length)});
  }
  return parts;
}

// Recomputes chunk c's checksum (after editing its header or payload in place).
void reseal(std::string& f, const ChunkAt& c) {
  set64(f, c.begin + 16 + c.length, XXH3_64bits(f.data() + c.begin, 16 + c.length));
}

std::string chunk_label(size_t k, uint32_t t) {
  static const std::map<std::string, std::string> names = {
      {"META", "metadata"}, {"TOKS", "tokens"}, {"IMAG", "image"}, {"END ", "end"}};
  return "chunk " + std::to_string(k) + " (" + names.at(std::string((const char*)&t, 4)) + ")";
}

// A good file (several image chunks) as bytes, and the session it holds.
struct Good {
  SessionFile session;
  std::string bytes;
};

Good good_file() {
  TempDir dir;
  RealFileSystem fs;
  const CacheLayout l = small_layout();
  BlockPool pool = filled_pool(l, 37, 1);
  Good g;
  g.session = session_from(pool, 1, "chat-1");
  const std::string p = dir.file("good.session");
  EXPECT_TRUE(write_session_file(fs, p, g.session, 500).is_ok());
  g.bytes = *fs.read_file(p, kMaxRead);
  ::unlink(p.c_str());
  return g;
}

// ---- round trip
// ----------------------------------------------------------------------------------

TEST(SessionFileTest, RoundTripThroughAFileIntoAnotherPool) {
  TempDir dir;
  RealFileSystem fs;
  struct Case {
    CacheStorage storage;
    int window;
    int64_t length;
    size_t chunk_bytes;
  };
  for (const Case& c : {Case{CacheStorage::kQ4, 5, 37, kSessionImageChunkBytes},
                        Case{CacheStorage::kQ4, 5, 37, 100}, Case{CacheStorage::kQ2, 5, 0, 64},
                        Case{CacheStorage::kF16, 0, 0, 64}, Case{CacheStorage::kF16, 0, 8, 1},
                        Case{CacheStorage::kQ2, 0, 100, 4096}}) {
    SCOPED_TRACE(std::string(cache::storage_name(c.storage)) + " window " +
                 std::to_string(c.window) + " length " + std::to_string(c.length) + " chunk " +
                 std::to_string(c.chunk_bytes));
    const CacheLayout l = small_layout(c.storage, c.window);
    BlockPool a = filled_pool(l, c.length, 3);
    const SessionFile saved = session_from(a, 1, "s");
    const std::string p = dir.file("s.session");
    ASSERT_OK(write_session_file(fs, p, saved, c.chunk_bytes));
    auto loaded = read_session_file(fs, p, kMaxRead);
    ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
    expect_same(*loaded, saved);
    ASSERT_OK(check_session_binding(*loaded, saved.model_fingerprint, cache::layout_hash(l), p));

    BlockPool b = make_pool(l);
    auto plan = b.plan(std::vector<PoolRequest>{PoolRequest::create(9), PoolRequest::create(4),
                                                PoolRequest::append(4, loaded->image.length)});
    ASSERT_TRUE(plan.is_ok());
    ASSERT_OK(b.commit(*plan));
    ASSERT_OK(b.import_sequence(4, loaded->image));
    ASSERT_OK(b.check_invariants());
    EXPECT_EQ(reads(b, 4), reads(a, 1));
    EXPECT_EQ(*b.window_begin(4), *a.window_begin(1));
    EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{"s.session"});
  }
}

TEST(SessionFileTest, TheLayoutIsTheDocumentedOne) {
  const Good g = good_file();
  // Rebuilt from the parts with the test's own encoder: byte-identical.
  EXPECT_TRUE(assemble(parts_of(g.bytes)) == g.bytes);
  const auto cs = chunks_of(g.bytes);
  ASSERT_EQ(cs.size(), 2 + 4 + 1u);  // META, TOKS, 4 image chunks of <= 500 bytes, END
  EXPECT_EQ(cs[0].tag, tag("META"));
  EXPECT_EQ(cs[1].tag, tag("TOKS"));
  EXPECT_EQ(cs[1].length, 4 * 37u);
  for (size_t k = 2; k < 6; ++k) EXPECT_EQ(cs[k].tag, tag("IMAG"));
  EXPECT_EQ(cs[6].tag, tag("END "));
  EXPECT_EQ(cs.back().end(), g.bytes.size());
  const json meta = json::parse(g.bytes.substr(cs[0].begin + 16, cs[0].length));
  EXPECT_EQ(meta["format"], "palu-session");
  EXPECT_EQ(meta["name"], "chat-1");
  EXPECT_EQ(meta["length"], 37);
  EXPECT_EQ(meta["token_count"], 37);
  EXPECT_EQ(meta["image_bytes"], g.session.image.bytes.size());
  char hash[32];
  std::snprintf(hash, sizeof hash, "0x%016llx", (unsigned long long)g.session.image.layout_hash);
  EXPECT_EQ(meta["layout_hash"], hash);
}

TEST(SessionFileTest, WriterRefusesInconsistentContents) {
  TempDir dir;
  RealFileSystem fs;
  const CacheLayout l = small_layout();
  BlockPool pool = filled_pool(l, 10, 1);
  SessionFile f = session_from(pool, 1, "x");
  const std::string p = dir.file("x.session");
  SessionFile bad = f;
  bad.tokens.pop_back();
  EXPECT_EQ(write_session_file(fs, p, bad).code(), StatusCode::kInvalidArgument);
  bad = f;
  bad.tokens[3] = -1;
  EXPECT_EQ(write_session_file(fs, p, bad).code(), StatusCode::kInvalidArgument);
  bad = f;
  bad.image.window_begin = 11;
  EXPECT_EQ(write_session_file(fs, p, bad).code(), StatusCode::kInvalidArgument);
  bad = f;
  bad.metadata_json = "\xff\xfe";
  const Status utf8 = write_session_file(fs, p, bad);
  EXPECT_EQ(utf8.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(utf8.message(), "UTF-8")) << utf8.to_string();
  EXPECT_EQ(write_session_file(fs, p, f, 0).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{});
}

// ---- corrupt files
// ---------------------------------------------------------------------------------

struct CorruptCase {
  std::string name;
  std::string bytes;
  StatusCode code;
  std::string needle;  // part of the message
};

std::vector<CorruptCase> corrupt_cases(const Good& g) {
  const std::string& f = g.bytes;
  const auto cs = chunks_of(f);
  const std::vector<Part> parts = parts_of(f);
  std::vector<CorruptCase> out;
  auto add = [&](std::string name, std::string bytes, StatusCode code, std::string needle) {
    out.push_back({std::move(name), std::move(bytes), code, std::move(needle)});
  };
  const StatusCode kLoss = StatusCode::kDataLoss;

  // ---- header ----
  add("empty file", "", kLoss, "not a palu session file");
  add("text file", "hello, this is not a session file at all", kLoss, "not a palu session file");
  {
    std::string b = f;
    b[0] = 'X';
    add("bad magic", b, kLoss, "not a palu session file");
  }
  add("5 bytes of magic", f.substr(0, 5), kLoss, "truncated: 5 bytes");
  add("12 bytes", f.substr(0, 12), kLoss, "truncated: 12 bytes");
  add("header cut at 20", f.substr(0, 20), kLoss, "truncated: the header");
  {
    std::string b = f;
    set32(b, 8, 2);
    reseal_header(b);
    add("future version", b, StatusCode::kFailedPrecondition,
        "format version 2 is not supported (this palu reads version 1");
  }
  {
    std::string b = f;
    set32(b, 8, 0);
    reseal_header(b);
    add("version 0", b, kLoss, "format version 0");
  }
  {
    std::string b = f;
    set32(b, 16, 1);
    reseal_header(b);
    add("unknown flags", b, StatusCode::kFailedPrecondition, "unsupported header flags");
  }
  {
    std::string b = f;
    b[8] ^= 0x02;  // version 3, not resealed
    add("flipped version byte", b, kLoss, "header checksum mismatch");
  }
  {
    std::string b = f;
    set32(b, 12, 0x80000000u);
    add("header length 2^31", b, kLoss, "header length must be in [32, 4096], got 2147483648");
  }
  {
    std::string b = f;
    set32(b, 12, 8);
    add("header length 8", b, kLoss, "header length must be in");
  }
  {
    std::string b = f.substr(0, 24) + std::string(8, '\0') + f.substr(24);  // 40-byte header
    set32(b, 12, 40);
    reseal_header(b);
    add("v1 header of 40 bytes", b, kLoss, "version 1 header length must be 32");
  }

  // ---- every chunk: truncations, flips, lying lengths ----
  // Once META is read, the tokens and image it announces must fit in the bytes left: most
  // truncations are caught there, before anything is allocated.
  const uint64_t announced = 4 * g.session.tokens.size() + g.session.image.bytes.size();
  auto cut = [&](size_t k, size_t at, std::string specific) {
    if (k >= 1 && at - cs[0].end() < announced)
      return std::string("37 tokens and 1792 image bytes do not fit in the ") +
             std::to_string(at - cs[0].end()) + " bytes left";
    return specific;
  };
  for (size_t k = 0; k < cs.size(); ++k) {
    const ChunkAt& c = cs[k];
    const std::string label = chunk_label(k, c.tag);
    const std::string K = "chunk " + std::to_string(k);
    add("cut before " + label, f.substr(0, c.begin), kLoss,
        cut(k, c.begin, "truncated: the file ends before the END chunk (" + K + ")"));
    add("cut in the header of " + label, f.substr(0, c.begin + 9), kLoss,
        cut(k, c.begin + 9, "truncated: " + K + " header needs 16 bytes"));
    if (c.length > 1) {
      const size_t at = c.begin + 16 + c.length / 2;
      add("cut in the payload of " + label, f.substr(0, at), kLoss,
          cut(k, at, label + " length " + std::to_string(c.length) + " exceeds the"));
    }
    add("cut in the checksum of " + label, f.substr(0, c.end() - 3), kLoss,
        cut(k, c.end() - 3, label + " length"));
    {
      std::string b = f;
      b[c.begin + 16 + c.length / 2] ^= 0x40;
      add("flipped payload byte of " + label, b, kLoss, label + " checksum mismatch");
    }
    {
      std::string b = f;
      b[c.end() - 1] ^= 0x01;
      add("flipped checksum byte of " + label, b, kLoss, label + " checksum mismatch");
    }
    for (uint64_t lie : {uint64_t{1} << 63, ~uint64_t{0}, (uint64_t)(f.size() - c.begin)}) {
      std::string b = f;
      set64(b, c.begin + 8, lie);
      add("length " + std::to_string(lie) + " in " + label, b, kLoss,
          label + " length " + std::to_string(lie) + " exceeds the");
    }
    {
      // Shorter by one, checksum recomputed: one stray byte before the next chunk.
      std::string b = f;
      ChunkAt shorter = c;
      shorter.length = c.length - 1;
      set64(b, c.begin + 8, shorter.length);
      reseal(b, shorter);
      add("resealed length - 1 in " + label, b, kLoss, "");
    }
    {
      std::string b = f;
      set32(b, c.begin + 4, (uint32_t)k + 1);
      reseal(b, c);
      add("wrong index in " + label, b, kLoss,
          label + " has index " + std::to_string(k + 1) + " (chunks missing or out of order)");
    }
  }

  // ---- lying or inconsistent metadata (resealed: only the validation catches it) ----
  const json meta = json::parse(parts[0].payload);
  auto with_meta = [&](const std::string& name, const std::function<void(json&)>& edit,
                       std::string needle) {
    json m = meta;
    edit(m);
    std::vector<Part> p = parts;
    p[0].payload = m.dump();
    add("metadata: " + name, assemble(p), kLoss, std::move(needle));
  };
  with_meta(
      "token_count 2^62", [](json& m) { m["token_count"] = uint64_t{1} << 62; },
      "token_count 4611686018427387904 differs from length 37");
  with_meta(
      "length and token_count 2^39",
      [](json& m) { m["token_count"] = m["length"] = uint64_t{1} << 39; },
      "549755813888 tokens and 1792 image bytes do not fit in the");
  with_meta(
      "image_bytes 2^63", [](json& m) { m["image_bytes"] = uint64_t{1} << 63; },
      "9223372036854775808 image bytes do not fit");
  with_meta(
      "image_bytes + 1", [&](json& m) { m["image_bytes"] = g.session.image.bytes.size() + 1; },
      "the image has 1792 of 1793 bytes");
  with_meta(
      "image_bytes - 1", [&](json& m) { m["image_bytes"] = g.session.image.bytes.size() - 1; },
      "chunk 5 (image) length 292 must be in [1, 291]");
  with_meta(
      "length 2^41", [](json& m) { m["token_count"] = m["length"] = uint64_t{1} << 41; },
      "length 2199023255552 exceeds");
  with_meta(
      "window_begin > length", [](json& m) { m["window_begin"] = 38; },
      "window_begin 38 exceeds length 37");
  with_meta(
      "missing name", [](json& m) { m.erase("name"); }, "field 'name' is missing");
  with_meta(
      "negative owner", [](json& m) { m["owner_uid"] = -1; },
      "field 'owner_uid' is missing or not a non-negative integer");
  with_meta(
      "owner 2^32", [](json& m) { m["owner_uid"] = uint64_t{1} << 32; }, "owner_uid");
  with_meta(
      "length as a string", [](json& m) { m["length"] = "37"; }, "field 'length'");
  with_meta(
      "layout_hash not hex", [](json& m) { m["layout_hash"] = "0xzz"; },
      "layout_hash \"0xzz\" is not 0x + 16 hex digits");
  with_meta(
      "format", [](json& m) { m["format"] = "other"; }, "format is \"other\"");
  {
    std::vector<Part> p = parts;
    p[0].payload = "{\"name\": ";
    add("metadata: not JSON", assemble(p), kLoss, "chunk 0 (metadata): not a JSON object");
    // Built as text: a JSON library would recurse 5000 deep to write it.
    p[0].payload =
        "{\"x\":" + std::string(5000, '[') + std::string(5000, ']') + "," + meta.dump().substr(1);
    add("metadata: deep nesting", assemble(p), kLoss, "JSON nested deeper than 4");
    p[0].payload = "[1, 2]";
    add("metadata: an array", assemble(p), kLoss, "not a JSON object");
    p[0].payload = std::string(kSessionMaxMetaBytes + 1, ' ');
    add("metadata over 1 MiB", assemble(p), kLoss, "exceeds the limit of 1048576 bytes");
  }

  // ---- tokens, image, order, END ----
  {
    std::vector<Part> p = parts;
    set32(p[1].payload, 12, (uint32_t)-5);
    add("negative token", assemble(p), kLoss, "chunk 1 (tokens): token 3 is -5");
    p = parts;
    p[1].payload.resize(p[1].payload.size() - 4);
    add("tokens short by one", assemble(p), kLoss,
        "chunk 1 (tokens) length 144, expected 148 (37 tokens)");
  }
  {
    std::vector<Part> p = parts;
    p.erase(p.begin() + 3);
    add("an image chunk missing", assemble(p), kLoss, "1792 image bytes do not fit");
    p = parts;
    p.push_back({tag("IMAG"), "x"});
    add("an image chunk too many", assemble(p), kLoss, "an image chunk after the whole image");
    p = parts;
    p.insert(p.begin() + 2, {tag("IMAG"), ""});
    add("an empty image chunk", assemble(p), kLoss, "must be in [1, ");
    p = parts;
    std::swap(p[1], p[2]);
    add("image before tokens", assemble(p), kLoss, "chunk 1 (image): expected the tokens chunk");
    p = parts;
    std::swap(p[0], p[1]);
    add("tokens before metadata", assemble(p), kLoss, "expected the metadata chunk first");
    p = parts;
    p.insert(p.begin() + 1, parts[0]);
    add("two metadata chunks", assemble(p), kLoss, "a second metadata chunk");
    p = parts;
    p.insert(p.begin() + 2, parts[1]);
    add("two tokens chunks", assemble(p), kLoss, "a second tokens chunk");
    p = parts;
    p.insert(p.begin() + 2, {tag("ABCD"), "?"});
    add("unknown critical chunk", assemble(p), kLoss,
        "chunk 2 ('ABCD') has an unknown type 'ABCD'");
    p = parts;
    p.insert(p.begin() + 2, {0x00ff00ffu, "?"});
    add("unprintable chunk tag", assemble(p), kLoss, "unknown type 0x00ff00ff");
    add("missing END chunk", assemble(parts, false), kLoss,
        "truncated: the file ends before the END chunk (chunk 6)");
    std::string b = assemble(parts, false);
    std::string count;
    put64(count, 5);
    add("END counts 5 chunks", b + chunk(tag("END "), 6, count), kLoss,
        "chunk 6 (end) counts 5 chunks before it, the file has 6");
    add("END of 4 bytes", b + chunk(tag("END "), 6, "abcd"), kLoss,
        "chunk 6 (end) length 4, expected 8");
  }
  add("garbage after END", f + "garbage", kLoss, "7 bytes of garbage after the END chunk");
  add("a zero byte after END", f + std::string(1, '\0'), kLoss, "1 bytes of garbage");
  return out;
}

TEST(SessionFileTest, CorruptFilesAreRefusedWithTheExpectedError) {
  const Good g = good_file();
  BytesFileSystem fs;
  const std::string path = "/sessions/chat-1.session";
  const auto cases = corrupt_cases(g);
  EXPECT_GT(cases.size(), 100u);
  for (const CorruptCase& c : cases) {
    SCOPED_TRACE(c.name);
    fs.files[path] = c.bytes;
    auto r = read_session_file(fs, path, kMaxRead);
    ASSERT_FALSE(r.is_ok()) << "accepted";
    EXPECT_EQ(r.status().code(), c.code) << r.status().to_string();
    EXPECT_TRUE(contains(r.status().message(), c.needle))
        << r.status().to_string() << "\n  expected to contain: " << c.needle;
    EXPECT_EQ(r.status().message().rfind(path + ": ", 0), 0u) << r.status().to_string();
  }
  // The good file itself reads back.
  fs.files[path] = g.bytes;
  auto ok = read_session_file(fs, path, kMaxRead);
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  expect_same(*ok, g.session);
  // Over the caller's limit: refused before reading.
  auto big = read_session_file(fs, path, g.bytes.size() - 1);
  EXPECT_EQ(big.status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(contains(big.status().message(), "more than the limit of"))
      << big.status().to_string();
  EXPECT_EQ(read_session_file(fs, "/nope", kMaxRead).status().code(), StatusCode::kNotFound);
}

// Every byte is covered by a checksum: any single flipped byte is refused.
TEST(SessionFileTest, EveryFlippedByteIsDetected) {
  const Good g = good_file();
  BytesFileSystem fs;
  for (size_t i = 0; i < g.bytes.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80, 0xff}) {
      std::string b = g.bytes;
      b[i] = (char)(b[i] ^ mask);
      fs.files["f"] = b;
      auto r = read_session_file(fs, "f", kMaxRead);
      ASSERT_FALSE(r.is_ok()) << "byte " << i << " ^ " << (int)mask << " accepted";
      ASSERT_EQ(r.status().code(), StatusCode::kDataLoss)
          << "byte " << i << ": " << r.status().to_string();
    }
  }
  // And every truncation.
  for (size_t n = 0; n < g.bytes.size(); ++n) {
    fs.files["f"] = g.bytes.substr(0, n);
    auto r = read_session_file(fs, "f", kMaxRead);
    ASSERT_EQ(r.status().code(), StatusCode::kDataLoss) << "cut at " << n;
  }
}

// Ancillary chunks (lowercase tag) from a later writer are verified and skipped.
TEST(SessionFileTest, AncillaryChunksAreSkipped) {
  const Good g = good_file();
  std::vector<Part> p = parts_of(g.bytes);
  p.insert(p.begin() + 2, {tag("note"), "added by a later palu"});
  p.insert(p.begin(), {tag("zzzz"), ""});
  BytesFileSystem fs;
  fs.files["f"] = assemble(p);
  auto r = read_session_file(fs, "f", kMaxRead);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  expect_same(*r, g.session);
  // ... but their checksums are still checked.
  std::string b = assemble(p);
  b[32 + 24 + 16 + 2] ^= 1;  // in META's payload, after the empty "zzzz" chunk (24 bytes)
  fs.files["f"] = b;
  EXPECT_EQ(read_session_file(fs, "f", kMaxRead).status().code(), StatusCode::kDataLoss);
}

// ---- binding, move aside -----------------------------------------------------------------------

TEST(SessionFileTest, BindingToModelAndLayout) {
  const Good g = good_file();
  const SessionFile& s = g.session;
  const uint64_t h = s.image.layout_hash;
  ASSERT_OK(check_session_binding(s, s.model_fingerprint, h, "/d/chat-1.session"));
  const Status other_model = check_session_binding(s, "xxh3-64:ffffffffffffffff", h, "/d/x");
  EXPECT_EQ(other_model.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(other_model.message(),
            "session file /d/x was saved by model ref-mha (fingerprint xxh3-64:0123456789abcdef), "
            "this model is xxh3-64:ffffffffffffffff");
  const Status no_path = check_session_binding(s, "xxh3-64:ffffffffffffffff", h);
  EXPECT_TRUE(contains(no_path.message(), "session 'chat-1' was saved by model ref-mha"))
      << no_path.to_string();
  const CacheLayout q2 = small_layout(CacheStorage::kQ2, 5);
  const Status other_layout =
      check_session_binding(s, s.model_fingerprint, cache::layout_hash(q2), "/d/x");
  EXPECT_EQ(other_layout.code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(contains(other_layout.message(), "saved with cache layout"))
      << other_layout.to_string();
  EXPECT_TRUE(contains(other_layout.message(), s.cache_description)) << other_layout.to_string();
}

TEST(SessionFileTest, MoveAsideKeepsTheCorruptFile) {
  TempDir dir;
  RealFileSystem fs;
  const std::string p = dir.file("chat.session");
  ASSERT_OK(write_file_atomically(fs, p, "corrupt one"));
  EXPECT_EQ(read_session_file(fs, p, kMaxRead).status().code(), StatusCode::kDataLoss);
  auto moved = move_aside(fs, p);
  ASSERT_TRUE(moved.is_ok()) << moved.status().to_string();
  EXPECT_TRUE(std::regex_match(*moved, std::regex(".*/chat\\.session\\.corrupt-[0-9]+"))) << *moved;
  EXPECT_FALSE(*fs.exists(p));
  EXPECT_EQ(*fs.read_file(*moved, 100), "corrupt one");
  // A second one in the same second gets its own name.
  ASSERT_OK(write_file_atomically(fs, p, "corrupt two"));
  auto moved2 = move_aside(fs, p);
  ASSERT_TRUE(moved2.is_ok()) << moved2.status().to_string();
  EXPECT_NE(*moved2, *moved);
  EXPECT_EQ(*fs.read_file(*moved2, 100), "corrupt two");
  EXPECT_EQ(*fs.read_file(*moved, 100), "corrupt one");
  EXPECT_EQ(move_aside(fs, p).status().code(), StatusCode::kNotFound);
}

// ---- crash safety
// ----------------------------------------------------------------------------------

struct Saves {
  SessionFile v1, v2;
};

Saves two_versions() {
  const CacheLayout l = small_layout();
  BlockPool pool = filled_pool(l, 30, 1);
  Saves s;
  s.v1 = session_from(pool, 1, "chat");
  auto plan = pool.plan(PoolRequest::append(1, 20));
  EXPECT_TRUE(plan.is_ok());
  EXPECT_TRUE(pool.commit(*plan).is_ok());
  s.v2 = session_from(pool, 1, "chat");
  s.v2.metadata_json = "{\"v\":2}";
  return s;
}

// Every write and every fsync of a save failed in turn: the save fails, the previous file
// reads back whole (after the final directory fsync failed, the new one does), and after a
// power cut (drop_unsynced) the previous file is there.
TEST(SessionFileCrashTest, AFailedSaveLeavesThePreviousFile) {
  TempDir dir;
  RealFileSystem real;
  FaultyFileSystem fs(real);
  const Saves s = two_versions();
  const std::string p = dir.file("chat.session");
  ASSERT_OK(write_session_file(fs, p, s.v1, 256));
  const int64_t w0 = fs.writes(), s0 = fs.syncs();
  ASSERT_OK(write_session_file(fs, p, s.v2, 256));
  const int64_t writes = fs.writes() - w0, syncs = fs.syncs() - s0;
  EXPECT_GT(writes, 5);  // header, META, TOKS, several IMAG, END
  EXPECT_EQ(syncs, 2);

  for (int kind = 0; kind < 2; ++kind) {
    for (int64_t n = 1; n <= (kind == 0 ? writes : syncs); ++n) {
      SCOPED_TRACE((kind == 0 ? "write " : "fsync ") + std::to_string(n));
      ASSERT_OK(write_session_file(fs, p, s.v1, 256));
      if (kind == 0)
        fs.fail_write(n, EIO, /*and_after=*/n % 2 == 0);
      else
        fs.fail_sync(n, EIO);
      const Status st = write_session_file(fs, p, s.v2, 256);
      fs.clear_faults();
      EXPECT_EQ(st.code(), StatusCode::kIoError) << st.to_string();
      auto now = read_session_file(fs, p, kMaxRead);
      ASSERT_TRUE(now.is_ok()) << now.status().to_string();
      expect_same(*now, kind == 1 && n == syncs ? s.v2 : s.v1);
      ASSERT_OK(fs.drop_unsynced());
      auto after_crash = read_session_file(fs, p, kMaxRead);
      ASSERT_TRUE(after_crash.is_ok()) << after_crash.status().to_string();
      expect_same(*after_crash, s.v1);
      EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{"chat.session"});
    }
  }
}

// A save interrupted after its data was written but before anything was fsynced (kill -9 or
// a power cut at that moment): the previous version survives; a completed save survives too.
TEST(SessionFileCrashTest, PowerCutKeepsTheLastCompletedSave) {
  TempDir dir;
  RealFileSystem real;
  FaultyFileSystem fs(real);
  const Saves s = two_versions();
  const std::string p = dir.file("chat.session");
  ASSERT_OK(write_session_file(fs, p, s.v1));
  ASSERT_OK(fs.drop_unsynced());
  expect_same(*read_session_file(fs, p, kMaxRead), s.v1);
  // The process dies at the first fsync: every byte of v2 was written to the temp file.
  fs.fail_sync(1, EIO, /*and_after=*/true);
  EXPECT_FALSE(write_session_file(fs, p, s.v2).is_ok());
  fs.clear_faults();
  ASSERT_OK(fs.drop_unsynced());
  expect_same(*read_session_file(fs, p, kMaxRead), s.v1);
  // Completed: the new version is durable.
  ASSERT_OK(write_session_file(fs, p, s.v2));
  ASSERT_OK(fs.drop_unsynced());
  expect_same(*read_session_file(fs, p, kMaxRead), s.v2);
  EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{"chat.session"});
}

TEST(SessionFileCrashTest, DiskFullIsAnIoErrorAndKeepsThePreviousFile) {
  TempDir dir;
  RealFileSystem real;
  FaultyFileSystem fs(real);
  const Saves s = two_versions();
  const std::string p = dir.file("chat.session");
  ASSERT_OK(write_session_file(fs, p, s.v1));
  for (uint64_t room : {uint64_t{0}, uint64_t{20}, uint64_t{600}, uint64_t{2000}}) {
    SCOPED_TRACE("room " + std::to_string(room));
    fs.disk_full_after(room);
    const Status st = write_session_file(fs, p, s.v2, 512);
    fs.clear_faults();
    EXPECT_EQ(st.code(), StatusCode::kIoError);
    EXPECT_TRUE(contains(st.message(), "disk full")) << st.to_string();
    EXPECT_TRUE(contains(st.message(), p)) << st.to_string();
    expect_same(*read_session_file(fs, p, kMaxRead), s.v1);
    EXPECT_EQ(*fs.list_dir(dir.path()), std::vector<std::string>{"chat.session"});
  }
}

}  // namespace
}  // namespace palu::daemon
