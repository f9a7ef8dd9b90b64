// TinyLlama: a seeded random Llama-family model small enough for exact tests (d = 32, two
// layers, vocabulary 50), built in memory through LlamaModel::from_tensors.
#pragma once

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "model/llama_model.h"

namespace palu::model {

struct TinySpec {
  const char* name;
  int heads;
  int kv_heads;
  bool tied;
  bool qkv_bias;
};
inline void PrintTo(const TinySpec& s, std::ostream* os) {
  *os << s.name;
}

// Owns float32 tensors in Hugging Face naming; builds LlamaModels from views into them.
class TinyLlama {
 public:
  explicit TinyLlama(const TinySpec& s, uint32_t seed = 7) {
    cfg_.architecture = s.qkv_bias ? "qwen2" : "llama";
    cfg_.hidden_size = 32;
    cfg_.intermediate_size = 64;
    cfg_.num_layers = 2;
    cfg_.num_heads = s.heads;
    cfg_.num_kv_heads = s.kv_heads;
    cfg_.head_dim = 32 / s.heads;
    cfg_.rms_norm_eps = 1e-5f;
    cfg_.vocab_size = 50;
    cfg_.tie_word_embeddings = s.tied;
    cfg_.max_position_embeddings = 512;
    cfg_.rope_theta = 10000.0;
    cfg_.qkv_bias = s.qkv_bias;
    std::mt19937 rng(seed);
    const int64_t d = 32, F = 64, V = 50, qw = cfg_.q_width(), kvw = cfg_.kv_width();
    // Scales large enough that attention is far from uniform and every path carries gradient.
    add("model.embed_tokens.weight", {V, d}, 1.0f, 0.f, &rng);
    add("model.norm.weight", {d}, 0.2f, 1.f, &rng);
    if (!s.tied) add("lm_head.weight", {V, d}, 0.4f, 0.f, &rng);
    for (int l = 0; l < 2; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      add(p + "input_layernorm.weight", {d}, 0.2f, 1.f, &rng);
      add(p + "post_attention_layernorm.weight", {d}, 0.2f, 1.f, &rng);
      add(p + "self_attn.q_proj.weight", {qw, d}, 0.3f, 0.f, &rng);
      add(p + "self_attn.k_proj.weight", {kvw, d}, 0.3f, 0.f, &rng);
      add(p + "self_attn.v_proj.weight", {kvw, d}, 0.3f, 0.f, &rng);
      add(p + "self_attn.o_proj.weight", {d, qw}, 0.3f, 0.f, &rng);
      if (s.qkv_bias) {
        add(p + "self_attn.q_proj.bias", {qw}, 0.3f, 0.f, &rng);
        add(p + "self_attn.k_proj.bias", {kvw}, 0.3f, 0.f, &rng);
        add(p + "self_attn.v_proj.bias", {kvw}, 0.3f, 0.f, &rng);
      }
      add(p + "mlp.gate_proj.weight", {F, d}, 0.3f, 0.f, &rng);
      add(p + "mlp.up_proj.weight", {F, d}, 0.3f, 0.f, &rng);
      add(p + "mlp.down_proj.weight", {d, F}, 0.3f, 0.f, &rng);
    }
  }

  const ModelConfig& config() const { return cfg_; }
  std::vector<float>& tensor(const std::string& name) { return data_.at(name); }

  std::unique_ptr<LlamaModel> build() const {
    TensorMap map;
    for (const auto& [name, v] : data_) {
      TensorView view;
      view.dtype = DType::kF32;
      view.shape = shapes_.at(name);
      view.data = reinterpret_cast<const uint8_t*>(v.data());
      view.nbytes = v.size() * sizeof(float);
      view.file = "memory";
      EXPECT_TRUE(map.add(name, view).is_ok());
    }
    auto r = LlamaModel::from_tensors(cfg_, map, "tiny");
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? std::move(r.value()) : nullptr;
  }

 private:
  void add(const std::string& name, std::vector<int64_t> shape, float scale, float offset,
           std::mt19937* rng) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    std::normal_distribution<float> dist(0.f, scale);
    std::vector<float> v(n);
    for (float& x : v) x = offset + dist(*rng);
    data_[name] = std::move(v);
    shapes_[name] = std::move(shape);
  }

  ModelConfig cfg_;
  std::map<std::string, std::vector<float>> data_;
  std::map<std::string, std::vector<int64_t>> shapes_;
};

}  // namespace palu::model
