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
#include "model/palu_format.h"
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

// Sees the normalised input of every layer's attention (the input of k_proj and v_proj):
// (layer, x [n, d] row-major, n). Used by palu-compress for calibration statistics.
using AttentionInputObserver = std::function<void(int layer, const float* x, int n)>;

class LlamaModel {
 public:
  // Builds a model from a config and tensors in Hugging Face naming and shapes.
  // skip_kv_projections: do not load k_proj/v_proj (a compressed model replaces them).
  static Result<std::unique_ptr<LlamaModel>> from_tensors(const ModelConfig& config, const TensorMap& tensors,
                                                          std::string origin, const LoadProgress& progress = {},
                                                          bool skip_kv_projections = false);

  // Makes this a compressed (Palu) model: keys and values are computed as B·(A·x) per head
  // group, with the latent A·x fake-quantized to `latent_bits` per token per group when
  // latent_bits > 0 (2, 3, 4 or 8) — the accuracy simulation of a quantized latent cache.
  // Call before the model is shared; checks every factor's shape.
  Status attach_palu(PaluManifest manifest, std::vector<PaluLayerFactors> factors, int latent_bits);
  bool is_compressed() const { return !palu_.empty(); }
  const PaluManifest& palu_manifest() const { return manifest_; }
  const std::vector<PaluLayerFactors>& palu_factors() const { return palu_; }
  int latent_bits() const { return latent_bits_; }

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
  Status forward(const int32_t* tokens, int n, cache::KvCache* cache, LogitsMode mode, float* logits,
                 const AttentionInputObserver* observer = nullptr) const;

  // A KV cache sized for this model.
  Result<cache::KvCache> make_cache(int max_tokens) const;

 private:
  LlamaModel() = default;
  void attention(int layer, const float* q, int n, int start, const cache::KvCache& cache, float* out) const;
  void apply_rope(float* x, int n, int heads, int start) const;
  // out[n, H_kv·d_h] = per group B·q(A·x) for a compressed layer's K or V projection.
  void low_rank_project(const LowRankProjection& p, const std::vector<float>& a_all, const float* x, int n,
                        float* out) const;

  ModelConfig config_;
  LlamaWeights w_;
  std::vector<float> inv_freq_;  // [d_h/2] θ^(−2i/d_h), computed in float32 as transformers does
  PaluManifest manifest_;
  std::vector<PaluLayerFactors> palu_;       // empty: uncompressed
  std::vector<std::vector<float>> k_a_all_;  // [layer] all groups' A^K stacked: [Σ r, d]
  std::vector<std::vector<float>> v_a_all_;  // [layer] all groups' A^V stacked
  int latent_bits_ = 0;
};

// A loaded model with its tokenizer.
struct LoadedModel {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string path;
  std::string format;  // "safetensors" or "gguf"
};

struct LoadOptions {
  LoadProgress progress;
  // Compressed models only: fake-quantize latents to this many bits (0: float latents).
  int latent_bits = 0;
};

// Loads a Hugging Face directory (config.json + safetensors + tokenizer), a compressed
// model directory (the same plus palu.json, see palu_format.h) or a .gguf file.
Result<LoadedModel> load_model(const std::string& path, const LoadOptions& options);
Result<LoadedModel> load_model(const std::string& path, const LoadProgress& progress = {});

}  // namespace palu::model
