// LlamaModel: the weights of a Llama-family model (Llama, Mistral, Qwen2) on the CPU and the
// reference forward pass — prefill of a prompt, then token-by-token decode — through a
// standard KV cache (cache::KvCache).
//
// Weights are converted once at load to float32 (4 bytes per parameter; a 7B model needs
// ~27 GiB, the reference models ~100 MB); compute is float32. Files stay mapped only while
// loading.
//
// Thread-safety: a loaded model is immutable; forward() may run concurrently on different
// caches. Each forward uses the OpenMP thread team (backends/cpu/gemm.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backends/base/status.h"
#include "cache/kv_cache.h"
#include "model/config.h"
#include "model/tensor_map.h"
#include "model/tokenizer.h"

namespace palu::model {

struct LayerWeights {
  std::vector<float> attn_norm;  // [d]                 input_layernorm
  std::vector<float> wq;         // [H·d_h, d]          q_proj
  std::vector<float> wk;         // [H_kv·d_h, d]       k_proj
  std::vector<float> wv;         // [H_kv·d_h, d]       v_proj
  std::vector<float> wo;         // [d, H·d_h]          o_proj
  std::vector<float> bq;         // [H·d_h]             (Qwen2 only, else empty)
  std::vector<float> bk;         // [H_kv·d_h]
  std::vector<float> bv;         // [H_kv·d_h]
  std::vector<float> ffn_norm;   // [d]                 post_attention_layernorm
  std::vector<float> w_gate;     // [ffn, d]            gate_proj
  std::vector<float> w_up;       // [ffn, d]            up_proj
  std::vector<float> w_down;     // [d, ffn]            down_proj
};

struct LlamaWeights {
  std::vector<float> embed;       // [vocab, d]        embed_tokens
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [d]               norm
  std::vector<float> lm_head;     // [vocab, d]        empty when tied to embed
  const float* output_matrix() const { return lm_head.empty() ? embed.data() : lm_head.data(); }
};

// Which logits forward() writes.
enum class LogitsMode { kNone, kLast, kAll };

// Loading progress: (done, total) tensors. Called from the loading thread.
using LoadProgress = std::function<void(int done, int total)>;

class LlamaModel {
 public:
  // Builds a model from a config and tensors in Hugging Face naming and shapes.
  static Result<std::unique_ptr<LlamaModel>> from_tensors(const ModelConfig& config, const TensorMap& tensors,
                                                          std::string origin, const LoadProgress& progress = {});

  const ModelConfig& config() const { return config_; }
  const LlamaWeights& weights() const { return w_; }
  // Bytes of float32 weights held.
  size_t weight_bytes() const;
  // Parameters (the tied embedding counted once).
  int64_t parameter_count() const;

  // Runs `n` tokens at positions cache->size() .. cache->size()+n−1, appends their keys and
  // values to the cache, and writes logits: kLast → [vocab] for the last token, kAll →
  // [n, vocab]. Fails with OUT_OF_RANGE when the cache is full and INVALID_ARGUMENT for a
  // token id outside the vocabulary; the cache is unchanged on failure.
  Status forward(const int32_t* tokens, int n, cache::KvCache* cache, LogitsMode mode, float* logits) const;

  // A KV cache sized for this model.
  Result<cache::KvCache> make_cache(int max_tokens) const;

 private:
  LlamaModel() = default;
  void attention(int layer, const float* q, int n, int start, const cache::KvCache& cache, float* out) const;
  void apply_rope(float* x, int n, int heads, int start) const;

  ModelConfig config_;
  LlamaWeights w_;
  std::vector<float> inv_freq_;  // [d_h/2] θ^(−2i/d_h), computed in float32 as transformers does
};

// A loaded model with its tokenizer.
struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string path;
  std::string format;  // "safetensors" or "gguf"
};

// Loads a Hugging Face directory (config.json + safetensors + tokenizer) or a .gguf file.
Result<LoadedModel> load_model(const std::string& path, const LoadProgress& progress = {});

}  // namespace palu::model
