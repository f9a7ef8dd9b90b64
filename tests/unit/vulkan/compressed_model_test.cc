// A compressed (Palu) model through the Vulkan DeviceModel against the CPU DeviceModel
// (runtime::make_device_model(kCpu), the pooled-cache reference): ref-gqa compressed in the
// fixture by palu-compress (ratio 0.5, group size 1 → two low-rank groups per layer, four query
// heads per KV head), latents cached as f16, q4 and q2. Prefill (latent prefill kernel) and
// token-by-token decode (the fused latent decode kernel) of a prompt, every position's logits.
// Packed storage with an f16 window of the newest tokens (CacheOptions.window_tokens) runs a
// script of chunks, decode steps and a truncation on both models (lavapipe: q2 6e-5; q4 1.7e-3,
// from the second chunk on: one code flips at a rounding boundary — the same script without the
// window gives 1e-6, windows 8 and 32 give 5e-5 and 1e-4).
// Tolerance: RowCheck below (f16 latents: the golden tolerance per row; packed codes can flip at
// a rounding boundary, so per row within 0.25, on average within 1e-2); the worst ratio is
// printed (on lavapipe with oneDNN: ~1e-4 for f16 latents, q2 7.8e-4; without oneDNN the CPU's
// own GEMM flips two q2 codes: 3.3e-2 on two rows). The Vulkan model holds f32 weights on
// every device, as the CPU one does: with the f16 weights GPUs get by default, A·x moves enough
// for q4/q2 codes to flip by the dozen (4e-2 and 8e-2 on the H100, where f16 latents gave 5e-4).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "backends/vulkan/vulkan_model.h"
#include "runtime/device_models.h"
#include "tests/common/test_paths.h"
#include "tests/unit/vulkan/vulkan_test_util.h"

namespace palu::backends::vulkan {
namespace {

class VulkanCompressedTest : public ::testing::TestWithParam<cache::CacheStorage> {
 protected:
  // ctest runs every test in its own process: the compressed model is kept in the build tree
  // and reused while it is newer than the palu-compress binary (written to a temporary
  // directory and renamed, so concurrent runs never read a half-written model).
  static void SetUpTestSuite() {
    std::string why;
    if (testing::context(&why) == nullptr) return;
    namespace fs = std::filesystem;
    const std::string tool = std::string(PALU_BINARY_DIR) + "/tools/palu-compress";
    dir_ = std::string(PALU_BINARY_DIR) + "/tests/vulkan_compressed_ref_gqa_g1";
    std::error_code ec;
    const bool fresh = fs::exists(dir_ + "/palu.json") && fs::exists(tool) &&
                       fs::last_write_time(dir_ + "/palu.json", ec) > fs::last_write_time(tool, ec);
    if (!fresh) {
      const std::string tmp = dir_ + ".tmp." + std::to_string(::getpid());
      fs::remove_all(tmp, ec);
      const std::string cmd =
          tool + " -q --model " + palu::testing::shared_file("models/ref-gqa") + " --calib " +
          palu::testing::shared_file("data/calib.txt") +
          " --calib-samples 2 --calib-seq 128 --ratio 0.5 --group-size 1 --search uniform --out " +
          tmp + " > /dev/null 2>&1";
      compress_status_ = std::system(cmd.c_str());
      if (compress_status_ != 0) return;
      fs::remove_all(dir_, ec);
      fs::rename(tmp, dir_, ec);
      if (ec) fs::remove_all(tmp, ec);  // another process won the race; use its model
    }
    compress_status_ = 0;
    auto loaded = model::load_model(dir_);
    if (loaded.is_ok())
      model_ = std::move(loaded.value().model).release();
    else
      load_error_ = loaded.status().to_string();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    std::string why;
    if (testing::context(&why) == nullptr) GTEST_SKIP() << "no Vulkan device: " << why;
    ASSERT_EQ(compress_status_, 0)
        << "palu-compress failed (is it built? " << PALU_BINARY_DIR << "/tools)";
    ASSERT_NE(model_, nullptr) << load_error_;
    ASSERT_TRUE(model_->is_compressed());
  }
  static std::string dir_, load_error_;
  static int compress_status_;
  static model::LlamaModel* model_;  // loaded once for the suite
};
std::string VulkanCompressedTest::dir_, VulkanCompressedTest::load_error_;
int VulkanCompressedTest::compress_status_ = -1;
model::LlamaModel* VulkanCompressedTest::model_ = nullptr;

// Logit rows of the Vulkan model against the CPU's. f32/f16 latents: every row within
// kTol·max|logit| and the argmax equal where the CPU's margin is clear (the golden tolerance).
// Packed latents: z = A·x differs between the two in the last bits (another summation order;
// the CPU's own GEMM differs with and without oneDNN), so the odd code at a rounding boundary
// flips by a whole quantization step (range / 3 for q2) and a few rows move by a few 1e-2 — a
// discrete jump, not noise. So for them: every row within kPackedRowTol (a wrong scale, zero or
// layout is far beyond it), the mean row error within kTol / 2, and ≥ 90% of the clear argmaxes
// kept.
constexpr float kTol = 2e-2f;
constexpr float kPackedRowTol = 0.25f;

struct RowCheck {
  bool packed = false;
  float worst = 0.f;
  double sum = 0.0;
  int rows = 0, clear = 0, clear_kept = 0;

