// Engine: queue, engine thread, and the control requests. Scheduling and generation live in
// engine_step.cc, tiers and persistence in engine_tiers.cc.
#include "daemon/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>

#include "daemon/engine_state.h"
#include "daemon/session_file.h"
#include "model/fingerprint.h"

namespace palu::daemon {

namespace {

constexpr size_t kMaxNameBytes = 64;
constexpr size_t kMaxTextBytes = 8u << 20;
constexpr uint32_t kDefaultGenerateTokens = 128;
constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopBytes = 256;

// Session and file names: safe as file names, short.
Status check_name(const std::string& what, const std::string& name) {
  if (name.empty() || name.size() > kMaxNameBytes) {
    return invalid_argument(what + " must be 1.." + std::to_string(kMaxNameBytes) + " bytes, got " +
                            std::to_string(name.size()));
  }
  for (char c : name) {
    if (!(std::isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.')) {
      return invalid_argument(what + " '" + name + "' may only contain letters, digits, '-', '_' and '.'");
    }
  }
  if (name[0] == '.') return invalid_argument(what + " '" + name + "' must not start with '.'");
  return Status::ok();
}

}  // namespace


// ---- lifetime -------------------------------------------------------------------------------

Engine::Engine(EngineOptions options)
    : opt_(std::move(options)), host_budget_(std::make_unique<cache::SharedBudget>(opt_.host_budget_bytes)) {}

Result<std::unique_ptr<Engine>> Engine::create(EngineOptions options) {
  if (options.max_queue <= 0) return invalid_argument("engine: max_queue must be > 0");
  if (options.prefill_chunk_tokens <= 0 || options.max_batch_tokens <= 0) {
    return invalid_argument("engine: prefill_chunk_tokens and max_batch_tokens must be > 0");
  }
  std::unique_ptr<Engine> e(new Engine(std::move(options)));
  if (e->opt_.fs == nullptr) {
    e->own_fs_ = std::make_unique<RealFileSystem>();
    e->fs_ = e->own_fs_.get();
  } else {
    e->fs_ = e->opt_.fs;
  }
  if (!e->opt_.clock) {
    e->opt_.clock = [] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    };
  }
  for (const std::string& dir : {e->opt_.disk_dir, e->opt_.state_dir}) {
    if (!dir.empty() && !path_exists(*e->fs_, dir)) PALU_RETURN_IF_ERROR(e->fs_->make_dir(dir, 0700));
  }
  e->start_time_ = e->now();
  return e;
}

Engine::~Engine() { stop(false); }

double Engine::now() const { return opt_.clock(); }

void Engine::start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (thread_.joinable() || stopped_) return;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop(bool save_all) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopped_ && !thread_.joinable()) return;
    stopping_ = true;
    save_on_stop_ = save_on_stop_ || save_all;
  }
  cv_.notify_all();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  stopped_ = true;
  stopped_cv_.notify_all();
}

void Engine::wait() {
  std::unique_lock<std::mutex> lock(mu_);
  stopped_cv_.wait(lock, [this] { return stopped_; });
}

EngineCounters Engine::counters() const {
  std::lock_guard<std::mutex> lock(counters_mu_);
  return counters_;
}

// ---- the queue (any thread) -----------------------------------------------------------------

void Engine::handle(const api::Request& request, const PeerInfo& peer, std::shared_ptr<ResponseSink> sink) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_ && queue_.size() < (size_t)opt_.max_queue) {
      queue_.push_back(Item{request, peer, std::move(sink)});
      queue_depth_ = (uint32_t)queue_.size();
      cv_.notify_one();
      return;
    }
  }
  {
    std::lock_guard<std::mutex> lock(counters_mu_);
    ++counters_.busy_refusals;
  }
  if (sink) {
    sink->send(make_response(request.id(), api::BUSY,
                             "the request queue is full (" + std::to_string(opt_.max_queue) +
                                 " requests) or the daemon is stopping; retry later"));
  }
}

void Engine::connection_closed(const PeerInfo& peer) {
  std::lock_guard<std::mutex> lock(mu_);
  closed_connections_.push_back(peer.connection_id);
  cv_.notify_one();
}

