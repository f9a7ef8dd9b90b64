// load_model(): a tiny synthetic model loads and runs; a table of broken model directories,
// each refused with an error that names the file and what is wrong.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "model/llama_model.h"
#include "model/palu_format.h"
#include "tests/common/test_paths.h"

namespace palu::model {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct TinyTensor {
  std::string dtype = "F32";
  std::vector<int64_t> shape;
  std::string bytes;
};

// Writes a safetensors file from named tensors.
void write_safetensors(const std::string& path, const std::map<std::string, TinyTensor>& tensors) {
  json h = json::object();
  std::string data;
  for (const auto& [name, t] : tensors) {
    h[name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {data.size(), data.size() + t.bytes.size()}}};
    data += t.bytes;
  }
  const std::string hs = h.dump();
  std::ofstream f(path, std::ios::binary);
  uint64_t n = hs.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << hs << data;
}

TinyTensor random_f32(std::vector<int64_t> shape, std::mt19937* rng, float scale = 0.05f) {
  TinyTensor t;
  t.shape = shape;
  int64_t n = 1;
  for (auto d : shape) n *= d;
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(*rng);
  t.bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  return t;
}

class TinyModel {
 public:
  TinyModel() {
    dir_ = fs::temp_directory_path() / ("palu_tiny_" + std::to_string(::getpid()) + "_" + std::to_string(counter_++));
    fs::create_directories(dir_);
    config_ = {{"model_type", "llama"}, {"hidden_size", 32}, {"intermediate_size", 64}, {"num_hidden_layers", 2},
               {"num_attention_heads", 4}, {"num_key_value_heads", 2}, {"vocab_size", 8000},
               {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"tie_word_embeddings", true},
               {"max_position_embeddings", 64}, {"bos_token_id", 1}, {"eos_token_id", 2}};
    std::mt19937 rng(5);
    t_["model.embed_tokens.weight"] = random_f32({8000, 32}, &rng, 0.5f);
    t_["model.norm.weight"] = random_f32({32}, &rng, 1.0f);
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      t_[p + "input_layernorm.weight"] = random_f32({32}, &rng, 1.0f);
      t_[p + "post_attention_layernorm.weight"] = random_f32({32}, &rng, 1.0f);
      t_[p + "self_attn.q_proj.weight"] = random_f32({32, 32}, &rng);
      t_[p + "self_attn.k_proj.weight"] = random_f32({16, 32}, &rng);
      t_[p + "self_attn.v_proj.weight"] = random_f32({16, 32}, &rng);
      t_[p + "self_attn.o_proj.weight"] = random_f32({32, 32}, &rng);
      t_[p + "mlp.gate_proj.weight"] = random_f32({64, 32}, &rng);
      t_[p + "mlp.up_proj.weight"] = random_f32({64, 32}, &rng);
      t_[p + "mlp.down_proj.weight"] = random_f32({32, 64}, &rng);
    }
  }
  ~TinyModel() { fs::remove_all(dir_); }
  void write() {
    std::ofstream(dir_ / "config.json") << config_.dump();
    write_safetensors((dir_ / "model.safetensors").string(), t_);
    fs::copy_file(palu::testing::shared_file("models/ref-mha/tokenizer.model"), dir_ / "tokenizer.model",
                  fs::copy_options::overwrite_existing);
  }
  std::string path() const { return dir_.string(); }
  json config_;
  std::map<std::string, TinyTensor> t_;

 private:
  static inline int counter_ = 0;
  fs::path dir_;
};

TEST(ModelLoadTest, TinySyntheticModelLoadsAndRuns) {
  TinyModel m;
  m.write();
  auto loaded = load_model(m.path());
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  auto cache = loaded.value().model->make_cache(16);
  ASSERT_TRUE(cache.is_ok());
  std::vector<int32_t> ids = {1, 100, 200, 300};
  std::vector<float> logits(4 * 8000);
  ASSERT_TRUE(loaded.value().model->forward(ids.data(), 4, &cache.value(), LogitsMode::kAll, logits.data()).is_ok());
  for (float v : logits) ASSERT_TRUE(std::isfinite(v));
  // A token outside the vocabulary and a full context are errors, and leave the cache alone.
  int32_t bad = 8000;
  Status st = loaded.value().model->forward(&bad, 1, &cache.value(), LogitsMode::kLast, logits.data());
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache.value().size(), 4);
  std::vector<int32_t> many(13, 5);
  st = loaded.value().model->forward(many.data(), 13, &cache.value(), LogitsMode::kLast, logits.data());
  EXPECT_EQ(st.code(), StatusCode::kOutOfRange);
  EXPECT_EQ(cache.value().size(), 4);
}

