// Engine: one scheduling step (continuous batching of decode tokens and prefill chunks over
// every session of a model) and the streaming of generated tokens.
#include <algorithm>

#include "daemon/engine.h"
#include "daemon/engine_state.h"

namespace palu::daemon {

namespace {
// Steps a session waits on disk before it preempts resident ones.
constexpr int kSwapQuantum = 16;
}  // namespace

void Engine::finish_generation(Session* s, api::Code code, const std::string& stop_reason, const std::string& message) {
  if (!s->gen) return;
  Session::Generation& g = *s->gen;
  api::Response r = make_response(g.request_id, code, message);
  api::GenerateChunk* c = r.mutable_chunk();
  std::string rest = g.held + g.utf8.flush();
  if (stop_reason != "stop") c->set_text(rest);
  c->set_stop_reason(stop_reason);
  c->set_prompt_tokens(g.prompt_tokens);
  c->set_generated_tokens(g.generated);
  const double t = now();
  if (g.t_first > 0) {
    c->set_time_to_first_token_ms((g.t_first - g.t_start) * 1e3);
    if (g.generated > 1 && t > g.t_first) c->set_decode_tokens_per_s((g.generated - 1) / (t - g.t_first));
  }
  if (g.sink) g.sink->send(r);
  s->gen.reset();
}

void Engine::fail_session_work(Session* s, const Status& st) {
  if (s->gen) finish_generation(s, to_code(st.code()), "error", st.message());
  if (s->append_waiter) {
    reply(s->append_waiter->sink, s->append_waiter->request_id, st);
    s->append_waiter.reset();
  }
  s->pending.clear();
}

// Streams one sampled token (or ends the stream on EOS / a stop id / a stop string / the
// limits). Every sampled token becomes part of the session: it is queued as input so the
// next step runs it through the model.
void Engine::emit_token(Session* s, int32_t tok) {
  Session::Generation& g = *s->gen;
  const model::Tokenizer& tk = s->model->tok();
  const int32_t eos = tk.eos_id() >= 0 ? tk.eos_id() : s->model->m().config().eos_id;
  if (!g.ignore_eos && tok == eos) {
    s->pending.push_back(tok);
    return finish_generation(s, api::OK, "eos", "");
  }
  if (std::find(g.stop_ids.begin(), g.stop_ids.end(), tok) != g.stop_ids.end()) {
    s->pending.push_back(tok);
    return finish_generation(s, api::OK, "stop", "");
  }
  ++g.generated;
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    ++counters_.generated_tokens;
  }
  if (g.t_first == 0.0) g.t_first = now();
  g.held += g.utf8.push(tk.token_bytes(tok, g.prev_token));
  g.prev_token = tok;
  s->pending.push_back(tok);
  api::Response r = make_response(g.request_id, api::OK, "");
  r.set_final(false);
  api::GenerateChunk* c = r.mutable_chunk();
  c->add_token_ids(tok);
  // A stop string ends the stream before it; text that might still become one is held back.
  for (const std::string& stop : g.stop) {
    const size_t p = g.held.find(stop);
    if (p != std::string::npos) {
      c->set_text(g.held.substr(0, p));
      if (g.sink && !g.sink->send(r)) g.sink.reset();
      g.held.clear();
      return finish_generation(s, api::OK, "stop", "");
    }
  }
  size_t keep = 0;
  for (const std::string& stop : g.stop) {
    for (size_t k = std::min(stop.size() - 1, g.held.size()); k > keep; --k) {
      if (g.held.compare(g.held.size() - k, k, stop, 0, k) == 0) {
        keep = k;
        break;
      }
    }
  }
  c->set_text(g.held.substr(0, g.held.size() - keep));
  g.held.erase(0, g.held.size() - keep);
  if (g.sink && !g.sink->send(r)) {
    // The client stopped reading (or left): cancel; what ran stays in the session.
    g.sink.reset();
    s->pending.clear();
    return finish_generation(s, api::CANCELLED, "cancelled", "the client stopped reading the stream");
  }
  if (g.generated >= g.max_tokens) return finish_generation(s, api::OK, "max_tokens", "");
  if (s->tokens.size() + s->pending.size() >= (size_t)s->max_context) {
    return finish_generation(s, api::OK, "context_full", "");
  }
}

