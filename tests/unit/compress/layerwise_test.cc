// LayerwiseCalibration (tools/compress/layerwise.h): the layer-by-layer statistics and Fisher
// scores equal the whole-model ones (LlamaModel::forward's attention inputs, and
// kv_weight_gradients per sample); a model streamed from its files gives the same numbers as
// the loaded model; bad input and scratch problems are clear errors; scratch files go away.
#include "tools/compress/layerwise.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "model/llama_backward.h"
#include "tests/common/test_paths.h"
#include "tests/common/tiny_llama.h"
#include "tools/compress/calibration_stats.h"

namespace palu::compress {
namespace {

namespace fs = std::filesystem;
using model::TinyLlama;

std::vector<std::vector<int32_t>> random_samples(int count, int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, vocab - 1);
  std::vector<std::vector<int32_t>> out(count, std::vector<int32_t>(n));
  for (auto& s : out)
    for (auto& t : s) t = id(rng);
  return out;
}

std::string fresh_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("palu-layerwise-test-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

double rel_diff(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b) {
  return (a - b).norm() / std::max(1e-300, b.norm());
}

// Σ x xᵀ of every layer's attention input through LlamaModel::forward (with a KV cache).
std::vector<Eigen::MatrixXd> grams_by_forward(const model::LlamaModel& m, const std::vector<std::vector<int32_t>>& samples) {
  const model::ModelConfig& c = m.config();
  std::vector<CalibrationStats> stats;
  for (int l = 0; l < c.num_layers; ++l) stats.push_back(CalibrationStats::create(c.hidden_size).value());
  model::AttentionInputObserver obs = [&](int layer, const float* x, int n) {
    EXPECT_TRUE(stats[layer].add(x, n, c.hidden_size).is_ok());
  };
  for (const auto& s : samples) {
    auto cache = m.make_cache((int)s.size());
    EXPECT_TRUE(cache.is_ok());
    EXPECT_TRUE(m.forward(s.data(), (int)s.size(), &cache.value(), model::LogitsMode::kNone, nullptr, &obs).is_ok());
  }
  std::vector<Eigen::MatrixXd> out;
  for (auto& st : stats) out.push_back(st.gram());
  return out;
}

// [layer][group] mean over the group's entries of sqrt(mean over samples of dW²), from
// kv_weight_gradients of each sample.
void scores_by_gradients(const model::LlamaModel& m, const std::vector<std::vector<int32_t>>& samples, int fisher,
                         const HeadGrouping& g, std::vector<std::vector<double>>* ks, std::vector<std::vector<double>>* vs) {
  const model::ModelConfig& c = m.config();
  const size_t elems = (size_t)c.kv_width() * c.hidden_size;
  std::vector<std::vector<double>> ksq(c.num_layers, std::vector<double>(elems)), vsq = ksq;
  for (int s = 0; s < fisher; ++s) {
    model::KvGradients grads;
    ASSERT_TRUE(model::kv_weight_gradients(m, samples[s].data(), (int)samples[s].size(), &grads).is_ok());
    for (int l = 0; l < c.num_layers; ++l) {
      for (size_t i = 0; i < elems; ++i) {
        ksq[l][i] += (double)grads.dwk[l][i] * grads.dwk[l][i];
        vsq[l][i] += (double)grads.dwv[l][i] * grads.dwv[l][i];
      }
    }
  }
  ks->assign(c.num_layers, std::vector<double>(g.num_groups()));
  vs->assign(c.num_layers, std::vector<double>(g.num_groups()));
  const size_t per_group = (size_t)g.group_width() * c.hidden_size;
  for (int l = 0; l < c.num_layers; ++l) {
    for (int gi = 0; gi < g.num_groups(); ++gi) {
      double k = 0, v = 0;
      for (size_t i = gi * per_group; i < (gi + 1) * per_group; ++i) {
        k += std::sqrt(ksq[l][i] / fisher);
        v += std::sqrt(vsq[l][i] / fisher);
      }
      (*ks)[l][gi] = k / per_group;
      (*vs)[l][gi] = v / per_group;
    }
  }
}

class LayerwiseTinyTest : public ::testing::TestWithParam<model::TinySpec> {};

TEST_P(LayerwiseTinyTest, MatchesTheWholeModelStatisticsAndGradients) {
  TinyLlama tiny(GetParam());
  auto m = tiny.build();
  ASSERT_NE(m, nullptr);
  const model::ModelConfig& c = m->config();
  // 300 tokens: the attention runs in several 128-row chunks.
  const auto samples = random_samples(4, 300, c.vocab_size, 5);
  auto grouping = make_head_grouping(c.num_kv_heads, c.head_dim, c.num_kv_heads > 1 ? 2 : 1);
  ASSERT_TRUE(grouping.is_ok());
  const std::string dir = fresh_dir("tiny");
  LayerwiseOptions o;
  o.fisher_samples = 3;
  o.scratch_dir = dir;
  int64_t last_calib = 0, last_fisher = 0;
  o.progress = [&](const char* stage, int64_t done, int64_t total) {
    int64_t& last = std::string(stage) == "calibration" ? last_calib : last_fisher;
    EXPECT_EQ(done, last + 1) << stage;
    EXPECT_LE(done, total) << stage;
    last = done;
  };
  auto src = model_layer_source(*m);
  auto run = LayerwiseCalibration::run(*src, samples, grouping.value(), o);
  ASSERT_TRUE(run.is_ok()) << run.status().to_string();
  EXPECT_EQ(last_calib, (int64_t)c.num_layers * 4);
  EXPECT_EQ(last_fisher, (int64_t)(c.num_layers + 1) * 3);
  EXPECT_EQ(run.value()->tokens(), 4 * 300);

  const auto want = grams_by_forward(*m, samples);
  for (int l = 0; l < c.num_layers; ++l) {
    auto g = run.value()->gram(l);
    ASSERT_TRUE(g.is_ok()) << g.status().to_string();
    EXPECT_LT(rel_diff(g.value(), want[l]), 1e-5) << "layer " << l;
  }
  EXPECT_FALSE(run.value()->gram(c.num_layers).is_ok());

  std::vector<std::vector<double>> ks, vs;
  scores_by_gradients(*m, samples, 3, grouping.value(), &ks, &vs);
  ASSERT_TRUE(run.value()->has_fisher());
  for (int l = 0; l < c.num_layers; ++l) {
    for (int gi = 0; gi < grouping.value().num_groups(); ++gi) {
      EXPECT_NEAR(run.value()->k_scores()[l][gi], ks[l][gi], 1e-6 * ks[l][gi]) << "layer " << l << " group " << gi;
      EXPECT_NEAR(run.value()->v_scores()[l][gi], vs[l][gi], 1e-6 * vs[l][gi]) << "layer " << l << " group " << gi;
      EXPECT_GT(ks[l][gi], 0.0);
    }
  }
  // The run's scratch files live in one subdirectory of scratch_dir, removed with the run.
  int subdirs = 0;
  for (const auto& e : fs::directory_iterator(dir)) subdirs += e.is_directory();
  EXPECT_EQ(subdirs, 1);
  run.value().reset();
  EXPECT_TRUE(fs::is_empty(dir));
  fs::remove_all(dir);
}

INSTANTIATE_TEST_SUITE_P(Layerwise, LayerwiseTinyTest,
                         ::testing::Values(model::TinySpec{"Mha", 4, 4, false, false},
                                           model::TinySpec{"GqaTied", 4, 2, true, false},
                                           model::TinySpec{"Qwen2Bias", 4, 2, false, true}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(LayerwiseRefMhaTest, StreamingFromFilesEqualsTheLoadedModel) {
  const std::string path = palu::testing::shared_file("models/ref-mha");
  auto loaded = model::load_model(path);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  const model::ModelConfig& c = loaded.value().model->config();
  auto file_src = open_layer_source(path);
  ASSERT_TRUE(file_src.is_ok()) << file_src.status().to_string();
  EXPECT_EQ(file_src.value()->config().num_layers, c.num_layers);
  const auto samples = random_samples(2, 160, c.vocab_size, 9);
  auto grouping = make_head_grouping(c.num_kv_heads, c.head_dim, 4);
  ASSERT_TRUE(grouping.is_ok());
  const std::string dir = fresh_dir("refmha");
  LayerwiseOptions o;
  o.fisher_samples = 1;
  o.scratch_dir = dir;
  auto from_files = LayerwiseCalibration::run(*file_src.value(), samples, grouping.value(), o);
  ASSERT_TRUE(from_files.is_ok()) << from_files.status().to_string();
  auto mem_src = model_layer_source(*loaded.value().model);
  auto from_memory = LayerwiseCalibration::run(*mem_src, samples, grouping.value(), o);
  ASSERT_TRUE(from_memory.is_ok()) << from_memory.status().to_string();
  for (int l = 0; l < c.num_layers; ++l) {
    auto a = from_files.value()->gram(l), b = from_memory.value()->gram(l);
    ASSERT_TRUE(a.is_ok() && b.is_ok());
    EXPECT_EQ((a.value() - b.value()).cwiseAbs().maxCoeff(), 0.0) << "layer " << l;
    EXPECT_EQ(from_files.value()->k_scores()[l], from_memory.value()->k_scores()[l]) << "layer " << l;
    EXPECT_EQ(from_files.value()->v_scores()[l], from_memory.value()->v_scores()[l]) << "layer " << l;
  }
  EXPECT_DOUBLE_EQ(from_files.value()->fisher_loss(), from_memory.value()->fisher_loss());
  EXPECT_GT(from_files.value()->fisher_loss(), 0.0);
  // The streamed source hands out one layer, converted on demand.
  auto l3 = file_src.value()->layer(3);
  ASSERT_TRUE(l3.is_ok());
  EXPECT_EQ(l3.value()->wq, loaded.value().model->weights().layers[3].wq);
  auto kv5 = file_src.value()->layer(5, /*kv_only=*/true);
  ASSERT_TRUE(kv5.is_ok());
  EXPECT_EQ(kv5.value()->wk, loaded.value().model->weights().layers[5].wk);
  EXPECT_TRUE(kv5.value()->w_up.empty());
  EXPECT_FALSE(file_src.value()->layer(c.num_layers).is_ok());
  fs::remove_all(dir);
}

TEST(LayerwiseInputTest, BadInputAndScratchProblemsAreClearErrors) {
  TinyLlama tiny({"Mha", 4, 4, false, false});
  auto m = tiny.build();
  ASSERT_NE(m, nullptr);
  auto src = model_layer_source(*m);
  auto grouping = make_head_grouping(4, 8, 2);
  ASSERT_TRUE(grouping.is_ok());
  const std::string dir = fresh_dir("bad");
  LayerwiseOptions o;
  o.scratch_dir = dir;
  auto expect_error = [&](const std::vector<std::vector<int32_t>>& samples, const LayerwiseOptions& opt, StatusCode code,
                          const std::string& needle) {
    auto r = LayerwiseCalibration::run(*src, samples, grouping.value(), opt);
    ASSERT_FALSE(r.is_ok()) << needle;
    EXPECT_EQ(r.status().code(), code) << r.status().to_string();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status().to_string();
  };
  expect_error({}, o, StatusCode::kInvalidArgument, "no samples");
  expect_error({{1}}, o, StatusCode::kInvalidArgument, "at least 2 tokens");
  expect_error({{1, 2, 3}, {1, 2}}, o, StatusCode::kInvalidArgument, "sample 1 has 2 tokens");
  expect_error({{1, 2, 50}}, o, StatusCode::kInvalidArgument, "token id 50 of sample 0");
  expect_error({{1, 2, -1}}, o, StatusCode::kInvalidArgument, "token id -1");
  LayerwiseOptions too_many = o;
  too_many.fisher_samples = 2;
  expect_error({{1, 2, 3}}, too_many, StatusCode::kInvalidArgument, "fisher_samples 2");
  // A scratch "directory" that is a file.
  const std::string file = dir + "/not-a-dir";
  std::ofstream(file) << "x";
  LayerwiseOptions bad_dir = o;
  bad_dir.scratch_dir = file;
  expect_error({{1, 2, 3}}, bad_dir, StatusCode::kIoError, file);
  // Wrong grouping for the model.
  auto other = make_head_grouping(2, 8, 2);
  ASSERT_TRUE(other.is_ok());
  auto r = LayerwiseCalibration::run(*src, {{1, 2, 3}}, other.value(), o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("head grouping"), std::string::npos) << r.status().to_string();
  // Nothing is left behind by the failed runs.
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_FALSE(e.is_directory()) << e.path();
  fs::remove_all(dir);
}

TEST(LayerwiseInputTest, ScratchSizeFormula) {
  model::ModelConfig c;
  c.hidden_size = 4096;
  c.num_layers = 32;
  // Llama-2-7B, 16 Fisher samples of 1024 tokens: 8 GiB of layer inputs + 4 GiB of statistics.
  EXPECT_EQ(layerwise_scratch_bytes(c, 16, 1024), 4LL * 16 * 32 * 1024 * 4096 + 8LL * 32 * 4096 * 4096);
}

}  // namespace
}  // namespace palu::compress
