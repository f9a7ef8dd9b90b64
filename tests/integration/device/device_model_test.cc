// The DeviceModel contract (model/device_model.h) on every backend compiled into this build
// that has a device here: the CPU always; CUDA and Vulkan when present (Vulkan runs on Mesa's
// lavapipe in CI). Each case runs the reference models' goldens through the device and checks
// the error and state rules every implementation must keep.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>

#include "backends/registry.h"
#include "model/safetensors.h"
#include "runtime/device_models.h"
#include "tests/common/golden_file.h"
#include "tests/common/logit_rows.h"
#include "tests/common/test_paths.h"

namespace palu::runtime {
namespace {

using Param = std::tuple<std::string, std::string>;  // backend, model

bool has_device(backends::DeviceKind kind, std::string* log) {
  backends::DeviceList list = backends::enumerate_devices();
  for (const auto& d : list.devices) {
    if (d->info().kind == kind) return true;
  }
  for (const auto& l : list.log) *log += l + "; ";
  return false;
}

class DeviceModelTest : public ::testing::TestWithParam<Param> {
 protected:
  void SetUp() override {
    const auto& [backend, name] = GetParam();
    auto kind = parse_backend(backend);
    ASSERT_TRUE(kind.is_ok());
    const auto built = device_model_backends();
    if (std::find(built.begin(), built.end(), backend) == built.end()) {
      GTEST_SKIP() << "backend " << backend << " is not in this build";
    }
    std::string log;
    if (!has_device(kind.value(), &log)) GTEST_SKIP() << "no " << backend << " device here: " << log;
    const std::string dir = palu::testing::shared_file("models/" + name);
    auto loaded = model::load_model(dir);
    ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
    model_ = std::move(loaded.value().model);
    ASSERT_TRUE(golden_.open(dir));
    V_ = model_->config().vocab_size;
    model::DeviceModelOptions opt;  // f16 full rows
    auto dm = make_device_model(*model_, kind.value(), opt);
    ASSERT_TRUE(dm.is_ok()) << dm.status().to_string();
    dm_ = std::move(dm).value();
    std::printf("[device] %s\n", dm_->describe().c_str());
  }

  std::vector<int32_t> ids(const std::string& n) const { return golden_.ints(n); }
  std::vector<float> floats(const std::string& n) const { return golden_.floats(n); }

  // f16 weights on GPUs and an f16 cache everywhere: max |Δ| ≤ 2e-2 · max |logit|, and equal
  // argmax wherever the reference's top-2 margin is larger than that tolerance.
  void expect_close(const float* got, const float* want, const std::string& what) {
    const auto d = palu::testing::logit_row_diff(got, want, V_);
    const float tol = 2e-2f * d.max_abs;
    EXPECT_LE(d.max_diff, tol) << what;
    if (d.margin > tol) {
      EXPECT_EQ(d.am_got, d.am_want) << what;
    }
  }