bool Engine::step() {
  // 1. Sessions whose next-token logits are ready sample now.
  for (auto& [id, sp] : sessions_) {
    Session* s = sp.get();
    if (s->gen && s->pending.empty() && s->has_logits) {
      s->has_logits = false;
      const int32_t tok = s->gen->sampler->sample(s->logits.data(), s->model->m().config().vocab_size);
      s->last_used = now();
      emit_token(s, tok);
    }
  }
  // 2. One batched forward per model: decode tokens first, then prefill chunks round-robin.
  bool ran = false;
  std::vector<Session*> order;
  for (auto& [id, sp] : sessions_) {
    if (!sp->pending.empty()) order.push_back(sp.get());
  }
  if (!order.empty()) {
    std::rotate(order.begin(), order.begin() + (long)(rr_cursor_ % order.size()), order.end());
    ++rr_cursor_;
    // Resident sessions first (no copy needed), except that a session waiting on disk for
    // kSwapQuantum steps goes before them: sessions that do not all fit take turns in
    // quanta instead of swapping every step.
    // With a GPU tier the same holds one level up: sessions on the GPU go before host
    // sessions waiting for GPU room, until one has waited kSwapQuantum steps.
    const bool gpu = gpu_enabled();
    std::stable_sort(order.begin(), order.end(), [gpu](const Session* a, const Session* b) {
      auto key = [gpu](const Session* s) {
        if (s->waiting_steps >= kSwapQuantum) return -1;
        if (s->on_gpu()) return 0;
        if (s->resident()) return gpu && !s->decode_on_host ? 1 : 0;
        return 2;
      };
      return key(a) < key(b);
    });
  }
  // Every pool of every model (a model's sessions with another cache setting run in their own
  // batch: the kernels read one pool's layout).
  std::vector<CachePool*> pools;
  for (auto& [mname, mp] : models_) {
    for (auto& p : mp->pools) pools.push_back(p.get());
  }
  for (CachePool* pool : pools) {
    Model* m = pool->model;
    std::vector<Session*> batch;
    std::vector<int> counts;
    int budget = opt_.max_batch_tokens;
    for (int pass = 0; pass < 2; ++pass) {
      for (Session* s : order) {
        if (s->pool != pool || std::find(batch.begin(), batch.end(), s) != batch.end()) continue;
        const bool decode = s->gen && s->pending.size() == 1;
        if ((pass == 0) != decode) continue;
        const int n = std::min<int>({(int)s->pending.size(), opt_.prefill_chunk_tokens, budget});
        if (n <= 0) continue;
        if (s->tokens.size() + (size_t)n > (size_t)s->max_context) {
          // Only a generation's last token can overflow (append checks its input): the stream
          // already ended with context_full; drop it.
          s->pending.clear();
          continue;
        }
        // The GPU unless the session's policy is decode_on_host (or the device cannot be
        // used): room is made by moving GPU sessions outside this step to host. When the
        // sessions of this step hold the room, it waits for a later step (so a session's
        // tokens come from one device); a session too big for the GPU budget even alone runs
        // from the host pool on the CPU.
        bool dev = false;
        Status st = Status::ok();
        if (gpu_enabled() && !s->decode_on_host && pool->device_error.is_ok()) {
          st = place_on_gpu(s, n, batch);
          dev = st.is_ok();
          const bool others_on_gpu =
              std::any_of(batch.begin(), batch.end(), [](const Session* b) { return b->on_gpu(); });
          if (!dev && st.code() == StatusCode::kResourceExhausted && others_on_gpu) {
            ++s->waiting_steps;
            continue;
          }
        }
        if (!dev) {
          st = ensure_resident(s, batch);
          if (st.is_ok()) st = append_positions(s, n, batch);
        }
        if (!st.is_ok()) {
          // Does not fit next to this step's batch: wait for a later step. Alone it would
          // never fit: fail the request with the numbers.
          if (st.code() == StatusCode::kResourceExhausted && !batch.empty()) {
            ++s->waiting_steps;
            continue;
          }
          fail_session_work(s, st);
          continue;
        }
        s->waiting_steps = 0;
        batch.push_back(s);
        counts.push_back(n);
        budget -= n;
      }
    }
    if (batch.empty()) continue;
    const int V = m->m().config().vocab_size;
    std::vector<std::vector<int32_t>> inputs(batch.size());
    std::vector<model::SeqStep> steps;  // the host sessions, in one batched forward
    std::vector<Status> results(batch.size());
    for (size_t i = 0; i < batch.size(); ++i) {
      Session* s = batch[i];
      inputs[i].assign(s->pending.begin(), s->pending.begin() + counts[i]);
      const bool last = counts[i] == (int)s->pending.size();
      const model::LogitsMode mode = last ? model::LogitsMode::kLast : model::LogitsMode::kNone;
      s->logits.resize(V);
      if (s->on_gpu()) {
        // One forward per GPU session; on failure its size is unchanged (the contract).
        results[i] = s->dev->forward(inputs[i].data(), counts[i], mode, s->logits.data());
      } else {
        steps.push_back(model::SeqStep{(cache::SeqId)s->id, inputs[i].data(), counts[i], mode, s->logits.data()});
      }
    }
    if (!steps.empty()) {
      const Status st = m->m().forward_pooled(steps, pool->pool.get());
      for (size_t i = 0; i < batch.size(); ++i) {
        if (!batch[i]->on_gpu()) results[i] = st;
      }
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      Session* s = batch[i];
      if (!results[i].is_ok()) {
        // Forget the positions this step added, then report.
        if (!s->on_gpu()) {
          auto undo = pool->pool->plan(cache::PoolRequest::truncate((cache::SeqId)s->id, (int64_t)s->tokens.size()));
          if (undo.is_ok()) (void)pool->pool->commit(undo.value());
        }
        s->has_logits = false;
        fail_session_work(s, results[i]);
        continue;
      }
      s->tokens.insert(s->tokens.end(), inputs[i].begin(), inputs[i].end());
      s->pending.erase(s->pending.begin(), s->pending.begin() + counts[i]);
      s->has_logits = s->pending.empty();
      s->last_used = now();
      if (s->pending.empty() && s->append_waiter) {
        api::Response r = make_response(s->append_waiter->request_id, api::OK, "");
        r.mutable_append()->set_appended(s->append_waiter->appended);
        r.mutable_append()->set_tokens((uint32_t)s->tokens.size());
        if (s->append_waiter->sink) s->append_waiter->sink->send(r);
        s->append_waiter.reset();
      }
    }
    ran = true;
  }
  if (ran) return true;
  for (auto& [id, sp] : sessions_) {
    if (sp->gen && sp->has_logits) return true;
  }
  return false;
}

}  // namespace palu::daemon