TEST(ModelLoadTest, BrokenModelDirectoriesAreRefused) {
  struct Case {
    const char* name;
    std::function<void(TinyModel&)> breakit;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"missing tensor", [](TinyModel& m) { m.t_.erase("model.layers.1.mlp.up_proj.weight"); },
       "tensor 'model.layers.1.mlp.up_proj.weight' is missing"},
      {"wrong shape", [](TinyModel& m) { std::mt19937 r(1); m.t_["model.layers.0.self_attn.k_proj.weight"] = random_f32({32, 32}, &r); },
       "has shape [32, 32], expected [16, 32]"},
      {"integer weights", [](TinyModel& m) { m.t_["model.norm.weight"].dtype = "I32"; }, "dtype i32"},
      {"untied without lm_head", [](TinyModel& m) { m.config_["tie_word_embeddings"] = false; }, "lm_head.weight"},
      {"layer count mismatch", [](TinyModel& m) { m.config_["num_hidden_layers"] = 3; }, "model.layers.2."},
      {"vocab smaller than tokenizer", [](TinyModel& m) {
         m.config_["vocab_size"] = 100;
         std::mt19937 r(1);
         m.t_["model.embed_tokens.weight"] = random_f32({100, 32}, &r);
       }, "8000 pieces"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    TinyModel m;
    c.breakit(m);
    m.write();
    auto r = load_model(m.path());
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status().message();
  }
  {
    TinyModel m;
    m.write();
    fs::remove(fs::path(m.path()) / "config.json");
    auto r = load_model(m.path());
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("config.json"), std::string::npos) << r.status().message();
  }
  {
    TinyModel m;
    m.write();
    fs::remove(fs::path(m.path()) / "tokenizer.model");
    auto r = load_model(m.path());
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.status().message().find("tokenizer"), std::string::npos) << r.status().message();
  }
  auto r = load_model("/nonexistent/palu/model");
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
}

// palu.json with a field of the wrong type or range: found by fuzz_palu_manifest (json::value()
// threw nlohmann::type_error through read_palu_manifest and terminated the process; an
// out-of-range group_size wrapped to a valid one). Each is DATA_LOSS naming the field.
TEST(ModelLoadTest, ManifestFieldsOfTheWrongTypeOrRangeAreRefused) {
  ModelConfig config;
  config.num_layers = 1;
  config.num_heads = 2;
  config.num_kv_heads = 2;
  config.head_dim = 16;
  config.hidden_size = 32;
  const json valid = {{"format", "palu-compressed"}, {"version", 1},      {"group_size", 2},
                      {"k_ranks", {{16}}},           {"v_ranks", {{32}}}, {"ratio", 0.5},
                      {"calibration", {{"samples", 8}}}};
  const fs::path dir = fs::temp_directory_path() / ("palu_manifest_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto read_with = [&](const std::function<void(json&)>& edit) {
    json j = valid;
    edit(j);
    std::ofstream(dir / "palu.json") << j.dump();
    return read_palu_manifest(dir.string(), config);
  };
  auto ok = read_with([](json&) {});
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(ok->calibration.samples, 8);
  EXPECT_EQ(ok->rank_align, 32);  // absent: the default
  EXPECT_TRUE(read_with([](json& j) { j["search"] = nullptr; }).is_ok());  // null: the default

  struct Case {
    const char* name;
    std::function<void(json&)> edit;
    const char* expect;
  };
  const std::vector<Case> cases = {
      {"ratio string", [](json& j) { j["ratio"] = "half"; }, "'ratio' must be a number, found \"half\""},
      {"format number", [](json& j) { j["format"] = 7; }, "'format' must be a string, found 7"},
      {"hadamard int", [](json& j) { j["hadamard"] = 1; }, "'hadamard' must be true or false"},
      {"search array", [](json& j) { j["search"] = json::array({1, 2}); }, "'search' must be a string"},
      {"rank_align float", [](json& j) { j["rank_align"] = 3.5; }, "'rank_align' must be an integer"},
      {"calibration samples string", [](json& j) { j["calibration"]["samples"] = "8"; },
       "calibration: 'samples' must be an integer"},
      {"source model object", [](json& j) { j["source"] = {{"model", {{"a", 1}}}}; },
       "source: 'model' must be a string"},
      {"group_size wraps to 2", [](json& j) { j["group_size"] = (int64_t{1} << 32) + 2; },
       "'group_size' must be an integer in [-2147483648, 2147483647], found 4294967298"},
      {"version wraps to 1", [](json& j) { j["version"] = uint64_t{1} << 63 | 1; },
       "'version' must be an integer"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto r = read_with(c.edit);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find(c.expect), std::string::npos) << r.status().message();
    EXPECT_NE(r.status().message().find("palu.json"), std::string::npos) << r.status().message();
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace palu::model
