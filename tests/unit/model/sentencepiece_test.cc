// SentencePiece tokenizer: llama.cpp's 46 test vectors for the Llama-2 tokenizer, round
// trips, streaming bytes.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "model/mapped_file.h"
#include "model/tokenizer.h"
#include "tests/common/test_paths.h"

namespace palu::model {
namespace {

std::string slurp(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// llama.cpp's .inp format: each string followed by "\n__ggml_vocab_test__\n".
std::vector<std::string> read_inputs(const std::string& p) {
  const std::string all = slurp(p);
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    const size_t pos = all.find(sep, start);
    if (pos == std::string::npos) break;
    out.push_back(all.substr(start, pos - start));
    start = pos + sep.size();
  }
  return out;
}

std::vector<std::vector<int32_t>> read_outputs(const std::string& p) {
  std::ifstream f(p);
  std::vector<std::vector<int32_t>> out;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    std::vector<int32_t> ids;
    int32_t id;
    while (ls >> id) ids.push_back(id);
    out.push_back(ids);
  }
  return out;
}

TEST(SentencePieceTest, Llama2VectorsFromLlamaCpp) {
  auto tok = load_sentencepiece_tokenizer(palu::testing::shared_file("tokenizers/llama2/tokenizer.model"));
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  const auto inputs = read_inputs(palu::testing::shared_file("tokenizers/llama2/ggml-vocab-llama-spm.gguf.inp"));
  const auto outputs = read_outputs(palu::testing::shared_file("tokenizers/llama2/ggml-vocab-llama-spm.gguf.out"));
  ASSERT_EQ(inputs.size(), 46u);
  ASSERT_EQ(outputs.size(), 46u);
  int matched = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto ids = tok.value()->encode(inputs[i], /*add_bos=*/false);
    ASSERT_TRUE(ids.is_ok());
    EXPECT_EQ(ids.value(), outputs[i]) << "vector " << i << ": '" << inputs[i] << "'";
    matched += ids.value() == outputs[i];
  }
  EXPECT_EQ(matched, 46);
  EXPECT_EQ(tok.value()->bos_id(), 1);
  EXPECT_EQ(tok.value()->eos_id(), 2);
  EXPECT_EQ(tok.value()->vocab_size(), 32000);
}

TEST(SentencePieceTest, RoundTripAndStreamingBytes) {
  auto tok = load_sentencepiece_tokenizer(palu::testing::shared_file("models/ref-mha/tokenizer.model"));
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  const Tokenizer& t = *tok.value();
  const std::string text = "Hello world, this is palu. Ünïcödé ☃ and 日本語 text\nwith lines.";
  auto ids = t.encode(text, true);
  ASSERT_TRUE(ids.is_ok());
  EXPECT_EQ(ids.value()[0], 1);
  auto back = t.decode(ids.value());
  ASSERT_TRUE(back.is_ok());
  EXPECT_EQ(back.value(), text);
  // Streaming: concatenated token_bytes, through the UTF-8 streamer, give the same text.
  Utf8Streamer s;
  std::string streamed;
  for (size_t i = 1; i < ids.value().size(); ++i) streamed += s.push(t.token_bytes(ids.value()[i], ids.value()[i - 1]));
  streamed += s.flush();
  EXPECT_EQ(streamed, text);
  // Out-of-range ids are an error, not a crash.
  EXPECT_FALSE(t.decode({1, 99999}).is_ok());
  EXPECT_FALSE(t.decode({-5}).is_ok());
}

TEST(SentencePieceTest, Utf8StreamerHoldsBackIncompleteSequences) {
  Utf8Streamer s;
  EXPECT_EQ(s.push("a\xE2"), "a");
  EXPECT_EQ(s.push("\x98"), "");
  EXPECT_EQ(s.push("\x83!"), "\xE2\x98\x83!");
  EXPECT_EQ(s.push("\xF0\x9F"), "");
  EXPECT_EQ(s.flush(), "\xF0\x9F");  // nothing is lost
  EXPECT_EQ(s.push("\xFF"), "\xFF");  // invalid bytes pass through
}

TEST(SentencePieceTest, CorruptModelFilesAreRefused) {
  auto r = make_sentencepiece_tokenizer("this is not a protobuf", "bad.model");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("bad.model"), std::string::npos);
  auto missing = load_sentencepiece_tokenizer("/nonexistent/tokenizer.model");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  const std::string real = read_text_file(palu::testing::shared_file("models/ref-mha/tokenizer.model")).value();
  auto cut = make_sentencepiece_tokenizer(real.substr(0, real.size() / 2), "half.model");
  EXPECT_FALSE(cut.is_ok());
}

}  // namespace
}  // namespace palu::model