void Engine::loop() {
  bool work = false;
  while (true) {
    std::deque<Item> items;
    std::vector<uint64_t> closed;
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!work) cv_.wait(lock, [this] { return stopping_ || !queue_.empty() || !closed_connections_.empty(); });
      items.swap(queue_);
      closed.swap(closed_connections_);
      queue_depth_ = 0;
      stopping = stopping_;
    }
    for (uint64_t conn : closed) {
      // The client is gone: its streams are cancelled and input not yet run is dropped; the
      // sessions themselves stay (they are named and can be resumed).
      for (auto& [id, s] : sessions_) {
        if (s->gen && s->gen->connection_id == conn) {
          s->gen->sink.reset();
          finish_generation(s.get(), api::CANCELLED, "cancelled", "the connection closed");
          s->pending.clear();
        }
        if (s->append_waiter && s->append_waiter->connection_id == conn) {
          s->append_waiter.reset();
          s->pending.clear();
        }
      }
    }
    for (Item& it : items) {
      {
        std::lock_guard<std::mutex> lock(counters_mu_);
        ++counters_.requests;
      }
      try {
        process(it);
      } catch (const std::exception& e) {
        reply(it.sink, it.request.id(), internal_error(std::string("engine: ") + e.what()));
      }
    }
    if (stopping) break;
    try {
      work = step();
    } catch (const std::exception& e) {
      work = false;
    }
  }
  // Shutting down: cancel streams, then save if asked (SIGTERM).
  for (auto& [id, s] : sessions_) {
    if (s->gen) finish_generation(s.get(), api::CANCELLED, "cancelled", "the daemon is stopping");
    if (s->append_waiter) {
      reply(s->append_waiter->sink, s->append_waiter->request_id, failed_precondition("the daemon is stopping"));
      s->append_waiter.reset();
    }
  }
  if (save_on_stop_ && !opt_.state_dir.empty()) {
    for (auto& [id, s] : sessions_) {
      s->pending.clear();
      (void)save_session(s.get(), saved_path(s->owner, s->name));
    }
  }
}

void Engine::process(Item& it) {
  using R = api::Request;
  switch (it.request.body_case()) {
    case R::kLoadModel: return on_load_model(it);
    case R::kListModels: return on_list_models(it);
    case R::kUnloadModel: return on_unload_model(it);
    case R::kCreateSession: return on_create_session(it);
    case R::kAppend: return on_append(it);
    case R::kGenerate: return on_generate(it);
    case R::kCancel: return on_cancel(it);
    case R::kFork: return on_fork(it);
    case R::kSave: return on_save(it);
    case R::kRestore: return on_restore(it);
    case R::kClose: return on_close(it);
    case R::kListSessions: return on_list_sessions(it);
    case R::kStats: return on_stats(it);
    case R::kTokenize: return on_tokenize(it);
    case R::kDetokenize: return on_detokenize(it);
    case R::kHandshake:
      return reply(it.sink, it.request.id(), failed_precondition("handshake: already done on this connection"));
    default:
      return reply(it.sink, it.request.id(), invalid_argument("request has no body (an unknown request type?)"));
  }
}

// ---- models ---------------------------------------------------------------------------------

// Checks a cache setting on its own: bits 0/2/3/4/8, a window only with bits and at most
// kMaxWindowTokens. `field` names where the setting came from.
static Status check_cache_values(const api::CacheSettings& c, const std::string& field) {
  if (c.latent_bits() != 0 && !cache::valid_latent_bits((int)c.latent_bits())) {
    return invalid_argument(field + ".latent_bits must be 0, 2, 3, 4 or 8, got " + std::to_string(c.latent_bits()));
  }
  if (c.window_tokens() > 0 && c.latent_bits() == 0) {
    return invalid_argument(field + ".window_tokens needs latent_bits (the window keeps f16 copies of quantized rows)");
  }
  if (c.window_tokens() > (uint32_t)cache::CacheLayout::kMaxWindowTokens) {
    return invalid_argument(field + ".window_tokens must be at most " +
                            std::to_string(cache::CacheLayout::kMaxWindowTokens) + ", got " +
                            std::to_string(c.window_tokens()));
  }
  return Status::ok();
}

// ... and against a model: bits only for a compressed model.
static Status check_cache_settings(const model::LlamaModel& lm, const std::string& path,
                                   const api::CacheSettings& c, const std::string& field) {
  PALU_RETURN_IF_ERROR(check_cache_values(c, field));
  if (c.latent_bits() != 0 && !lm.is_compressed()) {
    return invalid_argument(field + ".latent_bits needs a compressed model (made by palu-compress); " + path +
                            " is not one");
  }
  return Status::ok();
}

static std::string settings_str(const api::CacheSettings& c) {
  return "latent_bits " + std::to_string(c.latent_bits()) + ", window " + std::to_string(c.window_tokens());
}

