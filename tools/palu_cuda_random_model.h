// Random-weight Llama models built in memory (LlamaModel::from_tensors on a TensorMap of views
// into host buffers) and random Palu factors, for the CUDA whole-model tests and
// palu-cuda-model-bench (e.g. a Llama-2-7B-shaped model: nobody needs its weights to measure
// decode speed). Values are uniform with standard deviation 1/sqrt(fan-in) from a counter-based
// hash (fast, reproducible, no <random> state to share between threads); layers share one set
// of buffers when `share_layers` (a 7B shape then costs one layer of random data).
//
// Thread-safety: functions are reentrant. Errors: from_tensors' / attach_palu's Status.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/llama_model.h"

namespace palu::tools {

inline float hash_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)((double)(z >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;  // [-1, 1)
}

inline void fill_random(std::vector<float>* v, uint64_t seed, float stddev, float offset = 0.f) {
  const float a = stddev * std::sqrt(3.f);
  const int64_t n = (int64_t)v->size();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) (*v)[i] = offset + a * hash_uniform(seed, (uint64_t)i);
}

// Host buffers of a random model; keep alive while the model is built (from_tensors copies).
struct RandomTensors {
  std::map<std::string, std::vector<float>> data;
  std::map<std::string, std::vector<int64_t>> shapes;
  std::map<std::string, std::string> alias;  // name → buffer name (shared layers)
};

inline Result<std::unique_ptr<model::LlamaModel>> random_llama(const model::ModelConfig& c,
                                                               uint64_t seed,
                                                               bool share_layers = false) {
  RandomTensors t;
  const int64_t d = c.hidden_size, F = c.intermediate_size, V = c.vocab_size, qw = c.q_width(),
                kvw = c.kv_width();
  uint64_t s = seed;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float sd, float off) {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    std::vector<float> v((size_t)n);
    fill_random(&v, ++s, sd, off);
    t.data[name] = std::move(v);
    t.shapes[name] = std::move(shape);
  };
  add("model.embed_tokens.weight", {V, d}, 1.0f, 0.f);
  add("model.norm.weight", {d}, 0.1f, 1.f);
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, d}, 1.f / std::sqrt((float)d), 0.f);
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const std::string src = "model.layers.0.";
    const char* names[] = {"input_layernorm.weight",  "post_attention_layernorm.weight",
                           "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                           "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                           "mlp.gate_proj.weight",    "mlp.up_proj.weight",
                           "mlp.down_proj.weight",    "self_attn.q_proj.bias",
                           "self_attn.k_proj.bias",   "self_attn.v_proj.bias"};
    if (share_layers && l > 0) {
      for (const char* n : names)
        if (t.data.count(src + n)) t.alias[p + n] = src + n;
      continue;
    }
    const float sd = 1.f / std::sqrt((float)d);
    add(p + "input_layernorm.weight", {d}, 0.1f, 1.f);
    add(p + "post_attention_layernorm.weight", {d}, 0.1f, 1.f);
    add(p + "self_attn.q_proj.weight", {qw, d}, 2.f * sd, 0.f);
    add(p + "self_attn.k_proj.weight", {kvw, d}, 2.f * sd, 0.f);
    add(p + "self_attn.v_proj.weight", {kvw, d}, sd, 0.f);
    add(p + "self_attn.o_proj.weight", {d, qw}, 1.f / std::sqrt((float)qw), 0.f);
    add(p + "mlp.gate_proj.weight", {F, d}, sd, 0.f);
    add(p + "mlp.up_proj.weight", {F, d}, sd, 0.f);
    add(p + "mlp.down_proj.weight", {d, F}, 1.f / std::sqrt((float)F), 0.f);
    if (c.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {qw}, 0.3f, 0.f);
      add(p + "self_attn.k_proj.bias", {kvw}, 0.3f, 0.f);
      add(p + "self_attn.v_proj.bias", {kvw}, 0.3f, 0.f);
    }
  }
  model::TensorMap map;
  auto view_of = [&](const std::string& buf, const std::string& name) -> Status {
    const std::vector<float>& v = t.data.at(buf);
    model::TensorView view;
    view.dtype = DType::kF32;
    view.shape = t.shapes.at(buf);
    view.data = reinterpret_cast<const uint8_t*>(v.data());
    view.nbytes = v.size() * sizeof(float);
    view.file = "memory";
    return map.add(name, view);
  };
  for (const auto& [name, v] : t.data) PALU_RETURN_IF_ERROR(view_of(name, name));
  for (const auto& [name, buf] : t.alias) PALU_RETURN_IF_ERROR(view_of(buf, name));
  return model::LlamaModel::from_tensors(c, map, "random");
}

// Random Palu factors: groups of `group_size` KV heads, key rank k_rank and value rank v_rank
// in every group and layer (A: [r, d], B: [s·d_h, r]).
inline Status attach_random_palu(model::LlamaModel* m, int group_size, int k_rank, int v_rank,
                                 uint64_t seed) {
  const model::ModelConfig& c = m->config();
  if (group_size <= 0 || c.num_kv_heads % group_size != 0)
    return invalid_argument("attach_random_palu: group_size must divide num_kv_heads");
  model::PaluManifest man;
  man.group_size = group_size;
  man.search = "random";
  const int G = c.num_kv_heads / group_size;
  std::vector<model::PaluLayerFactors> f(c.num_layers);
  uint64_t s = seed;
  for (int l = 0; l < c.num_layers; ++l) {
    man.k_ranks.push_back(std::vector<int>(G, k_rank));
    man.v_ranks.push_back(std::vector<int>(G, v_rank));
    for (int which = 0; which < 2; ++which) {
      model::LowRankProjection& p = which == 0 ? f[l].k : f[l].v;
      for (int g = 0; g < G; ++g) {
        model::LowRankGroup grp;
        grp.rank = which == 0 ? k_rank : v_rank;
        grp.a.resize((size_t)grp.rank * c.hidden_size);
        grp.b.resize((size_t)group_size * c.head_dim * grp.rank);
        fill_random(&grp.a, ++s, (which == 0 ? 2.f : 1.f) / std::sqrt((float)c.hidden_size));
        fill_random(&grp.b, ++s, 1.f / std::sqrt((float)grp.rank));
        p.groups.push_back(std::move(grp));
      }
    }
  }
  return m->attach_palu(std::move(man), std::move(f), 0);
}

}  // namespace palu::tools
