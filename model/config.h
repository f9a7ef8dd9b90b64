// ModelConfig: the hyper-parameters of a Llama-family model (Llama, Mistral, Qwen2), read
// from a Hugging Face config.json or from GGUF metadata.
//
// Thread-safety: a value type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "backends/base/status.h"

namespace palu::model {

struct ModelConfig {
  std::string architecture;        // "llama", "mistral" or "qwen2"
  int hidden_size = 0;             // d
  int intermediate_size = 0;       // FFN width
  int num_layers = 0;
  int num_heads = 0;               // query heads H
  int num_kv_heads = 0;            // key/value heads H_kv (H_kv divides H)
  int head_dim = 0;                // d_h; hidden_size / num_heads unless given
  float rms_norm_eps = 1e-6f;
  int vocab_size = 0;
  bool tie_word_embeddings = false;
  int max_position_embeddings = 0;
  double rope_theta = 10000.0;
  bool qkv_bias = false;           // Qwen2: biases on q/k/v projections
  int32_t bos_id = -1;             // −1: none
  int32_t eos_id = -1;
  // GGUF files from llama.cpp's converter store W_q / W_k rows permuted for interleaved
  // (GPT-J style) RoPE; the loader un-permutes them so the forward always uses the Hugging
  // Face rotate-half layout.
  bool qk_rows_interleaved = false;

  int q_width() const { return num_heads * head_dim; }
  int kv_width() const { return num_kv_heads * head_dim; }

  // Checks the values are positive and consistent; names the offending field.
  Status validate(std::string_view origin) const;
  // One line: "llama, 8 layers, d 512, 8 heads (8 kv) × 64, ffn 1024, vocab 8000, θ 10000".
  std::string summary() const;
};

// Parses config.json text. `origin` (the file path) prefixes every error.
Result<ModelConfig> parse_hf_config(std::string_view json_text, const std::string& origin);

}  // namespace palu::model