Result<Engine::CachePool*> Engine::pool_for(Model* m, const api::CacheSettings& c) {
  for (auto& p : m->pools) {
    if (p->cache.latent_bits() == c.latent_bits() && p->cache.window_tokens() == c.window_tokens()) return p.get();
  }
  PALU_RETURN_IF_ERROR(check_cache_settings(m->m(), m->path, c, "cache"));
  model::CacheOptions co;
  co.storage = cache::CacheStorage::kF16;
  if (c.latent_bits() != 0) cache::storage_for_bits((int)c.latent_bits(), &co.storage);
  co.window_tokens = (int)c.window_tokens();
  PALU_ASSIGN_OR_RETURN(cache::CacheLayoutSpec spec, m->m().cache_layout_spec(co));
  PALU_ASSIGN_OR_RETURN(cache::CacheLayout layout, cache::CacheLayout::create(spec));
  if (opt_.host_budget_bytes < layout.session_bytes(1)) {
    return resource_exhausted("model '" + m->name + "' with cache " + settings_str(c) + ": the host budget (" +
                              std::to_string(opt_.host_budget_bytes) +
                              " bytes) is less than one session of one token needs (" +
                              std::to_string(layout.session_bytes(1)) + " bytes); raise --host-budget");
  }
  PALU_ASSIGN_OR_RETURN(cache::BlockPool pool, cache::BlockPool::create(std::move(layout), host_budget_.get()));
  auto p = std::make_unique<CachePool>();
  p->model = m;
  p->cache = c;
  p->options = co;
  p->pool = std::make_unique<cache::BlockPool>(std::move(pool));
  p->layout_hash = cache::layout_hash(p->pool->layout());
  m->pools.push_back(std::move(p));
  return m->pools.back().get();
}

void Engine::drop_pool_if_unused(CachePool* p) {
  Model* m = p->model;
  if (p->sessions > 0 || p == m->default_pool()) return;
  for (auto it = m->pools.begin(); it != m->pools.end(); ++it) {
    if (it->get() == p) {
      m->pools.erase(it);
      return;
    }
  }
}

Status Engine::load_model(const std::string& name_in, const std::string& path, const api::CacheSettings& cache_s) {
  const std::string name = name_in.empty() ? std::filesystem::path(path).filename().string() : name_in;
  PALU_RETURN_IF_ERROR(check_name("model name", name));
  if (models_.count(name)) return already_exists("model '" + name + "' is already loaded");
  PALU_RETURN_IF_ERROR(check_cache_values(cache_s, "cache"));  // before the (slow) load
  auto m = std::make_unique<Model>();
  m->name = name;
  m->path = path;
  m->cache = cache_s;
  PALU_ASSIGN_OR_RETURN(m->loaded, model::load_model(path));
  auto fp = model::fingerprint_model(path);
  m->fingerprint = fp.is_ok() ? fp.value() : "unknown";
  PALU_RETURN_IF_ERROR(pool_for(m.get(), cache_s).status());
  const int mp = m->m().config().max_position_embeddings;
  m->max_context = mp > 0 ? mp : 1 << 20;
  models_[name] = std::move(m);
  return Status::ok();
}

Result<Engine::Model*> Engine::find_model(const std::string& name) {
  if (name.empty()) {
    if (models_.empty()) return not_found("no model is loaded (load one with LoadModel or palud --model)");
    return models_.begin()->second.get();
  }
  auto it = models_.find(name);
  if (it == models_.end()) return not_found("model '" + name + "' is not loaded");
  return it->second.get();
}

api::ModelInfo Engine::model_info(const Model& m) const {
  api::ModelInfo i;
  i.set_name(m.name);
  i.set_path(m.path);
  i.set_architecture(m.m().config().architecture);
  i.set_summary(m.m().config().summary());
  i.set_compressed(m.m().is_compressed());
  i.set_kv_bytes_per_token(m.default_pool()->pool->layout().token_bytes());
  i.set_max_context((uint32_t)m.max_context);
  i.set_fingerprint(m.fingerprint);
  *i.mutable_cache() = m.cache;
  i.set_vocab_size((uint32_t)m.m().config().vocab_size);
  return i;
}

void Engine::on_load_model(Item& it) {
  const api::LoadModel& r = it.request.load_model();
  if (r.path().empty()) return reply(it.sink, it.request.id(), invalid_argument("load_model.path is empty"));
  Status st = load_model(r.name(), r.path(), r.cache());
  if (!st.is_ok()) return reply(it.sink, it.request.id(), st);
  const std::string name = r.name().empty() ? std::filesystem::path(r.path()).filename().string() : r.name();
  api::Response resp = make_response(it.request.id(), api::OK, "loaded");
  *resp.mutable_model() = model_info(*models_[name]);
  it.sink->send(resp);
}

void Engine::on_list_models(Item& it) {
  api::Response resp = make_response(it.request.id(), api::OK, "");
  auto* list = resp.mutable_models();
  for (const auto& [n, m] : models_) *list->add_models() = model_info(*m);
  it.sink->send(resp);
}

