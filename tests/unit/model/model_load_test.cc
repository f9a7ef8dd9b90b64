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

}  // namespace
}  // namespace palu::model