  void add(const float* got, const float* want, int V, const std::string& what) {
    const testing::LogitRowDiff d = testing::logit_row_diff(got, want, V);
    EXPECT_LE(d.max_diff, (packed ? kPackedRowTol : kTol) * d.max_abs) << what;
    if (d.margin > kTol * d.max_abs) {
      ++clear;
      clear_kept += d.am_got == d.am_want;
      if (!packed) {
        EXPECT_EQ(d.am_got, d.am_want) << what;
      }
    }
    const float ratio = d.max_diff / std::max(d.max_abs, 1e-30f);
    worst = std::max(worst, ratio);
    sum += ratio;
    ++rows;
  }
  // The packed-storage checks over all rows added; the worst row's ratio.
  float finish(const std::string& what) const {
    if (packed && rows > 0) {
      EXPECT_LE(sum / rows, kTol / 2) << what << ": mean max|Δ|/max|logit| over " << rows << " rows";
      EXPECT_GE(clear_kept, (clear * 9 + 9) / 10) << what << ": clear argmaxes kept " << clear_kept << " of " << clear;
    }
    return worst;
  }
};

TEST_P(VulkanCompressedTest, MatchesTheCpuDeviceModel) {
  model::DeviceModelOptions opt;
  opt.cache.storage = GetParam();
  VulkanModelOptions f32;
  f32.weights = VulkanModelOptions::Weights::kF32;
  auto vk = make_vulkan_model(*model_, opt, f32);
  ASSERT_TRUE(vk.is_ok()) << vk.status().to_string();
  auto cpu = runtime::make_device_model(*model_, DeviceKind::kCpu, opt);
  ASSERT_TRUE(cpu.is_ok()) << cpu.status().to_string();
  std::printf("[vulkan] %s\n", vk.value()->describe().c_str());
  const int V = model_->config().vocab_size;
  const std::vector<int32_t> prompt = {1,   450, 4996, 1735, 1701, 432, 1720,
                                       975, 278, 7366, 1203, 2988, 13,  1576};
  const int n = (int)prompt.size(), pre = 9;
  auto vs = vk.value()->new_sequence(32);
  auto cs = cpu.value()->new_sequence(32);
  ASSERT_TRUE(vs.is_ok() && cs.is_ok());
  std::vector<float> got((size_t)n * V), want((size_t)n * V);
  // Prefill the first `pre` tokens (all logits), then decode the rest one by one.
  Status st = vs.value()->forward(prompt.data(), pre, model::LogitsMode::kAll, got.data());
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  ASSERT_TRUE(
      cs.value()->forward(prompt.data(), pre, model::LogitsMode::kAll, want.data()).is_ok());
  for (int i = pre; i < n; ++i) {
    st = vs.value()->forward(&prompt[i], 1, model::LogitsMode::kLast, got.data() + (size_t)i * V);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    ASSERT_TRUE(cs.value()
                    ->forward(&prompt[i], 1, model::LogitsMode::kLast, want.data() + (size_t)i * V)
                    .is_ok());
  }
  RowCheck check;
  check.packed = cache::storage_is_packed(GetParam());
  for (int i = 0; i < n; ++i) {
    check.add(&got[(size_t)i * V], &want[(size_t)i * V], V,
              std::string(cache::storage_name(GetParam())) + " pos " + std::to_string(i));
  }
  // A second chunk after the decode steps (latent prefill with p0 > 0).
  ASSERT_TRUE(vs.value()->truncate(pre - 2).is_ok());
  ASSERT_TRUE(cs.value()->truncate(pre - 2).is_ok());
  st = vs.value()->forward(prompt.data() + pre - 2, 5, model::LogitsMode::kAll, got.data());
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  ASSERT_TRUE(cs.value()
                  ->forward(prompt.data() + pre - 2, 5, model::LogitsMode::kAll, want.data())
                  .is_ok());
  for (int i = 0; i < 5; ++i) check.add(&got[(size_t)i * V], &want[(size_t)i * V], V, "chunk pos " + std::to_string(i));
  const float worst = check.finish(cache::storage_name(GetParam()));
  EXPECT_EQ(vs.value()->size(), pre + 3);
  EXPECT_GT(vs.value()->cache_bytes(), 0u);
  std::printf("[vulkan] latent %s: worst max|Δ|/max|logit| %.2e, cache %zu bytes for 32 tokens\n",
              cache::storage_name(GetParam()), worst, vs.value()->cache_bytes());
}

// One step of a window script: forward n tokens (a chunk with every position's logits, or one
// token) or truncate to `truncate_to` tokens.
struct ScriptStep {
  int n = 0;
  int truncate_to = -1;
};

// Runs `script` on a new sequence of m and returns every forwarded position's logits in order.
// Tokens after a truncation differ from the ones they replace (epoch), so stale cache rows or
// stale window slots would show.
std::vector<float> run_script(model::DeviceModel* m, const std::vector<ScriptStep>& script, int V,
                              int cap) {
  std::vector<float> all;
  auto seq = m->new_sequence(cap);
  EXPECT_TRUE(seq.is_ok()) << seq.status().to_string();
  if (!seq.is_ok()) return all;
  model::DeviceSequence* s = seq.value().get();
  int epoch = 0;
  auto token = [&](int pos) {
    return (int32_t)(1 + (pos * 7919 + epoch * 104729 + 450) % (V - 1));
  };
  for (const ScriptStep& st : script) {
    if (st.truncate_to >= 0) {
      EXPECT_TRUE(s->truncate(st.truncate_to).is_ok());
      ++epoch;
      continue;
    }
    std::vector<int32_t> toks(st.n);
    for (int i = 0; i < st.n; ++i) toks[i] = token(s->size() + i);
    std::vector<float> logits((size_t)st.n * V);
    const Status r = s->forward(toks.data(), st.n, model::LogitsMode::kAll, logits.data());
    EXPECT_TRUE(r.is_ok()) << r.to_string();
    if (!r.is_ok()) return {};
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

// Prefill chunks longer than the window, token-by-token decode past it, then a truncation below
// the window's start (the aged-out rows stay packed, the window refills: cache::BlockPool) and
// more chunks and decode steps.
std::vector<ScriptStep> window_script() {
  std::vector<ScriptStep> v{{20}, {7}};
  for (int i = 0; i < 9; ++i) v.push_back({1});  // 36 tokens
  v.push_back({0, 14});
  v.push_back({5});
  for (int i = 0; i < 15; ++i) v.push_back({1});  // 34 tokens
  return v;
}

TEST_P(VulkanCompressedTest, PackedWindowMatchesTheCpuDeviceModel) {
  VulkanModelOptions f32;
  f32.weights = VulkanModelOptions::Weights::kF32;
  model::DeviceModelOptions opt;
  opt.cache.storage = GetParam();
  opt.cache.window_tokens = 16;
  if (!cache::storage_is_packed(GetParam())) {
    // As the CPU session: a window needs B-bit storage.
    auto vk = make_vulkan_model(*model_, opt, f32);
    ASSERT_FALSE(vk.is_ok());
    EXPECT_EQ(vk.status().code(), StatusCode::kInvalidArgument) << vk.status().to_string();
    auto cpu = runtime::make_device_model(*model_, DeviceKind::kCpu, opt);
    if (cpu.is_ok()) {
      EXPECT_FALSE(cpu.value()->new_sequence(8).is_ok());
    }
    return;
  }
  const int V = model_->config().vocab_size, cap = 48;
  const std::vector<ScriptStep> script = window_script();
  auto vk = make_vulkan_model(*model_, opt, f32);
  ASSERT_TRUE(vk.is_ok()) << vk.status().to_string();
  auto cpu = runtime::make_device_model(*model_, DeviceKind::kCpu, opt);
  ASSERT_TRUE(cpu.is_ok()) << cpu.status().to_string();
  std::printf("[vulkan] %s\n", vk.value()->describe().c_str());
  const std::vector<float> got = run_script(vk.value().get(), script, V, cap);
  const std::vector<float> want = run_script(cpu.value().get(), script, V, cap);
  ASSERT_FALSE(got.empty());
  ASSERT_EQ(got.size(), want.size());
  const int rows = (int)(got.size() / V);
  RowCheck check;
  check.packed = true;
  for (int i = 0; i < rows; ++i) {
    check.add(&got[(size_t)i * V], &want[(size_t)i * V], V,
              std::string(cache::storage_name(GetParam())) + " window row " + std::to_string(i));
  }
  const float worst = check.finish(std::string(cache::storage_name(GetParam())) + " + window");
  // The same script without the window: the packed codes alone must give other logits.
  model::DeviceModelOptions plain = opt;
  plain.cache.window_tokens = 0;
  auto vk_plain = make_vulkan_model(*model_, plain, f32);
  ASSERT_TRUE(vk_plain.is_ok()) << vk_plain.status().to_string();
  const std::vector<float> packed_only = run_script(vk_plain.value().get(), script, V, cap);
  ASSERT_EQ(packed_only.size(), got.size());
  float window_effect = 0.f;
  for (int i = 0; i < rows; ++i) {
    float max_abs = 0.f, max_diff = 0.f;
    for (int j = 0; j < V; ++j) {
      const size_t k = (size_t)i * V + j;
      max_abs = std::max(max_abs, std::fabs(got[k]));
      max_diff = std::max(max_diff, std::fabs(got[k] - packed_only[k]));
    }
    window_effect = std::max(window_effect, max_diff / std::max(max_abs, 1e-30f));
  }
  std::printf(
      "[vulkan] latent %s + window 16: worst max|Δ|/max|logit| vs cpu %.2e; the window moves "
      "the logits by up to %.2e of max|logit|\n",
      cache::storage_name(GetParam()), worst, window_effect);
  EXPECT_GT(window_effect, 10 * worst) << "the window changed nothing measurable";
}

// A window as long as the sequence: every read comes from the f16 copies, so the packed model
// must give the f16-latent model's logits (the same f16 values, the same summation order).
TEST_P(VulkanCompressedTest, WindowCoveringTheSequenceEqualsF16Latents) {
  if (!cache::storage_is_packed(GetParam())) GTEST_SKIP() << "window only for packed storage";
  VulkanModelOptions f32;
  f32.weights = VulkanModelOptions::Weights::kF32;
  model::DeviceModelOptions win, f16;
  win.cache.storage = GetParam();
  win.cache.window_tokens = 64;
  f16.cache.storage = cache::CacheStorage::kF16;
  auto a = make_vulkan_model(*model_, win, f32);
  auto b = make_vulkan_model(*model_, f16, f32);
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  const int V = model_->config().vocab_size;
  const std::vector<ScriptStep> script = {{11}, {1}, {1}, {1}, {0, 6}, {4}, {1}, {1}};
  const std::vector<float> x = run_script(a.value().get(), script, V, 32);
  const std::vector<float> y = run_script(b.value().get(), script, V, 32);
  ASSERT_FALSE(x.empty());
  ASSERT_EQ(x.size(), y.size());
  float worst = 0.f;
  for (size_t i = 0; i < x.size() / V; ++i) {
    float max_abs = 0.f, max_diff = 0.f;
    for (int j = 0; j < V; ++j) {
      max_abs = std::max(max_abs, std::fabs(y[i * V + j]));
      max_diff = std::max(max_diff, std::fabs(x[i * V + j] - y[i * V + j]));
    }
    worst = std::max(worst, max_diff / std::max(max_abs, 1e-30f));
  }
  EXPECT_LE(worst, 1e-5f);
}

INSTANTIATE_TEST_SUITE_P(Storages, VulkanCompressedTest,
                         // q3's straddling codes are covered op by op (ops_test, attention_test);
                         // the whole model runs the byte-aligned widths to keep CI time down.
                         ::testing::Values(cache::CacheStorage::kF16, cache::CacheStorage::kQ4,
                                           cache::CacheStorage::kQ2),
                         [](const auto& info) {
                           return std::string(cache::storage_name(info.param));
                         });

}  // namespace
}  // namespace palu::backends::vulkan