void Engine::on_unload_model(Item& it) {
  auto m = find_model(it.request.unload_model().name());
  if (!m.is_ok()) return reply(it.sink, it.request.id(), m.status());
  if (it.request.unload_model().name().empty()) {
    return reply(it.sink, it.request.id(), invalid_argument("unload_model.name is empty"));
  }
  if (m.value()->sessions > 0) {
    return reply(it.sink, it.request.id(),
                 failed_precondition("model '" + m.value()->name + "' has " + std::to_string(m.value()->sessions) +
                                     " sessions; close them first"));
  }
  models_.erase(m.value()->name);
  reply(it.sink, it.request.id(), Status::ok());
}

// ---- sessions -------------------------------------------------------------------------------

Result<Engine::Session*> Engine::find_session(const api::SessionRef& ref, uid_t uid) {
  Session* found = nullptr;
  if (ref.id() != 0) {
    auto itr = sessions_.find(ref.id());
    if (itr != sessions_.end()) found = itr->second.get();
  } else if (!ref.name().empty()) {
    for (auto& [id, s] : sessions_) {
      if (s->name == ref.name() && s->owner == uid) found = s.get();
    }
  } else {
    return invalid_argument("session: give its id or its name");
  }
  if (found == nullptr) {
    return not_found("session " + (ref.id() ? std::to_string(ref.id()) : "'" + ref.name() + "'") + " does not exist");
  }
  if (found->owner != uid) {
    return permission_denied("session " + std::to_string(found->id) + " belongs to another user");
  }
  return found;
}

Result<Engine::Session*> Engine::find_idle_session(const api::SessionRef& ref, uid_t uid) {
  PALU_ASSIGN_OR_RETURN(Session * s, find_session(ref, uid));
  if (s->gen || s->append_waiter) {
    return failed_precondition("session '" + s->name + "' is busy with another request; cancel it first");
  }
  return s;
}

api::SessionInfo Engine::session_info(const Session& s) const {
  api::SessionInfo i;
  i.set_id(s.id);
  i.set_name(s.name);
  i.set_model(s.model->name);
  // The session's length: cached tokens and input queued to run (a restored session keeps its
  // last token queued to recompute the next-token logits).
  i.set_tokens((uint32_t)(s.tokens.size() + s.pending.size()));
  i.set_max_context((uint32_t)s.max_context);
  i.set_kv_bytes(s.on_gpu()     ? s.dev->cache_bytes()
                 : s.resident() ? s.pool->pool->layout().session_bytes((int64_t)s.tokens.size())
                                : s.spill_bytes);
  *i.mutable_cache() = s.pool->cache;
  i.set_decode_on_host(s.decode_on_host);
  i.set_tier(tier_name(s.tier));
  i.set_state(s.gen ? "generating" : !s.pending.empty() ? "prefill" : "idle");
  i.set_last_used_unix(s.last_used - start_time_);
  i.set_saved(s.saved);
  return i;
}

void Engine::on_create_session(Item& it) {
  const api::CreateSession& r = it.request.create_session();
  auto mr = find_model(r.model());
  if (!mr.is_ok()) return reply(it.sink, it.request.id(), mr.status());
  Model* m = mr.value();
  if (r.has_cache()) {
    if (Status st = check_cache_settings(m->m(), m->path, r.cache(), "create_session.cache"); !st.is_ok()) {
      return reply(it.sink, it.request.id(), st);
    }
  }
  if ((int)sessions_.size() >= opt_.max_sessions) {
    return reply(it.sink, it.request.id(),
                 resource_exhausted("the daemon holds " + std::to_string(sessions_.size()) + " sessions, the limit"));
  }
  const uint64_t id = next_session_id_++;
  std::string name = r.name().empty() ? "s" + std::to_string(id) : r.name();
  if (Status st = check_name("create_session.name", name); !st.is_ok()) return reply(it.sink, it.request.id(), st);
  for (auto& [sid, s] : sessions_) {
    if (s->owner == it.peer.uid && s->name == name) {
      return reply(it.sink, it.request.id(),
                   already_exists("a session named '" + name + "' already exists"));
    }
  }
  if (r.max_context() > (uint32_t)m->max_context) {
    return reply(it.sink, it.request.id(),
                 invalid_argument("create_session.max_context " + std::to_string(r.max_context()) +
                                  " exceeds the model's context " + std::to_string(m->max_context)));
  }
  std::vector<int32_t> prompt;
  if (!r.system_prompt().empty()) {
    if (r.system_prompt().size() > kMaxTextBytes) {
      return reply(it.sink, it.request.id(), invalid_argument("create_session.system_prompt is over 8 MiB"));
    }
    auto ids = m->tok().encode(r.system_prompt(), /*add_bos=*/true);
    if (!ids.is_ok()) return reply(it.sink, it.request.id(), ids.status());
    prompt = std::move(ids).value();
  }
  auto pr = r.has_cache() ? pool_for(m, r.cache()) : Result<CachePool*>(m->default_pool());
  if (!pr.is_ok()) return reply(it.sink, it.request.id(), pr.status());
  CachePool* pool = pr.value();
  const cache::PoolRequest create = cache::PoolRequest::create((cache::SeqId)id);
  if (Status st = commit_with_room(pool, {&create, 1}, pool->pool->layout().session_blocks(0), {}); !st.is_ok()) {
    drop_pool_if_unused(pool);
    return reply(it.sink, it.request.id(), st);
  }
  auto s = std::make_unique<Session>();
  s->id = id;
  s->name = name;
  s->owner = it.peer.uid;
  s->model = m;
  s->pool = pool;
  s->decode_on_host = r.decode_on_host();
  ++pool->sessions;
  ++m->sessions;  // counted before any free_session below, which uncounts
  s->max_context = r.max_context() ? (int)r.max_context() : m->max_context;
  s->last_used = now();
  s->pending.assign(prompt.begin(), prompt.end());
  if ((int)prompt.size() > s->max_context) {
    const int max_context = s->max_context;
    free_session(s.get());
    return reply(it.sink, it.request.id(),
                 invalid_argument("the system prompt has " + std::to_string(prompt.size()) +
                                  " tokens, over the session's context " + std::to_string(max_context)));
  }
  api::Response resp = make_response(it.request.id(), api::OK, "created");
  *resp.mutable_session() = session_info(*s);
  sessions_[id] = std::move(s);
  it.sink->send(resp);
}

