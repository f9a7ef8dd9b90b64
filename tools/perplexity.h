// Perplexity evaluation shared by palu-perplexity and its tests.
//
// Scoring "hf" (the protocol of ../shared/README.md): lines of the text joined with "\n\n",
// tokenized once without BOS, cut into non-overlapping windows of ctx tokens (tail dropped);
// each window from an empty cache; loss = mean NLL over positions 1..ctx−1 of every window.
//
// Scoring "llamacpp" (llama.cpp's perplexity tool): the text tokenized once with BOS; windows
// of ctx tokens whose first token is replaced by BOS; only the second half of each window is
// scored (predictions of tokens ctx/2+1 .. ctx−1).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "model/device_model.h"
#include "model/llama_model.h"

namespace palu::tools {

enum class Scoring { kHf, kLlamaCpp };

struct PerplexityOptions {
  int ctx = 512;
  Scoring scoring = Scoring::kHf;
  int max_windows = 0;  // 0: all
  // KV cache: nullopt = the dense float32 cache; otherwise the paged cache with these options.
  std::optional<model::CacheOptions> cache;
  // Run on this device model (runtime::make_device_model; its cache options apply and `cache`
  // is ignored); nullptr = the CPU KvSession path above.
  model::DeviceModel* device = nullptr;
  // Feed every window token by token (decode steps) instead of one prefill.
  bool decode_all = false;
  // Called after each window: (windows done, windows total, perplexity so far).
  std::function<void(int, int, double)> progress;
};

struct PerplexityResult {
  double ppl = 0.0;
  double nll_sum = 0.0;
  int64_t scored_tokens = 0;  // predictions that entered the mean
  int64_t text_tokens = 0;    // tokens of the whole text
  int windows = 0;
  double seconds = 0.0;
  std::string kv;                   // the cache used (KvSession::describe)
  uint64_t kv_bytes_per_token = 0;  // its bytes per token
};

// The text as the hf protocol feeds it to the tokenizer.
std::string hf_join_lines(std::string_view raw);

Result<PerplexityResult> evaluate_perplexity(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                             std::string_view text, const PerplexityOptions& options);

}  // namespace palu::tools
