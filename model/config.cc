#include "model/config.h"

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>

namespace palu::model {
namespace {

using nlohmann::json;

// Reads an integer field; `required` fields must exist. Names the file and field on error.
Status get_int(const json& j, const char* key, bool required, int* out, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return invalid_argument(origin + ": required field '" + key + "' is missing");
    return Status::ok();
  }
  if (!it->is_number_integer()) {
    return invalid_argument(origin + ": field '" + key + "' must be an integer, found " + it->dump());
  }
  const int64_t v = it->get<int64_t>();
  if (v < 0 || v > (int64_t)1 << 30) {
    return invalid_argument(origin + ": field '" + key + "' = " + std::to_string(v) + " is out of range");
  }
  *out = (int)v;
  return Status::ok();
}

Status get_number(const json& j, const char* key, double* out, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::ok();
  if (!it->is_number()) {
    return invalid_argument(origin + ": field '" + key + "' must be a number, found " + it->dump());
  }
  *out = it->get<double>();
  return Status::ok();
}

Status get_bool(const json& j, const char* key, bool* out, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::ok();
  if (!it->is_boolean()) {
    return invalid_argument(origin + ": field '" + key + "' must be true or false, found " + it->dump());
  }
  *out = it->get<bool>();
  return Status::ok();
}

// bos/eos may be an integer or a list of integers (the first is used).
Status get_token_id(const json& j, const char* key, int32_t* out, const std::string& origin) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::ok();
  const json* v = &*it;
  if (v->is_array()) {
    if (v->empty()) return Status::ok();
    v = &(*v)[0];
  }
  if (!v->is_number_integer()) {
    return invalid_argument(origin + ": field '" + key + "' must be a token id, found " + it->dump());
  }
  *out = (int32_t)v->get<int64_t>();
  return Status::ok();
}

}  // namespace

Result<ModelConfig> parse_hf_config(std::string_view json_text, const std::string& origin) {
  json j = json::parse(json_text.begin(), json_text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument(origin + ": not valid JSON");
  if (!j.is_object()) return invalid_argument(origin + ": expected a JSON object at the top level");

  ModelConfig c;
  std::string model_type;
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) model_type = it->get<std::string>();
  if (model_type.empty()) {
    if (auto it = j.find("architectures"); it != j.end() && it->is_array() && !it->empty() &&
                                           (*it)[0].is_string()) {
      const std::string a = (*it)[0].get<std::string>();
      if (a == "LlamaForCausalLM") model_type = "llama";
      else if (a == "MistralForCausalLM") model_type = "mistral";
      else if (a == "Qwen2ForCausalLM") model_type = "qwen2";
      else model_type = a;
    }
  }
  if (model_type.empty()) {
    return invalid_argument(origin + ": neither 'model_type' nor 'architectures' says what the model is");
  }
  if (model_type != "llama" && model_type != "mistral" && model_type != "qwen2") {
    return unimplemented(origin + ": unknown architecture '" + model_type +
                         "' (palu supports llama, mistral and qwen2)");
  }
  c.architecture = model_type;
  c.qkv_bias = model_type == "qwen2";

  PALU_RETURN_IF_ERROR(get_int(j, "hidden_size", true, &c.hidden_size, origin));
  PALU_RETURN_IF_ERROR(get_int(j, "intermediate_size", true, &c.intermediate_size, origin));
  PALU_RETURN_IF_ERROR(get_int(j, "num_hidden_layers", true, &c.num_layers, origin));
  PALU_RETURN_IF_ERROR(get_int(j, "num_attention_heads", true, &c.num_heads, origin));
  c.num_kv_heads = c.num_heads;
  PALU_RETURN_IF_ERROR(get_int(j, "num_key_value_heads", false, &c.num_kv_heads, origin));
  if (c.num_heads > 0 && c.head_dim == 0) c.head_dim = c.hidden_size / c.num_heads;
  PALU_RETURN_IF_ERROR(get_int(j, "head_dim", false, &c.head_dim, origin));
  PALU_RETURN_IF_ERROR(get_int(j, "vocab_size", true, &c.vocab_size, origin));
  PALU_RETURN_IF_ERROR(get_int(j, "max_position_embeddings", false, &c.max_position_embeddings, origin));
  double eps = c.rms_norm_eps;
  PALU_RETURN_IF_ERROR(get_number(j, "rms_norm_eps", &eps, origin));
  c.rms_norm_eps = (float)eps;
  PALU_RETURN_IF_ERROR(get_bool(j, "tie_word_embeddings", &c.tie_word_embeddings, origin));
  PALU_RETURN_IF_ERROR(get_bool(j, "attention_bias", &c.qkv_bias, origin));
  if (model_type == "qwen2") c.qkv_bias = true;  // Qwen2 always has q/k/v biases

  // rope_theta: top level (older layout) or inside rope_parameters (newer layout).
  bool have_theta = false;
  if (auto it = j.find("rope_theta"); it != j.end() && !it->is_null()) {
    PALU_RETURN_IF_ERROR(get_number(j, "rope_theta", &c.rope_theta, origin));
    have_theta = true;
  }
  if (auto it = j.find("rope_parameters"); it != j.end() && it->is_object()) {
    if (!have_theta) PALU_RETURN_IF_ERROR(get_number(*it, "rope_theta", &c.rope_theta, origin + " rope_parameters"));
    if (auto t = it->find("rope_type"); t != it->end() && t->is_string() && t->get<std::string>() != "default") {
      return unimplemented(origin + ": rope_parameters.rope_type '" + t->get<std::string>() +
                           "' is not supported (only 'default')");
    }
  }
  if (auto it = j.find("rope_scaling"); it != j.end() && it->is_object()) {
    std::string type;
    if (auto t = it->find("rope_type"); t != it->end() && t->is_string()) type = t->get<std::string>();
    if (auto t = it->find("type"); type.empty() && t != it->end() && t->is_string()) type = t->get<std::string>();
    if (!type.empty() && type != "default") {
      return unimplemented(origin + ": rope_scaling type '" + type + "' is not supported (only 'default')");
    }
  }
  if (auto it = j.find("hidden_act"); it != j.end() && it->is_string() && it->get<std::string>() != "silu") {
    return unimplemented(origin + ": hidden_act '" + it->get<std::string>() + "' is not supported (only 'silu')");
  }
  PALU_RETURN_IF_ERROR(get_token_id(j, "bos_token_id", &c.bos_id, origin));
  PALU_RETURN_IF_ERROR(get_token_id(j, "eos_token_id", &c.eos_id, origin));
  PALU_RETURN_IF_ERROR(c.validate(origin));
  return c;
}