// Tokenizes Append/Generate input: text or ids (ids checked against the vocabulary).
static Result<std::vector<int32_t>> input_tokens(const Engine::Model& m, const std::string& text,
                                                 const google::protobuf::RepeatedField<int32_t>& ids, bool add_bos,
                                                 const char* field) {
  if (!text.empty() && !ids.empty()) {
    return invalid_argument(std::string(field) + ": give text or token ids, not both");
  }
  if (text.size() > kMaxTextBytes) return invalid_argument(std::string(field) + ": text is over 8 MiB");
  std::vector<int32_t> out;
  if (!text.empty() || (add_bos && ids.empty())) {
    PALU_ASSIGN_OR_RETURN(out, m.tok().encode(text, add_bos));
    return out;
  }
  const int V = m.m().config().vocab_size;
  if (add_bos && m.tok().bos_id() >= 0) out.push_back(m.tok().bos_id());
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= V) {
      return invalid_argument(std::string(field) + ": token id " + std::to_string(ids[i]) + " at index " +
                              std::to_string(i) + " is outside the vocabulary [0, " + std::to_string(V) + ")");
    }
    out.push_back(ids[i]);
  }
  return out;
}

void Engine::on_append(Item& it) {
  const api::Append& r = it.request.append();
  auto sr = find_idle_session(r.session(), it.peer.uid);
  if (!sr.is_ok()) return reply(it.sink, it.request.id(), sr.status());
  Session* s = sr.value();
  auto ids = input_tokens(*s->model, r.text(), r.token_ids(), r.add_bos(), "append");
  if (!ids.is_ok()) return reply(it.sink, it.request.id(), ids.status());
  const size_t total = s->tokens.size() + s->pending.size() + ids.value().size();
  if (total > (size_t)s->max_context) {
    return reply(it.sink, it.request.id(),
                 out_of_range("append: the session would hold " + std::to_string(total) + " tokens, over its context " +
                              std::to_string(s->max_context)));
  }
  s->pending.insert(s->pending.end(), ids.value().begin(), ids.value().end());
  s->last_used = now();
  s->append_waiter = Session::AppendWaiter{it.request.id(), it.sink, it.peer.connection_id,
                                           (uint32_t)ids.value().size()};
  if (s->pending.empty()) {  // nothing to run: answer now
    api::Response resp = make_response(it.request.id(), api::OK, "");
    resp.mutable_append()->set_appended(0);
    resp.mutable_append()->set_tokens((uint32_t)s->tokens.size());
    it.sink->send(resp);
    s->append_waiter.reset();
  }
}

