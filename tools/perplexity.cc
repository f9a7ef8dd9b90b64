#include "tools/perplexity.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>

#include "tools/kv_session.h"
#include "tools/tool_common.h"

namespace palu::tools {

std::string hf_join_lines(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() * 2);
  size_t start = 0;
  while (true) {
    const size_t nl = raw.find('\n', start);
    if (start > 0) out += "\n\n";
    if (nl == std::string_view::npos) {
      out.append(raw.substr(start));
      break;
    }
    out.append(raw.substr(start, nl - start));
    start = nl + 1;
  }
  return out;
}

namespace {

// −log softmax(row)[target], in double.
double nll(const float* row, int V, int target) {
  const float mx = *std::max_element(row, row + V);
  double s = 0.0;
  for (int j = 0; j < V; ++j) s += std::exp((double)row[j] - mx);
  return std::log(s) + mx - row[target];
}

}  // namespace

Result<PerplexityResult> evaluate_perplexity(const model::LlamaModel& model, const model::Tokenizer& tokenizer,
                                             std::string_view text, const PerplexityOptions& opt) {
  if (opt.ctx < 2) return invalid_argument("ctx must be at least 2, got " + std::to_string(opt.ctx));
  const int max_ctx = model.config().max_position_embeddings;
  if (max_ctx > 0 && opt.ctx > max_ctx) {
    return invalid_argument("ctx " + std::to_string(opt.ctx) + " exceeds the model's max_position_embeddings " +
                            std::to_string(max_ctx));
  }
  const double t0 = now_seconds();
  std::vector<int32_t> ids;
  if (opt.scoring == Scoring::kHf) {
    PALU_ASSIGN_OR_RETURN(ids, tokenizer.encode(hf_join_lines(text), /*add_bos=*/false));
  } else {
    PALU_ASSIGN_OR_RETURN(ids, tokenizer.encode(text, /*add_bos=*/true));
    if (tokenizer.bos_id() < 0) return failed_precondition("llamacpp scoring needs a BOS token; the vocabulary has none");
  }
  PerplexityResult r;
  r.text_tokens = (int64_t)ids.size();
  int windows = (int)(ids.size() / (size_t)opt.ctx);
  if (opt.max_windows > 0) windows = std::min(windows, opt.max_windows);
  if (windows == 0) {
    return invalid_argument("the text has " + std::to_string(ids.size()) + " tokens, fewer than one window of ctx " +
                            std::to_string(opt.ctx));
  }
  const int V = model.config().vocab_size;
  // One sequence of ctx tokens, reused for every window: the CPU KvSession or a device's.
  std::optional<KvSession> session;
  std::unique_ptr<model::DeviceSequence> dseq;
  if (opt.device) {
    PALU_ASSIGN_OR_RETURN(dseq, opt.device->new_sequence(opt.ctx));
    r.kv = opt.device->describe();
    // The device's cache bytes for a full window, per token.
    r.kv_bytes_per_token = dseq->capacity() > 0 ? dseq->cache_bytes() / (uint64_t)dseq->capacity() : 0;
  } else {
    PALU_ASSIGN_OR_RETURN(KvSession s, KvSession::create(model, opt.ctx, opt.cache));
    session.emplace(std::move(s));
    r.kv = session->describe();
    r.kv_bytes_per_token = session->bytes_per_token();
  }
  auto step = [&](const int32_t* t, int n, model::LogitsMode mode, float* out) {
    return dseq ? dseq->forward(t, n, mode, out) : session->step(t, n, mode, out);
  };
  std::vector<float> logits((size_t)opt.ctx * V);
  std::vector<int32_t> window(opt.ctx);
  for (int w = 0; w < windows; ++w) {
    std::copy(ids.begin() + (size_t)w * opt.ctx, ids.begin() + (size_t)(w + 1) * opt.ctx, window.begin());
    int first = 0;  // first position whose prediction is scored
    if (opt.scoring == Scoring::kLlamaCpp) {
      window[0] = tokenizer.bos_id();
      first = opt.ctx / 2;
    }
    PALU_RETURN_IF_ERROR(dseq ? dseq->truncate(0) : session->reset());
    if (opt.decode_all) {
      for (int t = 0; t < opt.ctx; ++t) {
        PALU_RETURN_IF_ERROR(step(window.data() + t, 1, model::LogitsMode::kLast, logits.data() + (size_t)t * V));
      }
    } else {
      PALU_RETURN_IF_ERROR(step(window.data(), opt.ctx, model::LogitsMode::kAll, logits.data()));
    }
    for (int t = first; t + 1 < opt.ctx; ++t) {
      r.nll_sum += nll(logits.data() + (size_t)t * V, V, window[t + 1]);
      ++r.scored_tokens;
    }
    r.windows = w + 1;
    if (opt.progress) opt.progress(w + 1, windows, std::exp(r.nll_sum / (double)r.scored_tokens));
  }
  r.ppl = std::exp(r.nll_sum / (double)r.scored_tokens);
  r.seconds = now_seconds() - t0;
  return r;
}

}  // namespace palu::tools
