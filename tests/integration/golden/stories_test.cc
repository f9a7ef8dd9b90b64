// A real public model nobody here trained: Karpathy's stories260K as GGUF v3. Greedy
// generation from BOS alone reproduces llama2.c's output (expected_greedy_t0.txt).
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "model/llama_model.h"
#include "tests/common/test_paths.h"

namespace palu::model {
namespace {

TEST(Stories260K, GreedyFromBosMatchesLlama2c) {
  auto loaded = load_model(palu::testing::shared_file("models/stories260K/stories260K-f32.gguf"));
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  const LlamaModel& m = *loaded.value().model;
  const Tokenizer& tok = *loaded.value().tokenizer;
  std::ifstream f(palu::testing::shared_file("models/stories260K/expected_greedy_t0.txt"));
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string expected = ss.str();
  ASSERT_FALSE(expected.empty());

  // llama2.c -n 256: 256 forwards from BOS at position 0, each emits a token; BOS (id 1) stops.
  const int steps = 256;
  auto cache = m.make_cache(steps);
  ASSERT_TRUE(cache.is_ok());
  std::vector<float> logits(m.config().vocab_size);
  int32_t token = tok.bos_id();
  ASSERT_EQ(token, 1);
  std::string text;
  int generated = 0;
  for (int pos = 0; pos < steps; ++pos) {
    ASSERT_TRUE(m.forward(&token, 1, &cache.value(), LogitsMode::kLast, logits.data()).is_ok());
    const int32_t next = (int32_t)(std::max_element(logits.begin(), logits.end()) - logits.begin());
    if (next == 1) break;
    text += tok.token_bytes(next, token);
    token = next;
    ++generated;
    if (generated == 200) {
      // At least the first 200 tokens must reproduce the reference exactly.
      ASSERT_EQ(expected.compare(0, text.size(), text), 0) << "first 200 tokens:\n" << text;
    }
  }
  ASSERT_GE(generated, 200);
  // The whole output too (the file may end with a newline the generator did not print).
  std::string want = expected;
  while (!want.empty() && want.back() == '\n') want.pop_back();
  std::string got = text;
  while (!got.empty() && got.back() == '\n') got.pop_back();
  EXPECT_EQ(got, want);
}

}  // namespace
}  // namespace palu::model