void Engine::on_generate(Item& it) {
  const api::Generate& r = it.request.generate();
  auto sr = find_idle_session(r.session(), it.peer.uid);
  if (!sr.is_ok()) return reply(it.sink, it.request.id(), sr.status());
  Session* s = sr.value();
  const api::SamplingParams& sp = r.sampling();
  auto bad = [&](const std::string& m) { reply(it.sink, it.request.id(), invalid_argument(m)); };
  if (!std::isfinite(sp.temperature()) || sp.temperature() < 0.f || sp.temperature() > 100.f) {
    return bad("generate.sampling.temperature must be a finite value in [0, 100], got " +
               std::to_string(sp.temperature()));
  }
  if (!std::isfinite(sp.top_p()) || sp.top_p() < 0.f || sp.top_p() > 1.f) {
    return bad("generate.sampling.top_p must be in [0, 1] (0 = 1), got " + std::to_string(sp.top_p()));
  }
  if (r.max_tokens() > opt_.max_generate_tokens) {
    return bad("generate.max_tokens must be ≤ " + std::to_string(opt_.max_generate_tokens) + ", got " +
               std::to_string(r.max_tokens()));
  }
  if ((size_t)r.stop_size() > kMaxStopStrings) return bad("generate.stop: at most 16 stop strings");
  for (const auto& st : r.stop()) {
    if (st.empty() || st.size() > kMaxStopBytes) return bad("generate.stop: each stop string must be 1..256 bytes");
  }
  const int V = s->model->m().config().vocab_size;
  for (int32_t id : r.stop_ids()) {
    if (id < 0 || id >= V) return bad("generate.stop_ids: " + std::to_string(id) + " is outside the vocabulary");
  }
  // A fresh session with no prompt starts from BOS.
  const bool add_bos = s->tokens.empty() && s->pending.empty() && s->model->tok().bos_id() >= 0;
  auto ids = input_tokens(*s->model, r.prompt(), r.prompt_ids(), add_bos && r.prompt_ids().empty(), "generate");
  if (!ids.is_ok()) return reply(it.sink, it.request.id(), ids.status());
  std::vector<int32_t> prompt = std::move(ids).value();
  if (add_bos && !r.prompt_ids().empty()) prompt.insert(prompt.begin(), s->model->tok().bos_id());
  if (s->tokens.empty() && s->pending.empty() && prompt.empty()) {
    return bad("generate: the session is empty and there is no prompt (and the vocabulary has no BOS)");
  }
  const size_t total = s->tokens.size() + s->pending.size() + prompt.size();
  if (total >= (size_t)s->max_context) {
    return reply(it.sink, it.request.id(),
                 out_of_range("generate: the session would hold " + std::to_string(total) +
                              " tokens before generating, its context is " + std::to_string(s->max_context)));
  }
  // No logits for the last cached position: the input after it was dropped (a stream cancelled
  // because its client stopped reading or left). No step would produce them and the generation
  // would wait forever: run the last token again, as a restore does.
  if (prompt.empty() && s->pending.empty() && !s->has_logits && !s->tokens.empty()) {
    if (Status st = ensure_resident(s); !st.is_ok()) return reply(it.sink, it.request.id(), st);
    auto cut = s->pool->pool->plan(
        cache::PoolRequest::truncate((cache::SeqId)s->id, (int64_t)s->tokens.size() - 1));
    Status st = cut.is_ok() ? s->pool->pool->commit(cut.value()) : cut.status();
    if (!st.is_ok()) return reply(it.sink, it.request.id(), st);
    s->pending.push_back(s->tokens.back());
    s->tokens.pop_back();
  }
  model::SamplerParams p;
  p.temperature = sp.temperature();
  p.top_p = sp.top_p() == 0.f ? 1.f : sp.top_p();
  p.top_k = (int)std::min<uint32_t>(sp.top_k(), (uint32_t)V);
  p.seed = sp.has_seed() ? sp.seed() : (uint64_t)(now() * 1e6);
  auto sampler = model::Sampler::create(p);
  if (!sampler.is_ok()) return reply(it.sink, it.request.id(), sampler.status());
  Session::Generation g;
  g.request_id = it.request.id();
  g.sink = it.sink;
  g.connection_id = it.peer.connection_id;
  g.sampler.emplace(std::move(sampler).value());
  g.max_tokens = r.max_tokens() ? r.max_tokens() : kDefaultGenerateTokens;
  g.stop.assign(r.stop().begin(), r.stop().end());
  g.stop_ids.assign(r.stop_ids().begin(), r.stop_ids().end());
  g.ignore_eos = r.ignore_eos();
  g.prompt_tokens = (uint32_t)prompt.size();
  const std::vector<int32_t>& before = s->pending.empty() ? s->tokens : std::vector<int32_t>(s->pending.begin(), s->pending.end());
  g.prev_token = !prompt.empty() ? prompt.back() : (before.empty() ? -1 : before.back());
  g.t_start = now();
  s->pending.insert(s->pending.end(), prompt.begin(), prompt.end());
  s->gen = std::move(g);
  s->last_used = now();
}