  std::unique_ptr<model::LlamaModel> model_;
  palu::testing::GoldenFile golden_;
  std::unique_ptr<model::DeviceModel> dm_;
  int V_ = 0;
};

TEST_P(DeviceModelTest, GoldenLogitsPrefillChunkedAndDecode) {
  // prompt0..2 (the GPU machine carries a trimmed golden file with prompt0 only).
  for (int p = 0; p < 3; ++p) {
    const std::string name = "prompt" + std::to_string(p);
    if (p > 0 && !golden_.has(name + ".ids")) continue;
    const auto t = ids(name + ".ids");
    const auto want = floats(name + ".logits");
    ASSERT_FALSE(t.empty()) << name;
    ASSERT_EQ(want.size(), t.size() * V_);
    const int n = (int)t.size();
    std::vector<float> got((size_t)n * V_);
    // One prefill.
    auto seq = dm_->new_sequence(n);
    ASSERT_TRUE(seq.is_ok()) << seq.status().to_string();
    ASSERT_TRUE(seq.value()->forward(t.data(), n, model::LogitsMode::kAll, got.data()).is_ok());
    EXPECT_EQ(seq.value()->size(), n);
    for (int i = 0; i < n; ++i) expect_close(&got[(size_t)i * V_], &want[(size_t)i * V_], name + " prefill pos " + std::to_string(i));
    // Two chunks, then token by token after a truncate.
    ASSERT_TRUE(seq.value()->truncate(0).is_ok());
    const int h = n / 2;
    if (h > 0) {
      ASSERT_TRUE(seq.value()->forward(t.data(), h, model::LogitsMode::kAll, got.data()).is_ok());
    }
    ASSERT_TRUE(seq.value()->forward(t.data() + h, n - h, model::LogitsMode::kAll, got.data() + (size_t)h * V_).is_ok());
    for (int i = 0; i < n; ++i) expect_close(&got[(size_t)i * V_], &want[(size_t)i * V_], name + " chunked pos " + std::to_string(i));
    ASSERT_TRUE(seq.value()->truncate(0).is_ok());
    for (int i = 0; i < n; ++i) {
      Status st = seq.value()->forward(&t[i], 1, model::LogitsMode::kLast, got.data() + (size_t)i * V_);
      ASSERT_TRUE(st.is_ok()) << st.to_string();
    }
    for (int i = 0; i < n; ++i) expect_close(&got[(size_t)i * V_], &want[(size_t)i * V_], name + " decode pos " + std::to_string(i));
  }
}

TEST_P(DeviceModelTest, GreedyContinuationMatchesTransformers) {
  const auto t = ids("prompt0.ids");
  const auto want = ids("prompt0.greedy32");
  ASSERT_GE(want.size(), 16u) << "the golden file has no prompt0.greedy32 continuation";
  auto seq = dm_->new_sequence((int)(t.size() + want.size()));
  ASSERT_TRUE(seq.is_ok());
  std::vector<float> logits(V_);
  ASSERT_TRUE(seq.value()->forward(t.data(), (int)t.size(), model::LogitsMode::kLast, logits.data()).is_ok());
  std::vector<int32_t> got;
  for (size_t i = 0; i < want.size(); ++i) {
    const int32_t next = (int32_t)(std::max_element(logits.begin(), logits.end()) - logits.begin());
    got.push_back(next);
    ASSERT_TRUE(seq.value()->forward(&next, 1, model::LogitsMode::kLast, logits.data()).is_ok());
  }
  // f16 rounding may flip a near-tie late in the continuation; the first 16 must agree.
  ASSERT_EQ(got.size(), want.size());
  EXPECT_TRUE(std::equal(want.begin(), want.begin() + 16, got.begin()));
  EXPECT_EQ(seq.value()->size(), (int)(t.size() + want.size()));
  EXPECT_GT(seq.value()->cache_bytes(), 0u);
}

TEST_P(DeviceModelTest, ErrorsLeaveTheSequenceAsItWas) {
  auto seq = dm_->new_sequence(8);
  ASSERT_TRUE(seq.is_ok());
  auto& s = *seq.value();
  EXPECT_EQ(s.capacity(), 8);
  std::vector<float> logits((size_t)8 * V_), again((size_t)V_);
  const int32_t good[3] = {1, 5, 9};
  ASSERT_TRUE(s.forward(good, 3, model::LogitsMode::kLast, logits.data()).is_ok());
  // A token outside the vocabulary.
  const int32_t bad[2] = {7, V_ + 3};
  Status st = s.forward(bad, 2, model::LogitsMode::kLast, logits.data());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.to_string();
  const int32_t neg = -1;
  EXPECT_EQ(s.forward(&neg, 1, model::LogitsMode::kLast, logits.data()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(s.size(), 3);
  // Past the capacity.
  const int32_t six[6] = {2, 3, 4, 5, 6, 7};
  st = s.forward(six, 6, model::LogitsMode::kLast, logits.data());
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange) << st.to_string();
  EXPECT_EQ(s.size(), 3);
  // No tokens; a bad truncate.
  EXPECT_FALSE(s.forward(good, 0, model::LogitsMode::kLast, logits.data()).is_ok());
  EXPECT_FALSE(s.truncate(4).is_ok());
  EXPECT_FALSE(s.truncate(-1).is_ok());
  EXPECT_EQ(s.size(), 3);
  // Still usable, and deterministic: the next token after the failures equals a fresh run's.
  const int32_t next = 11;
  ASSERT_TRUE(s.forward(&next, 1, model::LogitsMode::kLast, logits.data()).is_ok());
  auto fresh = dm_->new_sequence(8);
  ASSERT_TRUE(fresh.is_ok());
  const int32_t all[4] = {1, 5, 9, 11};
  ASSERT_TRUE(fresh.value()->forward(all, 4, model::LogitsMode::kLast, again.data()).is_ok());
  expect_close(logits.data(), again.data(), "after errors vs fresh");
  // Truncate back and redo: the same logits.
  ASSERT_TRUE(s.truncate(3).is_ok());
  ASSERT_TRUE(s.forward(&next, 1, model::LogitsMode::kLast, again.data()).is_ok());
  expect_close(logits.data(), again.data(), "after truncate");
  // Sequence sizes outside 1..context.
  EXPECT_EQ(dm_->new_sequence(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(dm_->new_sequence(model_->config().max_position_embeddings + 1).is_ok());
}

// export_image / import_image (palud's GPU ↔ host moves): the image round-trips bit for bit, a
// re-imported sequence continues as the original, and the CPU model continues a device's image
// (and the device the CPU's) within the golden tolerance. Backends without them skip.
TEST_P(DeviceModelTest, ExportImportMovesTheSequence) {
  model::DeviceModelOptions opt;
  auto spec = model_->cache_layout_spec(opt.cache);
  ASSERT_TRUE(spec.is_ok()) << spec.status().to_string();
  const cache::CacheLayout layout = cache::CacheLayout::create(spec.value()).value();
  auto a = dm_->new_sequence(32).value();
  std::vector<float> la(V_), lb(V_), lc(V_);
  const int32_t prompt[10] = {1, 450, 4996, 1701, 432, 975, 278, 263, 1016, 327};
  ASSERT_TRUE(a->forward(prompt, 10, model::LogitsMode::kLast, la.data()).is_ok());
  auto img = a->export_image(layout);
  if (img.status().code() == StatusCode::kUnimplemented) GTEST_SKIP() << img.status().message();
  ASSERT_TRUE(img.is_ok()) << img.status().to_string();
  EXPECT_EQ(img.value().length, 10);
  auto b = dm_->new_sequence(16).value();
  ASSERT_TRUE(b->import_image(layout, img.value()).is_ok());
  EXPECT_EQ(b->size(), 10);
  auto again = b->export_image(layout);
  ASSERT_TRUE(again.is_ok());
  EXPECT_TRUE(again.value().bytes == img.value().bytes);
  const int32_t next = 11;
  ASSERT_TRUE(a->forward(&next, 1, model::LogitsMode::kLast, la.data()).is_ok());
  ASSERT_TRUE(b->forward(&next, 1, model::LogitsMode::kLast, lb.data()).is_ok());
  for (int j = 0; j < V_; ++j) ASSERT_EQ(la[j], lb[j]) << "logit " << j;
  // Across devices: the CPU continues this device's cache, and this device the CPU's.
  auto cpu = make_device_model(*model_, backends::DeviceKind::kCpu, opt).value();
  auto c = cpu->new_sequence(32).value();
  ASSERT_TRUE(c->import_image(layout, img.value()).is_ok());
  ASSERT_TRUE(c->forward(&next, 1, model::LogitsMode::kLast, lc.data()).is_ok());
  expect_close(lc.data(), la.data(), "the CPU continuing this device's cache");
  auto c2 = cpu->new_sequence(32).value();
  ASSERT_TRUE(c2->forward(prompt, 10, model::LogitsMode::kLast, lc.data()).is_ok());
  auto d = dm_->new_sequence(32).value();
  ASSERT_TRUE(d->import_image(layout, c2->export_image(layout).value()).is_ok());
  ASSERT_TRUE(c2->forward(&next, 1, model::LogitsMode::kLast, lc.data()).is_ok());
  ASSERT_TRUE(d->forward(&next, 1, model::LogitsMode::kLast, lb.data()).is_ok());
  expect_close(lb.data(), lc.data(), "this device continuing the CPU's cache");
  // Refused before anything changes: over the capacity; another layout's image.
  auto small = dm_->new_sequence(5).value();
  EXPECT_EQ(small->import_image(layout, img.value()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(small->size(), 0);
  cache::SequenceImage other = img.value();
  other.layout_hash ^= 1;
  EXPECT_EQ(b->import_image(layout, other).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(b->size(), 11);
}

std::vector<Param> params() {
  std::vector<Param> v;
  for (const char* b : {"cpu", "cuda", "vulkan"}) {
    for (const char* m : {"ref-mha", "ref-gqa"}) v.emplace_back(b, m);
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Backends, DeviceModelTest, ::testing::ValuesIn(params()), [](const auto& info) {
  std::string s = std::get<0>(info.param) + "_" + std::get<1>(info.param);
  std::replace(s.begin(), s.end(), '-', '_');
  return s;
});

TEST(DeviceModels, UnknownBackendAndMissingDeviceAreClearErrors) {
  EXPECT_EQ(parse_backend("metal").status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(parse_backend("metal").status().message().find("cpu, cuda or vulkan"), std::string::npos);
}

}  // namespace
}  // namespace palu::runtime
