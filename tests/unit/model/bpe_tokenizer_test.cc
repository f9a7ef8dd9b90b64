// Byte-level BPE: llama.cpp's Llama-3 vectors with Meta's tokenizer.model, exact round trips
// (wikitext, random UTF-8, random invalid bytes), tokenizer.json / in-memory vocabularies,
// the loader, and a corrupt-input table per format.
#include "model/bpe_tokenizer.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>

#include "model/tokenizer_loader.h"
#include "tests/common/test_paths.h"

namespace palu::model {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Ids = std::vector<int32_t>;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_file(const fs::path& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back((char)cp);
  } else if (cp < 0x800) {
    out->push_back((char)(0xC0 | (cp >> 6)));
    out->push_back((char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back((char)(0xE0 | (cp >> 12)));
    out->push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back((char)(0x80 | (cp & 0x3F)));
  } else {
    out->push_back((char)(0xF0 | (cp >> 18)));
    out->push_back((char)(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back((char)(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back((char)(0x80 | (cp & 0x3F)));
  }
}

// GPT-2's byte → unicode map (the byte-level alphabet of tokenizer.json vocabularies).
std::string byte_level_char(int b) {
  int next = 256;
  for (int x = 0; x < 256; ++x) {
    const bool printable = (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE;
    const int cp = printable ? x : next++;
    if (x == b) {
      std::string s;
      append_utf8((uint32_t)cp, &s);
      return s;
    }
  }
  return "";
}

struct TempDir {
  TempDir() {
    static int counter = 0;
    path = fs::temp_directory_path() /
           ("palu_bpe_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path path;
};

// ---------------------------------------------------------------------------------------------
// Llama-3 with Meta's tokenizer.model.
class BpeLlama3Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = load_tokenizer_file(palu::testing::shared_file("tokenizers/llama3/tokenizer.model"));
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    owned_ = std::move(t).value();
    tok_ = dynamic_cast<const BpeTokenizer*>(owned_.get());
  }
  static void TearDownTestSuite() {
    tok_ = nullptr;
    owned_.reset();
  }
  void SetUp() override { ASSERT_NE(tok_, nullptr) << "tokenizer.model did not load as BPE"; }

  static Ids encode(std::string_view text, BpeTokenizer::EncodeOptions opt = {}) {
    auto r = tok_->encode(text, opt);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? r.value() : Ids{};
  }
  static void expect_round_trip(const std::string& text, const std::string& what) {
    auto ids = tok_->encode(text, false);
    ASSERT_TRUE(ids.is_ok()) << what << ": " << ids.status().to_string();
    auto back = tok_->decode(ids.value());
    ASSERT_TRUE(back.is_ok()) << what << ": " << back.status().to_string();
    ASSERT_EQ(back.value(), text) << what;
    std::string streamed;
    int32_t prev = -1;
    for (int32_t id : ids.value()) {
      ASSERT_LT(id, 128000) << what << ": a special token came out of plain text";
      streamed += tok_->token_bytes(id, prev);
      prev = id;
    }
    ASSERT_EQ(streamed, text) << what << ": token_bytes do not concatenate to the text";
  }

  static std::unique_ptr<Tokenizer> owned_;
  static const BpeTokenizer* tok_;
};
std::unique_ptr<Tokenizer> BpeLlama3Test::owned_;
const BpeTokenizer* BpeLlama3Test::tok_ = nullptr;

TEST_F(BpeLlama3Test, VocabularyLayout) {
  EXPECT_EQ(tok_->kind(), "bpe");
  EXPECT_EQ(tok_->vocab_size(), 128256);
  EXPECT_EQ(tok_->bos_id(), 128000);
  EXPECT_EQ(tok_->eos_id(), 128001);
  EXPECT_EQ(tok_->merge_count(), 280147u);  // every two-token split of every token
  EXPECT_EQ(tok_->special_token_id("<|begin_of_text|>"), 128000);
  EXPECT_EQ(tok_->special_token_id("<|end_of_text|>"), 128001);
  EXPECT_EQ(tok_->special_token_id("<|reserved_special_token_0|>"), 128002);
  EXPECT_EQ(tok_->special_token_id("<|reserved_special_token_3|>"), 128005);
  EXPECT_EQ(tok_->special_token_id("<|start_header_id|>"), 128006);
  EXPECT_EQ(tok_->special_token_id("<|end_header_id|>"), 128007);
  EXPECT_EQ(tok_->special_token_id("<|reserved_special_token_4|>"), 128008);
  EXPECT_EQ(tok_->special_token_id("<|eot_id|>"), 128009);
  EXPECT_EQ(tok_->special_token_id("<|reserved_special_token_5|>"), 128010);
  EXPECT_EQ(tok_->special_token_id("<|reserved_special_token_250|>"), 128255);
  EXPECT_EQ(tok_->special_token_id("Hello"), -1);
  EXPECT_EQ(tok_->token_type(128009), BpeTokenType::kControl);
  EXPECT_EQ(tok_->token_type(9906), BpeTokenType::kNormal);
}

TEST_F(BpeLlama3Test, LlamaCppVectorsMatch) {
  const std::string dir = "tokenizers/llama3/";
  const std::string inp =
      read_file(palu::testing::shared_file(dir + "ggml-vocab-llama-bpe.gguf.inp"));
  const std::string out =
      read_file(palu::testing::shared_file(dir + "ggml-vocab-llama-bpe.gguf.out"));
  const std::string sep = "\n__ggml_vocab_test__";
  std::vector<std::string> texts;
  for (size_t pos = 0, k; (k = inp.find(sep, pos)) != std::string::npos;) {
    texts.push_back(inp.substr(pos, k - pos));
    pos = k + sep.size();
    if (pos < inp.size() && inp[pos] == '\n') ++pos;
  }
  std::vector<Ids> expected;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    std::istringstream ids(line);
    Ids v;
    for (int32_t id; ids >> id;) v.push_back(id);
    expected.push_back(v);
  }
  ASSERT_EQ(texts.size(), 46u);
  ASSERT_EQ(expected.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(encode(texts[i]), expected[i]) << "vector " << i << ": \"" << texts[i] << "\"";
  }
}

TEST_F(BpeLlama3Test, KnownSentence) {
  EXPECT_EQ(encode("This is a test sentence."), (Ids{2028, 374, 264, 1296, 11914, 13}));
  auto with_bos = tok_->encode("This is a test sentence.", true);
  ASSERT_TRUE(with_bos.is_ok());
  EXPECT_EQ(with_bos.value(), (Ids{128000, 2028, 374, 264, 1296, 11914, 13}));
  auto text = tok_->decode(with_bos.value());
  ASSERT_TRUE(text.is_ok());
  EXPECT_EQ(text.value(), "This is a test sentence.");  // BOS produces no text
}

TEST_F(BpeLlama3Test, SpecialTokensOnlyWhenAsked) {
  const std::string text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
  const Ids plain = encode(text);
  for (int32_t id : plain) EXPECT_LT(id, 128000);
  EXPECT_EQ(tok_->decode(plain).value(), text);

  const Ids parsed = encode(text, {.add_bos = true, .parse_special = true});
  ASSERT_GE(parsed.size(), 5u);
  EXPECT_EQ(parsed[0], 128000);
  EXPECT_EQ(parsed[1], 128006);
  EXPECT_EQ(parsed.back(), 128009);
  EXPECT_EQ(std::count(parsed.begin(), parsed.end(), 128007), 1);
  EXPECT_EQ(tok_->decode(parsed).value(), "user\n\nHi");
  EXPECT_EQ(tok_->decode(parsed, /*render_special=*/true).value(), "<|begin_of_text|>" + text);
  // The pieces between special tokens encode as they would alone.
  EXPECT_EQ(Ids(parsed.begin() + 2, parsed.begin() + 3), encode("user"));
  // A broken special token is plain text.
  for (int32_t id : encode("<|eot_id|", {.parse_special = true})) EXPECT_LT(id, 128000);
}

TEST_F(BpeLlama3Test, PiecesAndBytes) {
  const Ids ids = encode(" Hello\n");
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(tok_->id_to_piece(ids[0]), "\xC4\xA0Hello");  // "ĠHello"
  EXPECT_EQ(tok_->id_to_piece(ids[1]), "\xC4\x8A");       // "Ċ"
  EXPECT_EQ(tok_->token_bytes(ids[0], -1), " Hello");
  EXPECT_EQ(tok_->id_to_piece(128009), "<|eot_id|>");
  EXPECT_EQ(tok_->token_bytes(128009, -1), "");
  EXPECT_EQ(tok_->id_to_piece(-1), "");
  EXPECT_EQ(tok_->id_to_piece(128256), "");
  auto bad = tok_->decode({1, 128256});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("128256"), std::string::npos);
}

TEST_F(BpeLlama3Test, PreTokenizer) {
  using Views = std::vector<std::string_view>;
  EXPECT_EQ(tok_->pre_tokenize("Hello world 12345!!\n\n  x").value(),
            (Views{"Hello", " world", " ", "123", "45", "!!\n\n", " ", " x"}));
  EXPECT_EQ(tok_->pre_tokenize("I'VE it's").value(), (Views{"I", "'VE", " it", "'s"}));
  // U+180E is not White_Space (PCRE2's own \s would take it): it leads the letters after it.
  EXPECT_EQ(tok_->pre_tokenize("a\xE1\xA0\x8E"
                               "b")
                .value(),
            (Views{"a",
                   "\xE1\xA0\x8E"
                   "b"}));
  // Invalid UTF-8: each run no alternative matches is a pre-token of its own.
  EXPECT_EQ(tok_->pre_tokenize("ab\xFF\xFE cd\xC3").value(),
            (Views{"ab", "\xFF\xFE", " cd", "\xC3"}));
}

TEST_F(BpeLlama3Test, RoundTripWikitext) {
  const std::string text = read_file(palu::testing::shared_file("data/wikitext-2/wiki.test.raw"));
  ASSERT_GT(text.size(), 1000000u);
  expect_round_trip(text, "wiki.test.raw");
  // ~4.3 bytes per token for English wiki text.
  const size_t n = encode(text).size();
  EXPECT_GT(n, text.size() / 6);
  EXPECT_LT(n, text.size() / 3);
}

TEST_F(BpeLlama3Test, RoundTripRandomUtf8) {
  std::mt19937 rng(1234);
  const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0x20, 0x7E},     {'\t', '\r'},       {'0', '9'},         {'a', 'z'},       {0x80, 0xFF},
      {0x0300, 0x036F}, {0x0400, 0x04FF},   {0x0600, 0x06FF},   {0x0E00, 0x0E7F}, {0x1780, 0x17FF},
      {0x2000, 0x206F}, {0x3000, 0x30FF},   {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3}, {0xE000, 0xF8FF},
      {0xFE00, 0xFFFD}, {0x1F300, 0x1FAFF}, {0x10000, 0x10FFFF}};
  auto random_text = [&](size_t chars) {
    std::string s;
    for (size_t i = 0; i < chars; ++i) {
      const auto& [lo, hi] = ranges[rng() % ranges.size()];
      uint32_t cp = lo + rng() % (hi - lo + 1);
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = 'x';  // surrogates are not characters
      append_utf8(cp, &s);
    }
    return s;
  };
  for (int i = 0; i < 2000; ++i)
    expect_round_trip(random_text(rng() % 200), "random utf-8 #" + std::to_string(i));
  for (int i = 0; i < 5; ++i)
    expect_round_trip(random_text(20000), "long random utf-8 #" + std::to_string(i));
}

TEST_F(BpeLlama3Test, RoundTripInvalidBytes) {
  std::mt19937 rng(99);
  auto random_bytes = [&](size_t n) {
    std::string s(n, '\0');
    for (char& c : s) c = (char)(rng() & 0xFF);
    return s;
  };
  for (int i = 0; i < 2000; ++i)
    expect_round_trip(random_bytes(rng() % 300), "random bytes #" + std::to_string(i));
  expect_round_trip(random_bytes(200000), "200 kB of random bytes");
  // Structured invalid UTF-8 among text: truncated, overlong, surrogate, > U+10FFFF, lone
  // continuation bytes, NUL.
  const std::vector<std::string> bad = {"\xC3",     "\xE4\xB8",           "\xF0\x9F\x98",
                                        "\xC0\x80", "\xED\xA0\x80",       "\xF4\x90\x80\x80",
                                        "\x80\x80", std::string(1, '\0'), "\xFF"};
  for (int i = 0; i < 500; ++i) {
    std::string s;
    for (int k = rng() % 20; k > 0; --k) s += rng() % 2 ? bad[rng() % bad.size()] : " word, 42\n";
    expect_round_trip(s, "structured invalid #" + std::to_string(i));
  }
  // One invalid byte is its byte token.
  const Ids ff = encode("\xFF");
  ASSERT_EQ(ff.size(), 1u);
  EXPECT_EQ(tok_->token_bytes(ff[0], -1), "\xFF");
  // Long runs of one byte (quadratic-time traps) finish and round-trip.
  expect_round_trip(std::string(100000, ' '), "100k spaces");
  expect_round_trip(std::string(100000, '!'), "100k '!'");
  expect_round_trip(std::string(100000, '\xE4'), "100k 0xE4");
  expect_round_trip(std::string(100000, 'a'), "100k 'a'");
}

// Reference BPE with tiktoken's rules, written plainly: merge the adjacent pair whose
// concatenation is the lowest-ranked token, leftmost first.
TEST_F(BpeLlama3Test, MergesMatchPlainReference) {
  std::unordered_map<std::string, int32_t> rank;
  for (int32_t id = 0; id < 128000; ++id) rank.emplace(tok_->token_bytes(id, -1), id);
  auto reference = [&](const std::string& word) {
    std::vector<std::string> parts;
    for (char c : word) parts.emplace_back(1, c);
    for (;;) {
      size_t best = SIZE_MAX;
      int32_t best_rank = INT32_MAX;
      for (size_t i = 0; i + 1 < parts.size(); ++i) {
        auto it = rank.find(parts[i] + parts[i + 1]);
        if (it != rank.end() && it->second < best_rank) {
          best_rank = it->second;
          best = i;
        }
      }
      if (best == SIZE_MAX) break;
      parts[best] += parts[best + 1];
      parts.erase(parts.begin() + (long)best + 1);
    }
    Ids ids;
    for (const auto& p : parts) ids.push_back(rank.at(p));
    return ids;
  };
  std::mt19937 rng(7);
  const std::vector<std::string> alphabets = {"etaoinshrdlu", "ab", "a",
                                              "!?.-=", "\xE4\xB8\x80\xE4\xBA\x8C"};
  for (int i = 0; i < 400; ++i) {
    const std::string& alpha = alphabets[i % alphabets.size()];
    const bool cjk = alpha[0] == '\xE4';
    const size_t len = 2 + rng() % (i % 2 ? 60 : 400);  // both the short and the long merge path
    std::string word;
    while (word.size() < len) {
      if (cjk)
        word += alpha.substr(3 * (rng() % 2), 3);
      else
        word += alpha[rng() % alpha.size()];
    }
    auto pieces = tok_->pre_tokenize(word);
    ASSERT_TRUE(pieces.is_ok());
    ASSERT_EQ(pieces.value().size(), 1u) << word;  // one pre-token, so encode = BPE of it
    if (rank.count(word)) continue;                // whole-token shortcut (ignore_merges)
    EXPECT_EQ(encode(word), reference(word)) << "word of " << word.size() << " bytes: " << word;
  }
}

TEST_F(BpeLlama3Test, ConcurrentEncodes) {
  const std::string text =
      read_file(palu::testing::shared_file("data/wikitext-2/wiki.test.raw")).substr(0, 200000);
  const Ids expected = encode(text);
  std::vector<Ids> got(4);
  std::vector<std::thread> threads;
  for (auto& g : got) threads.emplace_back([&] { g = tok_->encode(text, false).value(); });
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g, expected);
}

// ---------------------------------------------------------------------------------------------
// A tiny byte-level vocabulary: the 256 byte characters (ids 0..255) plus a few merges.
json tiny_tokenizer_json() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_char(b)] = b;
  const std::string G = "\xC4\xA0";  // Ġ, the byte-level space
  vocab[G + "t"] = 256;
  vocab["he"] = 257;
  vocab[G + "the"] = 258;
  vocab["ab"] = 259;
  vocab["abc"] = 260;  // no merge makes it: reachable only with ignore_merges
  vocab["12"] = 261;
  json merges = json::array({G + " t", json::array({"h", "e"}), G + "t he", "a b", "1 2"});
  return json{
      {"version", "1.0"},
      {"added_tokens",
       json::array({json{{"id", 262}, {"content", "<|endoftext|>"}, {"special", true}},
                    json{{"id", 263}, {"content", "<tool>"}, {"special", false}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       json{{"type", "Sequence"},
            {"pretokenizers",
             json::array(
                 {json{{"type", "Split"},
                       {"pattern",
                        json{{"Regex",
                              "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                              "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                       {"behavior", "Isolated"},
                       {"invert", false}},
                  json{{"type", "ByteLevel"},
                       {"add_prefix_space", false},
                       {"trim_offsets", false},
                       {"use_regex", false}}})}}},
      {"post_processor", nullptr},
      {"decoder", json{{"type", "ByteLevel"}}},
      {"model", json{{"type", "BPE"},
                     {"dropout", nullptr},
                     {"vocab", vocab},
                     {"merges", merges},
                     {"ignore_merges", false}}}};
}

Result<std::unique_ptr<BpeTokenizer>> from_json(const json& j) {
  return BpeTokenizer::from_tokenizer_json(j.dump(), BpeSpecialConfig{}, "tokenizer.json");
}

TEST(BpeTokenizerJsonTest, TinyVocabulary) {
  TempDir dir;
  write_file(dir.path / "tokenizer.json", tiny_tokenizer_json().dump(2));
  auto loaded = load_tokenizer_from_dir(dir.path.string());
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  const Tokenizer& t = *loaded.value();
  const auto& bpe = dynamic_cast<const BpeTokenizer&>(t);
  EXPECT_EQ(t.kind(), "bpe");
  EXPECT_EQ(t.vocab_size(), 264);
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_EQ(t.eos_id(), 262);
  EXPECT_EQ(bpe.merge_count(), 5u);

  auto ids = [&](std::string_view s, bool special = false) {
    return bpe.encode(s, BpeTokenizer::EncodeOptions{.add_bos = true, .parse_special = special})
        .value();
  };
  EXPECT_EQ(ids(" the"), (Ids{258}));
  EXPECT_EQ(ids("the"), (Ids{'t', 257}));
  EXPECT_EQ(ids("abc"), (Ids{259, 'c'}));            // ignore_merges false: merges only
  EXPECT_EQ(ids("12"), (Ids{'1', '2'}));             // Qwen2 split: digits one by one
  EXPECT_EQ(ids("x<tool>y"), (Ids{'x', 263, 'y'}));  // user-defined: always matched
  EXPECT_EQ(ids("<|endoftext|>", true), (Ids{262}));
  EXPECT_EQ(ids("<|endoftext|>").size(), 13u);  // as plain text, byte by byte ('<', '|', ...)
  EXPECT_EQ(t.id_to_piece(258), "\xC4\xA0the");
  EXPECT_EQ(t.id_to_piece(' '), "\xC4\xA0");
  EXPECT_EQ(t.token_bytes(258, -1), " the");
  EXPECT_EQ(t.decode({'x', 263, 258, 262}).value(), "x<tool> the");
  for (std::string s : {"", " the the  theabc\n", "x<tool><|endoftext|>", "\xFF\xC3 12"}) {
    EXPECT_EQ(t.decode(t.encode(s, false).value()).value(), s);
  }
}

TEST(BpeTokenizerJsonTest, IgnoreMergesAndRegexFromFile) {
  json j = tiny_tokenizer_json();
  j["model"]["ignore_merges"] = true;
  // The Llama-3 split (digits in threes) as written in Meta's tokenizer.json.
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  // Merges as "a b" strings only.
  j["model"]["merges"] = json::array({"\xC4\xA0 t", "h e", "\xC4\xA0t he", "a b", "1 2"});
  auto t = from_json(j);
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(t.value()->encode("abc", false).value(), (Ids{260}));  // the whole pre-token is a token
  EXPECT_EQ(t.value()->encode("12", false).value(), (Ids{261}));
  EXPECT_EQ(t.value()->encode("123", false).value(), (Ids{261, '3'}));
}

TEST(BpeTokenizerJsonTest, PostProcessorBosAndConfig) {
  json j = tiny_tokenizer_json();
  j["added_tokens"].push_back(json{{"id", 264}, {"content", "<s>"}, {"special", true}});
  j["added_tokens"].push_back(json{{"id", 265}, {"content", "<|im_end|>"}, {"special", true}});
  j["post_processor"] =
      json{{"type", "TemplateProcessing"},
           {"single", json::array({json{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                   json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}};
  auto t = from_json(j);
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(t.value()->bos_id(), 264);
  EXPECT_EQ(t.value()->encode("a", true).value(), (Ids{264, 'a'}));

  BpeSpecialConfig config;
  config.bos_token = "";  // none
  config.eos_token = "<|im_end|>";
  auto c = BpeTokenizer::from_tokenizer_json(j.dump(), config, "tokenizer.json");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c.value()->bos_id(), -1);
  EXPECT_EQ(c.value()->eos_id(), 265);

  // Through a directory with tokenizer_config.json.
  TempDir dir;
  write_file(dir.path / "tokenizer.json", j.dump());
  write_file(
      dir.path / "tokenizer_config.json",
      R"({"bos_token": null, "eos_token": {"content": "<|im_end|>"}, "model_max_length": 32768})");
  auto d = load_tokenizer_from_dir(dir.path.string());
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d.value()->bos_id(), -1);
  EXPECT_EQ(d.value()->eos_id(), 265);
}

// ---------------------------------------------------------------------------------------------
// The in-memory builder (GGUF "gpt2" vocabularies).
TEST(BpeVocabTest, FromArrays) {
  BpeVocab v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(byte_level_char(b));
  v.tokens.insert(v.tokens.end(), {"12", "\xC4\xA0t", "<|im_start|>", "", "<think>"});
  v.token_types.assign(256, 1);
  v.token_types.insert(v.token_types.end(), {1, 1, 3, 5, 4});
  auto merges = split_bpe_merges({"1 2", "\xC4\xA0 t"}, "test.gguf");
  ASSERT_TRUE(merges.is_ok());
  v.merges = merges.value();
  v.eos_id = 258;

  for (const char* pre : {"llama-bpe", "qwen2", "gpt2"}) {
    auto p = bpe_pre_tokenizer(pre);
    ASSERT_TRUE(p.is_ok()) << pre;
    v.pre_tokenizer = p.value();
    auto t = BpeTokenizer::from_vocab(v, "test.gguf");
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    const Ids twelve = t.value()->encode("12", false).value();
    EXPECT_EQ(twelve, std::string(pre) == "qwen2" ? (Ids{'1', '2'}) : (Ids{256})) << pre;
    EXPECT_EQ(t.value()->encode(" t<think>", false).value(), (Ids{257, 260})) << pre;
    EXPECT_EQ(t.value()
                  ->encode("<|im_start|>", BpeTokenizer::EncodeOptions{.parse_special = true})
                  .value(),
              (Ids{258}));
    EXPECT_EQ(t.value()->eos_id(), 258);
    EXPECT_EQ(t.value()->token_type(259), BpeTokenType::kUnused);
    EXPECT_EQ(t.value()->decode({259, 'a', 258}).value(), "a");
  }
  auto unknown = bpe_pre_tokenizer("falcon");
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(unknown.status().message().find("falcon"), std::string::npos);
}

TEST(BpeVocabTest, MissingByteTokenIsAnEncodeError) {
  BpeVocab v;
  for (int b = 0; b < 255; ++b) v.tokens.push_back(byte_level_char(b));  // no 0xFF
  v.pre_tokenizer = bpe_pre_tokenizer("gpt2").value();
  auto t = BpeTokenizer::from_vocab(v, "small.gguf");
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  auto r = t.value()->encode("ok\xFF", false);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("0xFF"), std::string::npos) << r.status().message();
}

// ---------------------------------------------------------------------------------------------
// Corrupt inputs: each names its defect.
struct CorruptCase {
  const char* name;
  std::string input;
  StatusCode code;
  const char* message_has;
};

TEST(BpeCorruptTest, Tiktoken) {
  const std::vector<CorruptCase> cases = {
      {"empty file", "", StatusCode::kDataLoss, "no \"<base64 token> <rank>\" lines"},
      {"bad base64", "IQ== 0\nI!== 1\n", StatusCode::kDataLoss,
       "line 2: token \"I!==\" is not valid base64"},
      {"bad base64 length", "IQ= 0\n", StatusCode::kDataLoss, "not valid base64"},
      {"missing rank", "IQ== 0\nIg==\n", StatusCode::kDataLoss, "line 2 is \"Ig==\"; expected"},
      {"empty rank", "IQ== \n", StatusCode::kDataLoss,
       "line 1: rank \"\" is not a non-negative integer"},
      {"non-numeric rank", "IQ== 0\nIg== one\n", StatusCode::kDataLoss, "line 2: rank \"one\""},
      {"negative rank", "IQ== -1\n", StatusCode::kDataLoss,
       "rank \"-1\" is not a non-negative integer"},
      {"rank with junk", "IQ== 1x\n", StatusCode::kDataLoss, "rank \"1x\""},
      {"huge rank", "IQ== 99999999999\n", StatusCode::kDataLoss, "out of range"},
      {"duplicate rank", "IQ== 0\nIg== 0\n", StatusCode::kDataLoss,
       "line 2: rank 0 is given twice"},
      {"duplicate token", "IQ== 0\nIQ== 1\n", StatusCode::kDataLoss, "repeats line 1"},
  };
  for (const auto& c : cases) {
    auto t = BpeTokenizer::from_tiktoken(c.input, BpeSpecialConfig{}, "tokenizer.model");
    ASSERT_FALSE(t.is_ok()) << c.name;
    EXPECT_EQ(t.status().code(), c.code) << c.name << ": " << t.status().to_string();
    EXPECT_NE(t.status().message().find(c.message_has), std::string::npos)
        << c.name << ": " << t.status().message();
    EXPECT_EQ(t.status().message().rfind("tokenizer.model", 0), 0u) << c.name << ": names the file";
  }
  // Bad special-token settings.
  BpeSpecialConfig config;
  config.names[0] = "<|x|>";  // a base token's id, not a special one
  auto t = BpeTokenizer::from_tiktoken("IQ== 0\n", config, "tokenizer.model");
  ASSERT_FALSE(t.is_ok());
  EXPECT_NE(t.status().message().find("has id 0; expected an id in [1, 257)"), std::string::npos)
      << t.status().message();
  config = {};
  config.eos_token = "<|nope|>";
  t = BpeTokenizer::from_tiktoken("IQ== 0\n", config, "tokenizer.model");
  ASSERT_FALSE(t.is_ok());
  EXPECT_NE(t.status().message().find("eos_token \"<|nope|>\" is not a token"), std::string::npos)
      << t.status().message();
}

TEST(BpeCorruptTest, TokenizerJson) {
  auto edit = [](auto f) {
    json j = tiny_tokenizer_json();
    f(j);
    return j.dump();
  };
  const std::vector<CorruptCase> cases = {
      {"not JSON", "{\"model\": ", StatusCode::kDataLoss, "not valid JSON"},
      {"not an object", "[1, 2]", StatusCode::kDataLoss, "expected a JSON object"},
      {"no model", R"({"version": "1.0"})", StatusCode::kDataLoss,
       "the \"model\" object is missing"},
      {"no model type", edit([](json& j) { j["model"].erase("type"); }), StatusCode::kDataLoss,
       "model.type is missing"},
      {"unknown model type", edit([](json& j) { j["model"]["type"] = "Unigram"; }),
       StatusCode::kUnimplemented, "model.type is \"Unigram\"; only \"BPE\""},
      {"WordPiece", edit([](json& j) { j["model"]["type"] = "WordPiece"; }),
       StatusCode::kUnimplemented, "\"WordPiece\""},
      {"no vocab", edit([](json& j) { j["model"].erase("vocab"); }), StatusCode::kDataLoss,
       "model.vocab"},
      {"string id", edit([](json& j) { j["model"]["vocab"]["he"] = "257"; }), StatusCode::kDataLoss,
       "model.vocab[\"he\"] is \"257\"; expected an integer token id"},
      {"negative id", edit([](json& j) { j["model"]["vocab"]["he"] = -3; }), StatusCode::kDataLoss,
       "is -3; expected an id in"},
      {"shared id", edit([](json& j) { j["model"]["vocab"]["zz"] = 5; }), StatusCode::kDataLoss,
       "id 5 is given to both"},
      {"no merges", edit([](json& j) { j["model"].erase("merges"); }), StatusCode::kDataLoss,
       "model.merges"},
      {"merge without space", edit([](json& j) { j["model"]["merges"][0] = "he"; }),
       StatusCode::kDataLoss, "model.merges[0] is \"he\""},
      {"merge of three", edit([](json& j) {
         j["model"]["merges"][1] = json::array({"h", "e", "x"});
       }),
       StatusCode::kDataLoss, "model.merges[1]"},
      {"merge of unknown token", edit([](json& j) { j["model"]["merges"].push_back("zz q"); }),
       StatusCode::kDataLoss, "merge 5 (\"zz\" + \"q\"): token \"zz\" is not in the vocabulary"},
      {"merge result missing", edit([](json& j) { j["model"]["merges"].push_back("q q"); }),
       StatusCode::kDataLoss, "the merged token \"qq\" is not in the vocabulary"},
      {"added token without id", edit([](json& j) { j["added_tokens"][0].erase("id"); }),
       StatusCode::kDataLoss, "added_tokens[0] needs"},
      {"word suffix", edit([](json& j) { j["model"]["end_of_word_suffix"] = "</w>"; }),
       StatusCode::kUnimplemented, "end_of_word_suffix"},
      {"no pre-tokenizer", edit([](json& j) { j["pre_tokenizer"] = nullptr; }),
       StatusCode::kUnimplemented, "pre_tokenizer is null"},
      {"Metaspace", edit([](json& j) {
         j["pre_tokenizer"] = json{{"type", "Metaspace"}};
       }),
       StatusCode::kUnimplemented, "pre_tokenizer type \"Metaspace\""},
      {"bad regex", edit([](json& j) {
         j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(\\p{L}";
       }),
       StatusCode::kUnimplemented, "does not compile with PCRE2"},
      {"normalizer", edit([](json& j) {
         j["normalizer"] = json{{"type", "Lowercase"}};
       }),
       StatusCode::kUnimplemented, "normalizer type \"Lowercase\""},
  };
  for (const auto& c : cases) {
    auto t = BpeTokenizer::from_tokenizer_json(c.input, BpeSpecialConfig{}, "tokenizer.json");
    ASSERT_FALSE(t.is_ok()) << c.name;
    EXPECT_EQ(t.status().code(), c.code) << c.name << ": " << t.status().to_string();
    EXPECT_NE(t.status().message().find(c.message_has), std::string::npos)
        << c.name << ": " << t.status().message();
  }
}

TEST(BpeCorruptTest, Vocab) {
  BpeVocab v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(byte_level_char(b));
  v.pre_tokenizer = bpe_pre_tokenizer("gpt2").value();
  auto expect_error = [&](const BpeVocab& bad, const char* has) {
    auto t = BpeTokenizer::from_vocab(bad, "model.gguf");
    ASSERT_FALSE(t.is_ok()) << has;
    EXPECT_EQ(t.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(t.status().message().find(has), std::string::npos) << t.status().message();
  };
  BpeVocab bad = v;
  bad.token_types = {1, 1};
  expect_error(bad, "token_types has 2 entries; expected 256");
  bad = v;
  bad.token_types.assign(256, 1);
  bad.token_types[7] = 9;
  expect_error(bad, "token_types[7] is 9");
  bad = v;
  bad.eos_id = 300;
  expect_error(bad, "special token id 300 is outside the vocabulary");
  bad = v;
  bad.merges = {{"a", "b"}};
  expect_error(bad, "the merged token \"ab\" is not in the vocabulary");
  expect_error(BpeVocab{}, "the vocabulary has no tokens");
  auto split = split_bpe_merges({"a b", "a  b"}, "model.gguf");
  ASSERT_FALSE(split.is_ok());
  EXPECT_NE(split.status().message().find("merge 1 is \"a  b\""), std::string::npos)
      << split.status().message();
}

// Every prefix of a valid file either loads or fails with a status; nothing crashes.
TEST(BpeCorruptTest, TruncatedFilesNeverCrash) {
  const std::string json_text = tiny_tokenizer_json().dump();
  for (size_t n = 0; n < json_text.size(); n += 7) {
    auto t = BpeTokenizer::from_tokenizer_json(json_text.substr(0, n), {}, "tokenizer.json");
    EXPECT_FALSE(t.is_ok()) << "prefix of " << n << " bytes";  // every prefix is invalid JSON
  }
  const std::string model =
      read_file(palu::testing::shared_file("tokenizers/llama3/tokenizer.model"));
  const std::string head = model.substr(0, model.find('\n', 20000) + 1);
  for (size_t n = 0; n < head.size(); n += 97) {
    auto t = BpeTokenizer::from_tiktoken(head.substr(0, n), {}, "tokenizer.model");
    if (t.is_ok()) {
      // A short vocabulary may lack byte tokens: encoding then fails, naming the byte.
      const std::string text = "Hello, w\xC3\xB6rld \xFF 123";
      auto ids = t.value()->encode(text, false);
      if (ids.is_ok()) {
        EXPECT_EQ(t.value()->decode(ids.value()).value(), text);
      } else {
        EXPECT_NE(ids.status().message().find("has no token"), std::string::npos);
      }
    } else {
      EXPECT_EQ(t.status().code(), StatusCode::kDataLoss) << t.status().to_string();
    }
  }
}

// ---------------------------------------------------------------------------------------------
TEST(BpeLoaderTest, Sniffing) {
  EXPECT_EQ(sniff_tokenizer_file("IQ== 0\nIg== 1\n", "tokenizer.model"),
            TokenizerFileKind::kTiktoken);
  EXPECT_EQ(sniff_tokenizer_file("  {\"version\"", "x"), TokenizerFileKind::kTokenizerJson);
  EXPECT_EQ(sniff_tokenizer_file("", "tokenizer.json"), TokenizerFileKind::kTokenizerJson);
  EXPECT_EQ(sniff_tokenizer_file("GGUF\x03", "m.gguf"), TokenizerFileKind::kGguf);
  EXPECT_EQ(sniff_tokenizer_file("\x0a\x0b\x0a\x05<unk>", "tokenizer.model"),
            TokenizerFileKind::kSentencePiece);
}

TEST(BpeLoaderTest, DirectoryErrors) {
  TempDir dir;
  auto none = load_tokenizer_from_dir(dir.path.string());
  ASSERT_FALSE(none.is_ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find(dir.path.string()), std::string::npos)
      << none.status().message();
  EXPECT_NE(none.status().message().find("no tokenizer.model or tokenizer.json"),
            std::string::npos);

  auto missing = load_tokenizer_from_dir((dir.path / "nope").string());
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);

  // tokenizer.model is preferred over tokenizer.json; a corrupt one is reported, naming it.
  write_file(dir.path / "tokenizer.json", tiny_tokenizer_json().dump());
  write_file(dir.path / "tokenizer.model", "IQ== 0\nIg== x\n");
  auto bad = load_tokenizer_from_dir(dir.path.string());
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("tokenizer.model: line 2"), std::string::npos)
      << bad.status().message();

  // Not a tokenizer of any kind.
  write_file(dir.path / "tokenizer.model", std::string("\x01\x02\x03garbage", 10));
  auto junk = load_tokenizer_from_dir(dir.path.string());
  ASSERT_FALSE(junk.is_ok());
  EXPECT_NE(junk.status().message().find("tokenizer.model"), std::string::npos)
      << junk.status().message();
}

TEST(BpeLoaderTest, TiktokenWithConfigNames) {
  TempDir dir;
  fs::copy_file(palu::testing::shared_file("tokenizers/llama3/tokenizer.model"),
                dir.path / "tokenizer.model");
  // Llama-3.1 names some reserved slots; its instruct models end turns with <|eot_id|>.
  write_file(dir.path / "tokenizer_config.json", R"({
    "added_tokens_decoder": {
      "128004": {"content": "<|finetune_right_pad_id|>", "special": true},
      "128008": {"content": "<|eom_id|>", "special": true},
      "128010": {"content": "<|python_tag|>", "special": true}},
    "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"})");
  auto t = load_tokenizer_from_dir(dir.path.string());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  const auto& bpe = dynamic_cast<const BpeTokenizer&>(*t.value());
  EXPECT_EQ(bpe.eos_id(), 128009);
  EXPECT_EQ(bpe.special_token_id("<|eom_id|>"), 128008);
  EXPECT_EQ(bpe.special_token_id("<|python_tag|>"), 128010);
  EXPECT_EQ(bpe.special_token_id("<|reserved_special_token_4|>"), -1);
  EXPECT_EQ(
      bpe.encode("<|python_tag|>", BpeTokenizer::EncodeOptions{.parse_special = true}).value(),
      (Ids{128010}));
}

}  // namespace
}  // namespace palu::model