Status ModelConfig::validate(std::string_view origin_view) const {
  const std::string origin(origin_view);
  auto positive = [&](const char* name, int v) -> Status {
    if (v <= 0) return invalid_argument(origin + ": " + name + " must be positive, found " + std::to_string(v));
    return Status::ok();
  };
  PALU_RETURN_IF_ERROR(positive("hidden_size", hidden_size));
  PALU_RETURN_IF_ERROR(positive("intermediate_size", intermediate_size));
  PALU_RETURN_IF_ERROR(positive("num_hidden_layers", num_layers));
  PALU_RETURN_IF_ERROR(positive("num_attention_heads", num_heads));
  PALU_RETURN_IF_ERROR(positive("num_key_value_heads", num_kv_heads));
  PALU_RETURN_IF_ERROR(positive("head_dim", head_dim));
  PALU_RETURN_IF_ERROR(positive("vocab_size", vocab_size));
  if (num_heads % num_kv_heads != 0) {
    return invalid_argument(origin + ": num_attention_heads (" + std::to_string(num_heads) +
                            ") must be a multiple of num_key_value_heads (" + std::to_string(num_kv_heads) + ")");
  }
  // q_width() / kv_width() (and every projection the loader sizes from them) are int products.
  if ((int64_t)num_heads * head_dim > INT32_MAX) {
    return invalid_argument(origin + ": num_attention_heads × head_dim = " + std::to_string(num_heads) + " × " +
                            std::to_string(head_dim) + " is too large (the product must be < 2^31)");
  }
  if (head_dim % 2 != 0) {
    return invalid_argument(origin + ": head_dim must be even for RoPE, found " + std::to_string(head_dim));
  }
  if (!(rms_norm_eps > 0.f) || !std::isfinite(rms_norm_eps)) {
    return invalid_argument(origin + ": rms_norm_eps must be a positive number, found " + std::to_string(rms_norm_eps));
  }
  if (!(rope_theta > 1.0) || !std::isfinite(rope_theta)) {
    return invalid_argument(origin + ": rope_theta must be > 1, found " + std::to_string(rope_theta));
  }
  if (bos_id >= vocab_size || eos_id >= vocab_size) {
    return invalid_argument(origin + ": bos/eos token id outside vocab_size " + std::to_string(vocab_size));
  }
  return Status::ok();
}

std::string ModelConfig::summary() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s, %d layers, d %d, %d heads (%d kv) x %d, ffn %d, vocab %d, theta %g%s%s",
                architecture.c_str(), num_layers, hidden_size, num_heads, num_kv_heads, head_dim,
                intermediate_size, vocab_size, rope_theta, tie_word_embeddings ? ", tied embeddings" : "",
                qkv_bias ? ", qkv bias" : "");
  return buf;
}

}  // namespace palu::model
