// The whole model through the Vulkan DeviceModel: golden logits of the reference models
// (Hugging Face transformers, float32) by prefill and by token-by-token decode, the 1024-token
// golden by prefill only (lavapipe is slow), and the error rules of model/device_model.h.
//
// Tolerance: f16 weights and an f16 cache against a float32 oracle: per position
// max |Δ| ≤ 2e-2 · max |logit| (the DeviceModel contract's golden tolerance), and equal argmax
// wherever the oracle's top-2 margin exceeds that tolerance. Measured on lavapipe: worst
// ~4e-3 · max |logit| (printed by the test).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "backends/vulkan/vulkan_model.h"
#include "model/safetensors.h"
#include "tests/common/golden_file.h"
#include "tests/common/test_paths.h"
#include "tests/unit/vulkan/vulkan_test_util.h"

namespace palu::backends::vulkan {
namespace {

// Returns max |Δ| / max |want| and checks the tolerance (above).
float expect_logits_close(const float* got, const float* want, int V, float rtol,
                          const std::string& what) {
  const testing::LogitRowDiff d = testing::logit_row_diff(got, want, V);
  const float tol = rtol * d.max_abs;
  EXPECT_LE(d.max_diff, tol) << what;
  if (d.margin > tol) {
    EXPECT_EQ(d.am_got, d.am_want) << what;
  }
  return d.max_diff / std::max(d.max_abs, 1e-30f);
}

class VulkanGoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string why;
    if (testing::context(&why) == nullptr) GTEST_SKIP() << "no Vulkan device: " << why;
    const std::string dir = palu::testing::shared_file("models/" + GetParam());
    auto loaded = model::load_model(dir);
    ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
    model_ = std::move(loaded.value().model);
    ASSERT_TRUE(golden_.open(dir));
    V_ = model_->config().vocab_size;
    auto dm = make_vulkan_model(*model_, model::DeviceModelOptions{});
    ASSERT_TRUE(dm.is_ok()) << dm.status().to_string();
    dm_ = std::move(dm).value();
    std::printf("[vulkan] %s, %zu weight bytes\n", dm_->describe().c_str(), dm_->weight_bytes());
  }
  std::unique_ptr<model::LlamaModel> model_;
  palu::testing::GoldenFile golden_;
  std::unique_ptr<model::DeviceModel> dm_;
  int V_ = 0;
};

TEST_P(VulkanGoldenTest, PromptsByPrefillAndByDecode) {
  float worst = 0.f;
  for (int p = 0; p < 3; ++p) {
    const std::string name = "prompt" + std::to_string(p);
    // The GPU machine carries a trimmed golden file (prompt0 only; see its metadata).
    if (p > 0 && !golden_.has(name + ".ids")) continue;
    const auto t = golden_.ints(name + ".ids");
    const auto want = golden_.floats(name + ".logits");
    ASSERT_FALSE(t.empty()) << name;
    const int n = (int)t.size();
    ASSERT_EQ(want.size(), (size_t)n * V_);
    std::vector<float> got((size_t)n * V_);
    auto seq = dm_->new_sequence(n);
    ASSERT_TRUE(seq.is_ok()) << seq.status().to_string();
    Status st = seq.value()->forward(t.data(), n, model::LogitsMode::kAll, got.data());
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    for (int i = 0; i < n; ++i)
      worst =
          std::max(worst, expect_logits_close(&got[(size_t)i * V_], &want[(size_t)i * V_], V_,
                                              2e-2f, name + " prefill pos " + std::to_string(i)));
    ASSERT_TRUE(seq.value()->truncate(0).is_ok());
    for (int i = 0; i < n; ++i) {
      st = seq.value()->forward(&t[i], 1, model::LogitsMode::kLast, got.data() + (size_t)i * V_);
      ASSERT_TRUE(st.is_ok()) << st.to_string();
    }
    for (int i = 0; i < n; ++i)
      worst =
          std::max(worst, expect_logits_close(&got[(size_t)i * V_], &want[(size_t)i * V_], V_,
                                              2e-2f, name + " decode pos " + std::to_string(i)));
  }
  std::printf("[vulkan] %s prompts: worst max|Δ|/max|logit| %.2e\n", GetParam().c_str(), worst);
}