void Engine::on_cancel(Item& it) {
  const api::Cancel& r = it.request.cancel();
  Session* target = nullptr;
  if (r.has_session()) {
    auto sr = find_session(r.session(), it.peer.uid);
    if (!sr.is_ok()) return reply(it.sink, it.request.id(), sr.status());
    target = sr.value();
  } else {
    for (auto& [id, s] : sessions_) {
      if (s->owner == it.peer.uid && s->gen && s->gen->request_id == r.request_id() &&
          s->gen->connection_id == it.peer.connection_id) {
        target = s.get();
      }
    }
    if (target == nullptr) {
      return reply(it.sink, it.request.id(),
                   not_found("no running generation with request id " + std::to_string(r.request_id()) +
                             " on this connection"));
    }
  }
  if (target->gen) {
    finish_generation(target, api::CANCELLED, "cancelled", "cancelled by request " + std::to_string(it.request.id()));
  }
  if (target->append_waiter) {
    reply(target->append_waiter->sink, target->append_waiter->request_id, Status(StatusCode::kCancelled, "cancelled"));
    target->append_waiter.reset();
  }
  // Input not yet run through the model is dropped; what was run stays in the session.
  target->pending.clear();
  reply(it.sink, it.request.id(), Status::ok());
}

void Engine::on_fork(Item& it) {
  const api::Fork& r = it.request.fork();
  auto sr = find_session(r.session(), it.peer.uid);
  if (!sr.is_ok()) return reply(it.sink, it.request.id(), sr.status());
  Session* src = sr.value();
  if (src->busy()) {
    return reply(it.sink, it.request.id(), failed_precondition("fork: session '" + src->name + "' is busy"));
  }
  const uint64_t id = next_session_id_++;
  const std::string name = r.new_name().empty() ? "s" + std::to_string(id) : r.new_name();
  if (Status st = check_name("fork.new_name", name); !st.is_ok()) return reply(it.sink, it.request.id(), st);
  for (auto& [sid, s] : sessions_) {
    if (s->owner == it.peer.uid && s->name == name) {
      return reply(it.sink, it.request.id(), already_exists("a session named '" + name + "' already exists"));
    }
  }
  if (Status st = ensure_resident(src); !st.is_ok()) return reply(it.sink, it.request.id(), st);
  Model* m = src->model;
  CachePool* pool = src->pool;
  const cache::PoolRequest fork = cache::PoolRequest::fork((cache::SeqId)src->id, (cache::SeqId)id);
  if (Status st = commit_with_room(pool, {&fork, 1}, pool->pool->layout().session_blocks((int64_t)src->tokens.size()), {src});
      !st.is_ok()) {
    return reply(it.sink, it.request.id(), st);
  }
  auto s = std::make_unique<Session>();
  s->id = id;
  s->name = name;
  s->owner = src->owner;
  s->model = m;
  s->pool = pool;
  s->decode_on_host = src->decode_on_host;
  ++pool->sessions;
  s->tokens = src->tokens;
  s->max_context = src->max_context;
  s->logits = src->logits;
  s->has_logits = src->has_logits;
  s->last_used = now();
  ++m->sessions;
  api::Response resp = make_response(it.request.id(), api::OK, "forked");
  *resp.mutable_session() = session_info(*s);
  sessions_[id] = std::move(s);
  it.sink->send(resp);
}

void Engine::on_save(Item& it) {
  const api::Save& r = it.request.save();
  if (opt_.state_dir.empty()) {
    return reply(it.sink, it.request.id(), failed_precondition("save: the daemon has no state directory"));
  }
  auto sr = find_session(r.session(), it.peer.uid);
  if (!sr.is_ok()) return reply(it.sink, it.request.id(), sr.status());
  Session* s = sr.value();
  if (s->busy()) return reply(it.sink, it.request.id(), failed_precondition("save: session '" + s->name + "' is busy"));
  const std::string file = r.file_name().empty() ? s->name : r.file_name();
  if (Status st = check_name("save.file_name", file); !st.is_ok()) return reply(it.sink, it.request.id(), st);
  Status st = save_session(s, saved_path(s->owner, file));
  if (!st.is_ok()) return reply(it.sink, it.request.id(), st);
  s->saved = true;
  s->saved_file = saved_path(s->owner, file);
  api::Response resp = make_response(it.request.id(), api::OK, "saved to " + saved_path(s->owner, file));
  *resp.mutable_session() = session_info(*s);
  it.sink->send(resp);
}

void Engine::on_restore(Item& it) {
  const api::Restore& r = it.request.restore();
  if (opt_.state_dir.empty()) {
    return reply(it.sink, it.request.id(), failed_precondition("restore: the daemon has no state directory"));
  }
  if (Status st = check_name("restore.file_name", r.file_name()); !st.is_ok()) return reply(it.sink, it.request.id(), st);
  const std::string name = r.name().empty() ? r.file_name() : r.name();
  if (Status st = check_name("restore.name", name); !st.is_ok()) return reply(it.sink, it.request.id(), st);
  for (auto& [sid, s] : sessions_) {
    if (s->owner == it.peer.uid && s->name == name) {
      return reply(it.sink, it.request.id(),
                   already_exists("a session named '" + name + "' is open; close it or restore under another name"));
    }
  }
  auto s = restore_session_file(saved_path(it.peer.uid, r.file_name()), it.peer.uid, name);
  if (!s.is_ok()) return reply(it.sink, it.request.id(), s.status());
  api::Response resp = make_response(it.request.id(), api::OK, "restored");
  *resp.mutable_session() = session_info(*s.value());
  it.sink->send(resp);
}

