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

#include <span>

#include "backends/base/status.h"
#include "cache/block_pool.h"
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

// One decoder layer's weights from tensors in Hugging Face naming, converted to float32 and
// checked against `config` (what LlamaModel::from_tensors does for every layer). palu-compress
// streams a model through this, one layer at a time. tick (optional) is called 9 times.
Status load_layer_weights(const ModelConfig& config, const TensorMap& tensors, int layer, const std::string& origin,
                          bool skip_kv_projections, LayerWeights* out, const std::function<void()>& tick = {});
// One tensor converted to float32 (f32, f16 or bf16 in the file), its shape checked.
Status load_tensor_f32(const TensorMap& tensors, const std::string& name, const std::vector<int64_t>& shape,
                       const std::string& origin, std::vector<float>* out);

// Which logits forward() writes.
enum class LogitsMode { kNone, kLast, kAll };

// How a block-pool cache for this model stores its rows (cache_layout_spec).
struct CacheOptions {
  // Compressed models: latents in f32/f16/bf16 or packed q8/q4/q3/q2. Uncompressed models:
  // full K/V rows in f32/f16/bf16.
  cache::CacheStorage storage = cache::CacheStorage::kF16;
  int window_tokens = 0;  // packed storage only: newest N tokens also kept in f16
  int block_tokens = 16;
};

// One sequence's part of a batched forward (forward_pooled).
struct SeqStep {
  cache::SeqId seq = 0;
  const int32_t* tokens = nullptr;  // [n]
  int n = 0;
  LogitsMode mode = LogitsMode::kLast;
  float* logits = nullptr;  // kLast: [vocab]; kAll: [n, vocab]; kNone: unused
};

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
  // The simulation of an f16 window (compressed models with latent_bits > 0): a query at
  // position p sees unquantized keys/values for positions > p − window and quantized ones
  // before, as the latent cache does with window_tokens = window. make_cache() then holds exact
  // copies too. Call before the model is shared. 0 = off.
  Status set_latent_window(int window);
  int latent_window() const { return latent_window_; }

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

  // ---- block-pool cache (latent for compressed models, full K/V rows otherwise) ----
  // The layout a pool for this model needs: compressed → per layer, K and V, one row per head
  // group of the manifest's rank (pre-RoPE latents z = A·x); uncompressed → one K row
  // (post-RoPE) and one V row of H_kv·d_h values per layer. INVALID_ARGUMENT for a storage
  // the model cannot use (packed storage for full rows).
  Result<cache::CacheLayoutSpec> cache_layout_spec(const CacheOptions& options) const;
  // OK when `layout` is one this model can run on (same shape as cache_layout_spec's).
  Status check_cache_layout(const cache::CacheLayout& layout) const;

  // Runs a batch of sequences through the pool: step i's n tokens take positions
  // [L_i − n, L_i) of its sequence, L_i = pool->length(seq) (the caller appended them with
  // plan/commit first); their K/V rows or latents are written into the pool, attention reads
  // positions [0, L_i). GEMMs run over all rows of the batch at once. Uncompressed models: a
  // step with n = 1 uses the full-cache decode kernel, longer ones the tiled prefill. Compressed models: a
  // step with n = 1 uses the fused latent decode kernel (keys rebuilt from latents, RoPE,
  // online softmax, p·z^V), longer steps the latent prefill (key tiles rebuilt, causal
  // attention over them); the value up-projection is folded into W_o (done at attach).
  // Errors (nothing meaningful written to logits): a layout this model cannot use, an unknown
  // sequence, n ≤ 0 or > L_i, the same sequence twice, a token outside the vocabulary. A
  // failure after the first write (non-finite activations) leaves the steps' new rows
  // unspecified: the caller truncates the sequences back.
  Status forward_pooled(std::span<const SeqStep> steps, cache::BlockPool* pool) const;

 private:
  LlamaModel() = default;
  void attention(int layer, const float* q, int n, int start, const cache::KvCache& cache, float* out) const;
  void apply_rope(float* x, int n, int heads, int start) const;
  // out[n, H_kv·d_h] = per group B·q(A·x) for a compressed layer's K or V projection.
  // exact_out (may be null): the same without the latents' quantization.
  void low_rank_project(const LowRankProjection& p, const std::vector<float>& a_all, const float* x, int n,
                        float* out, float* exact_out = nullptr) const;

  // Pooled path helpers (llama_pooled.cc).
  void rope_rows(float* x, int rows, int ld, int heads, const int64_t* positions) const;
  Status attend_prefill(int layer, const cache::BlockPool& pool, cache::SeqId seq, int n, const float* q,
                        float* out) const;
  Status attend_decode_latent(int layer, const cache::BlockPool& pool, cache::SeqId seq, const float* q,
                              float* out) const;
  Status attend_decode_full(int layer, const cache::BlockPool& pool, cache::SeqId seq, const float* q,
                            float* out) const;
  void build_latent_runtime();

  ModelConfig config_;
  LlamaWeights w_;
  std::vector<float> inv_freq_;  // [d_h/2] θ^(−2i/d_h), computed in float32 as transformers does
  PaluManifest manifest_;
  std::vector<PaluLayerFactors> palu_;       // empty: uncompressed
  std::vector<std::vector<float>> k_a_all_;  // [layer] all groups' A^K stacked: [Σ r, d]
  std::vector<std::vector<float>> v_a_all_;  // [layer] all groups' A^V stacked
  int latent_bits_ = 0;
  int latent_window_ = 0;
  // Latent runtime (built by attach_palu).
  std::vector<std::vector<float>> wo_fused_;          // [layer] W_o' [d, latent_width] (B^V folded in)
  std::vector<std::vector<float>> out_bias_;          // [layer] [d] Σ_h W_o,h b_v (Qwen2), else empty
  std::vector<std::vector<std::vector<float>>> bkt_;  // [layer][group] B^Kᵀ [r_k, s·d_h]
  std::vector<int> head_v_off_;                       // [layer·(H+1)] latent column of head h
  // RoPE table for positions [0, rope_positions_): cos/sin [pos, d_h/2].
  std::vector<float> rope_cos_, rope_sin_;
  int rope_positions_ = 0;
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