// The 1024-token golden by one prefill (decode of 1024 tokens is too slow for lavapipe in CI):
// the last 64 positions' logits and the summed next-token NLL.
TEST_P(VulkanGoldenTest, LongPromptPrefill) {
  const auto t = golden_.ints("long.ids");
  const auto want = golden_.floats("long.logits_last64");
  const auto nll_want = golden_.floats("long.nll_sum");
  ASSERT_EQ(t.size(), 1024u);
  // 64 rows; the GPU machine's trimmed golden file holds the last 2 only (its metadata says so).
  const int last = (int)(want.size() / V_);
  ASSERT_TRUE(last >= 1 && last <= 64 && want.size() == (size_t)last * V_) << want.size();
  const int n = (int)t.size();
  auto seq = dm_->new_sequence(n);
  ASSERT_TRUE(seq.is_ok());
  std::vector<float> got((size_t)n * V_);
  Status st = seq.value()->forward(t.data(), n, model::LogitsMode::kAll, got.data());
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  float worst = 0.f;
  for (int i = 0; i < last; ++i)
    worst = std::max(worst,
                     expect_logits_close(&got[(size_t)(n - last + i) * V_], &want[(size_t)i * V_],
                                         V_, 2e-2f, "long pos " + std::to_string(n - last + i)));
  double nll = 0.0;
  for (int i = 0; i + 1 < n; ++i) {
    const float* row = &got[(size_t)i * V_];
    const float mx = *std::max_element(row, row + V_);
    double sum = 0.0;
    for (int j = 0; j < V_; ++j) sum += std::exp((double)row[j] - mx);
    nll += std::log(sum) + mx - row[t[i + 1]];
  }
  ASSERT_EQ(nll_want.size(), 1u);
  // Perplexity within 0.1 %: |Δ mean NLL| ≤ 1e-3.
  EXPECT_NEAR(nll / (n - 1), nll_want[0] / (n - 1), 1e-3);
  std::printf("[vulkan] %s long: worst %.2e, mean NLL %.6f vs %.6f\n", GetParam().c_str(), worst,
              nll / (n - 1), nll_want[0] / (n - 1));
}

