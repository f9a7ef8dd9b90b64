// The CPU forward pass against Hugging Face transformers' float32 outputs
// (../shared/models/*/golden.safetensors), through one prefill and through token-by-token
// decode.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/llama_model.h"
#include "model/safetensors.h"
#include "tests/common/golden_file.h"
#include "tests/common/logit_rows.h"
#include "tests/common/test_paths.h"

namespace palu::model {
namespace {

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {}
  void SetUp() override {
    const std::string dir = palu::testing::shared_file("models/" + GetParam());
    auto loaded = load_model(dir);
    ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
    model_ = std::move(loaded.value().model);
    ASSERT_TRUE(golden_.open(dir));
    V_ = model_->config().vocab_size;
  }

  // Per position: max |Δ| ≤ 1e-3 · max |logit| and equal argmax.
  void expect_row_close(const float* got, const float* want, const std::string& what) {
    const auto d = palu::testing::logit_row_diff(got, want, V_);
    EXPECT_LE(d.max_diff, 1e-3f * d.max_abs) << what;
    EXPECT_EQ(d.am_got, d.am_want) << what;
  }

  std::vector<float> prefill_all(const std::vector<int32_t>& ids) {
    auto cache = model_->make_cache((int)ids.size());
    EXPECT_TRUE(cache.is_ok());
    std::vector<float> logits(ids.size() * V_);
    Status st = model_->forward(ids.data(), (int)ids.size(), &cache.value(), LogitsMode::kAll, logits.data());
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    return logits;
  }

  std::vector<float> decode_all(const std::vector<int32_t>& ids) {
    auto cache = model_->make_cache((int)ids.size());
    EXPECT_TRUE(cache.is_ok());
    std::vector<float> logits(ids.size() * V_);
    for (size_t i = 0; i < ids.size(); ++i) {
      Status st = model_->forward(&ids[i], 1, &cache.value(), LogitsMode::kLast, logits.data() + i * V_);
      EXPECT_TRUE(st.is_ok()) << st.to_string();
    }
    return logits;
  }

  static int argmax(const float* x, int n) { return (int)(std::max_element(x, x + n) - x); }

  std::unique_ptr<LlamaModel> model_;
  palu::testing::GoldenFile golden_;
  int V_ = 0;
};

TEST_P(GoldenTest, PromptLogitsPrefillAndDecode) {
  for (int p = 0; p < 3; ++p) {
    const std::string name = "prompt" + std::to_string(p);
    const auto ids = golden_.ints(name + ".ids");
    const auto want = golden_.floats(name + ".logits");
    ASSERT_EQ(want.size(), ids.size() * V_);
    const auto pre = prefill_all(ids);
    const auto dec = decode_all(ids);
    for (size_t t = 0; t < ids.size(); ++t) {
      expect_row_close(pre.data() + t * V_, want.data() + t * V_, name + " prefill pos " + std::to_string(t));
      expect_row_close(dec.data() + t * V_, want.data() + t * V_, name + " decode pos " + std::to_string(t));
    }
  }
}

double nll_sum(const std::vector<float>& logits, const std::vector<int32_t>& ids, int V) {
  double total = 0.0;
  for (size_t t = 0; t + 1 < ids.size(); ++t) {
    const float* row = logits.data() + t * V;
    const float mx = *std::max_element(row, row + V);
    double s = 0.0;
    for (int j = 0; j < V; ++j) s += std::exp((double)row[j] - mx);
    total += (std::log(s) + mx) - row[ids[t + 1]];
  }
  return total;
}

TEST_P(GoldenTest, LongSequenceLastLogitsAndNll) {
  const auto ids = golden_.ints("long.ids");
  const auto want = golden_.floats("long.logits_last64");
  const float want_nll = golden_.floats("long.nll_sum")[0];
  ASSERT_EQ(ids.size(), 1024u);
  for (int mode = 0; mode < 2; ++mode) {
    const auto logits = mode == 0 ? prefill_all(ids) : decode_all(ids);
    const char* how = mode == 0 ? "prefill" : "decode";
    for (int t = 0; t < 64; ++t) {
      const size_t pos = ids.size() - 64 + t;
      expect_row_close(logits.data() + pos * V_, want.data() + (size_t)t * V_,
                       std::string("long ") + how + " pos " + std::to_string(pos));
    }
    const double nll = nll_sum(logits, ids, V_);
    EXPECT_NEAR(nll, want_nll, 1e-3 * std::fabs(want_nll)) << how;
  }
}

TEST_P(GoldenTest, GreedyContinuationOfPrompt0) {
  const auto ids = golden_.ints("prompt0.ids");
  const auto want = golden_.ints("prompt0.greedy32");
  for (int mode = 0; mode < 2; ++mode) {
    auto cache = model_->make_cache((int)(ids.size() + want.size()));
    ASSERT_TRUE(cache.is_ok());
    std::vector<float> logits(V_);
    if (mode == 0) {
      ASSERT_TRUE(model_->forward(ids.data(), (int)ids.size(), &cache.value(), LogitsMode::kLast, logits.data()).is_ok());
    } else {
      for (int32_t id : ids) ASSERT_TRUE(model_->forward(&id, 1, &cache.value(), LogitsMode::kLast, logits.data()).is_ok());
    }
    std::vector<int32_t> got;
    for (size_t i = 0; i < want.size(); ++i) {
      int32_t next = argmax(logits.data(), V_);
      got.push_back(next);
      if (i + 1 < want.size()) {
        ASSERT_TRUE(model_->forward(&next, 1, &cache.value(), LogitsMode::kLast, logits.data()).is_ok());
      }
    }
    EXPECT_EQ(got, want) << (mode == 0 ? "after prefill" : "after token-by-token prompt");
  }
}

INSTANTIATE_TEST_SUITE_P(RefModels, GoldenTest, ::testing::Values("ref-mha", "ref-gqa"),
                         [](const auto& info) { return info.param == "ref-mha" ? std::string("RefMha") : std::string("RefGqa"); });

}  // namespace
}  // namespace palu::model