void Engine::on_close(Item& it) {
  const api::Close& r = it.request.close();
  auto sr = find_session(r.session(), it.peer.uid);
  if (!sr.is_ok()) return reply(it.sink, it.request.id(), sr.status());
  Session* s = sr.value();
  if (s->gen) finish_generation(s, api::CANCELLED, "cancelled", "the session was closed");
  if (s->append_waiter) {
    reply(s->append_waiter->sink, s->append_waiter->request_id, Status(StatusCode::kCancelled, "the session was closed"));
    s->append_waiter.reset();
  }
  if (r.delete_saved() && !opt_.state_dir.empty()) {
    // Its saved file: the one it was last saved to or restored from, else <name>.palu.
    const std::string p = s->saved_file.empty() ? saved_path(s->owner, s->name) : s->saved_file;
    if (path_exists(*fs_, p)) (void)fs_->remove(p);
  }
  free_session(s);
  reply(it.sink, it.request.id(), Status::ok());
}

void Engine::on_list_sessions(Item& it) {
  api::Response resp = make_response(it.request.id(), api::OK, "");
  auto* list = resp.mutable_sessions();
  for (const auto& [id, s] : sessions_) {
    if (s->owner == it.peer.uid) *list->add_sessions() = session_info(*s);
  }
  it.sink->send(resp);
}

void Engine::on_stats(Item& it) {
  api::Response resp = make_response(it.request.id(), api::OK, "");
  api::StatsReply* st = resp.mutable_stats();
  const uint64_t host_used = host_budget_->used_bytes();
  uint32_t gpu_n = 0, host_n = 0, disk_n = 0;
  for (const auto& [id, s] : sessions_) (s->on_gpu() ? gpu_n : s->resident() ? host_n : disk_n)++;
  auto add = [&](const char* tier, uint64_t budget, uint64_t used, uint32_t n) {
    api::TierStats* t = st->add_tiers();
    t->set_tier(tier);
    t->set_budget_bytes(budget);
    t->set_used_bytes(used);
    t->set_sessions(n);
  };
  add("gpu", gpu_enabled() ? opt_.gpu_budget_bytes : 0, gpu_used_bytes(), gpu_n);
  add("host", opt_.host_budget_bytes, host_used, host_n);
  add("disk", opt_.disk_budget_bytes, disk_used_bytes(), disk_n);
  const EngineCounters c = counters();
  st->set_demotions(c.demotions);
  st->set_restorations(c.restorations);
  st->set_requests(c.requests);
  st->set_generated_tokens(c.generated_tokens);
  st->set_queue_depth(queue_depth_.load());
  st->set_uptime_s(now() - start_time_);
  for (const auto& [id, s] : sessions_) {
    if (s->owner == it.peer.uid) *st->add_sessions() = session_info(*s);
  }
  it.sink->send(resp);
}

void Engine::on_tokenize(Item& it) {
  const api::Tokenize& r = it.request.tokenize();
  auto m = find_model(r.model());
  if (!m.is_ok()) return reply(it.sink, it.request.id(), m.status());
  if (r.text().size() > kMaxTextBytes) return reply(it.sink, it.request.id(), invalid_argument("tokenize.text is over 8 MiB"));
  auto ids = m.value()->tok().encode(r.text(), r.add_bos());
  if (!ids.is_ok()) return reply(it.sink, it.request.id(), ids.status());
  api::Response resp = make_response(it.request.id(), api::OK, "");
  for (int32_t id : ids.value()) resp.mutable_tokenize()->add_token_ids(id);
  it.sink->send(resp);
}

void Engine::on_detokenize(Item& it) {
  const api::Detokenize& r = it.request.detokenize();
  auto m = find_model(r.model());
  if (!m.is_ok()) return reply(it.sink, it.request.id(), m.status());
  const int V = m.value()->m().config().vocab_size;
  std::vector<int32_t> ids(r.token_ids().begin(), r.token_ids().end());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= V) {
      return reply(it.sink, it.request.id(),
                   invalid_argument("detokenize: token id " + std::to_string(ids[i]) + " at index " + std::to_string(i) +
                                    " is outside the vocabulary [0, " + std::to_string(V) + ")"));
    }
  }
  auto text = m.value()->tok().decode(ids);
  if (!text.is_ok()) return reply(it.sink, it.request.id(), text.status());
  api::Response resp = make_response(it.request.id(), api::OK, "");
  resp.mutable_detokenize()->set_text(text.value());
  it.sink->send(resp);
}

}  // namespace palu::daemon