TEST_P(VulkanGoldenTest, ErrorsAreValuesAndLeaveTheSequenceUnchanged) {
  auto seq = dm_->new_sequence(8);
  ASSERT_TRUE(seq.is_ok());
  auto& s = *seq.value();
  std::vector<float> logits((size_t)V_), again((size_t)V_);
  const int32_t good[3] = {1, 5, 9};
  ASSERT_TRUE(s.forward(good, 3, model::LogitsMode::kLast, logits.data()).is_ok());
  const int32_t bad[2] = {7, V_};
  Status st = s.forward(bad, 2, model::LogitsMode::kLast, logits.data());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
  const int32_t neg = -4;
  EXPECT_EQ(s.forward(&neg, 1, model::LogitsMode::kLast, logits.data()).code(),
            StatusCode::kInvalidArgument);
  const int32_t six[6] = {2, 3, 4, 5, 6, 7};
  st = s.forward(six, 6, model::LogitsMode::kLast, logits.data());
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange) << st.to_string();
  EXPECT_EQ(s.size(), 3);
  EXPECT_FALSE(s.truncate(4).is_ok());
  const int32_t next = 11;
  ASSERT_TRUE(s.forward(&next, 1, model::LogitsMode::kLast, logits.data()).is_ok());
  auto fresh = dm_->new_sequence(8);
  ASSERT_TRUE(fresh.is_ok());
  const int32_t all[4] = {1, 5, 9, 11};
  ASSERT_TRUE(fresh.value()->forward(all, 4, model::LogitsMode::kLast, again.data()).is_ok());
  expect_logits_close(logits.data(), again.data(), V_, 1e-3f, "after errors vs fresh");
  EXPECT_EQ(dm_->new_sequence(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(dm_->new_sequence(model_->config().max_position_embeddings + 1).status().code(),
            StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(RefModels, VulkanGoldenTest, ::testing::Values("ref-mha", "ref-gqa"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

// The weights as GPUs hold them (f16) on any device: prompt0 of ref-gqa by prefill and decode.
TEST(VulkanModel, F16WeightsGolden) {
  std::string why;
  if (testing::context(&why) == nullptr) GTEST_SKIP() << "no Vulkan device: " << why;
  const std::string dir = palu::testing::shared_file("models/ref-gqa");
  auto loaded = model::load_model(dir);
  ASSERT_TRUE(loaded.is_ok());
  palu::testing::GoldenFile golden;
  ASSERT_TRUE(golden.open(dir));
  VulkanModelOptions vo;
  vo.weights = VulkanModelOptions::Weights::kF16;
  auto dm = make_vulkan_model(*loaded.value().model, model::DeviceModelOptions{}, vo);
  ASSERT_TRUE(dm.is_ok()) << dm.status().to_string();
  EXPECT_NE(dm.value()->describe().find("f16 weights"), std::string::npos)
      << dm.value()->describe();
  const int V = loaded.value().model->config().vocab_size;
  const auto t = golden.ints("prompt0.ids");
  const auto want = golden.floats("prompt0.logits");
  const int n = (int)t.size();
  auto seq = dm.value()->new_sequence(n);
  ASSERT_TRUE(seq.is_ok());
  std::vector<float> got((size_t)n * V);
  ASSERT_TRUE(seq.value()->forward(t.data(), n - 2, model::LogitsMode::kAll, got.data()).is_ok());
  for (int i = n - 2; i < n; ++i)
    ASSERT_TRUE(seq.value()
                    ->forward(&t[i], 1, model::LogitsMode::kLast, got.data() + (size_t)i * V)
                    .is_ok());
  float worst = 0.f;
  for (int i = 0; i < n; ++i)
    worst = std::max(worst, expect_logits_close(&got[(size_t)i * V], &want[(size_t)i * V], V, 2e-2f,
                                                "f16 weights pos " + std::to_string(i)));
  std::printf("[vulkan] f16 weights, ref-gqa prompt0: worst max|Δ|/max|logit| %.2e\n", worst);
}

// Device memory exhaustion through the limit hook: the weights do not fit, then a cache does
// not fit; both RESOURCE_EXHAUSTED naming the bytes, nothing else affected.
TEST(VulkanModel, OutOfDeviceMemoryIsResourceExhausted) {
  std::string why;
  if (testing::context(&why) == nullptr) GTEST_SKIP() << "no Vulkan device: " << why;
  auto loaded = model::load_model(palu::testing::shared_file("models/ref-gqa"));
  ASSERT_TRUE(loaded.is_ok());
  const model::LlamaModel& m = *loaded.value().model;
  VulkanModelOptions tiny;
  tiny.memory_limit_bytes = 1 << 20;
  auto none = make_vulkan_model(m, model::DeviceModelOptions{}, tiny);
  ASSERT_FALSE(none.is_ok());
  EXPECT_EQ(none.status().code(), StatusCode::kResourceExhausted) << none.status().to_string();
  EXPECT_NE(none.status().message().find("model weights"), std::string::npos)
      << none.status().to_string();

  auto full = make_vulkan_model(m, model::DeviceModelOptions{});
  ASSERT_TRUE(full.is_ok());
  const size_t weights = full.value()->weight_bytes();
  full = Result<std::unique_ptr<model::DeviceModel>>(std::unique_ptr<model::DeviceModel>());
  VulkanModelOptions some;
  some.memory_limit_bytes = weights + (4 << 20);  // room for a short sequence only
  auto dm = make_vulkan_model(m, model::DeviceModelOptions{}, some);
  ASSERT_TRUE(dm.is_ok()) << dm.status().to_string();
  auto big = dm.value()->new_sequence(4096);
  ASSERT_FALSE(big.is_ok());
  EXPECT_EQ(big.status().code(), StatusCode::kResourceExhausted) << big.status().to_string();
  EXPECT_NE(big.status().message().find("KV cache"), std::string::npos) << big.status().to_string();
  auto small = dm.value()->new_sequence(16);
  ASSERT_TRUE(small.is_ok()) << small.status().to_string();
  std::vector<float> logits(m.config().vocab_size);
  const int32_t t[2] = {1, 2};
  Status st = small.value()->forward(t, 2, model::LogitsMode::kLast, logits.data());
  EXPECT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(small.value()->size(), 2);
}

TEST(VulkanModel, UnsupportedOptionsAreClearErrors) {
  std::string why;
  if (testing::context(&why) == nullptr) GTEST_SKIP() << "no Vulkan device: " << why;
  auto loaded = model::load_model(palu::testing::shared_file("models/ref-gqa"));
  ASSERT_TRUE(loaded.is_ok());
  model::DeviceModelOptions o;
  o.cache.storage = cache::CacheStorage::kQ4;  // packed storage needs a compressed model
  EXPECT_EQ(make_vulkan_model(*loaded.value().model, o).status().code(),
            StatusCode::kInvalidArgument);
  o = model::DeviceModelOptions{};
  o.device_index = 99;
  EXPECT_EQ(make_vulkan_model(*loaded.value().model, o).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace palu::backends::vulkan
