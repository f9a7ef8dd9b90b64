// The C API (sdk/include/palu/palu.h) over sdk/src/client.h. Every extern "C" function
// catches what C++ may throw (memory) and turns it into a status.
#include "palu/palu.h"

#include <cmath>
#include <cstring>
#include <deque>
#include <new>
#include <string>
#include <vector>

#include "sdk/src/client.h"

namespace v1 = palu::api::v1;
using palu::sdk::Failure;

// ---------------------------------------------------------------------------------------------
// Handles

struct palu_client {
  palu::sdk::Connection conn;
  int last_status = PALU_OK;
  std::string last_error;
  palu_stream* active_stream = nullptr;

  int fail(Failure f) {
    last_status = f.status;
    last_error = std::move(f.message);
    return last_status;
  }
  int fail(int status, std::string message) { return fail(Failure{status, std::move(message)}); }
  int ok() {
    last_status = PALU_OK;
    last_error.clear();
    return PALU_OK;
  }
};

namespace {

// Strings owned by a result object; deque keeps c_str() pointers stable.
struct Strings {
  std::deque<std::string> items;
  const char* keep(const std::string& s) {
    items.push_back(s);
    return items.back().c_str();
  }
};

}  // namespace

struct palu_model_list {
  Strings strings;
  std::vector<palu_model_info> models;
};

struct palu_session_list {
  Strings strings;
  std::vector<palu_session_info> sessions;
};

struct palu_tokens {
  std::vector<int32_t> ids;
};

struct palu_stats {
  Strings strings;
  palu_daemon_stats daemon{};
  std::vector<palu_tier_info> tiers;
  palu_session_list sessions;
};

struct palu_stream {
  palu_client* client = nullptr;
  uint64_t request_id = 0;
  bool done = false;
  bool cancel_sent = false;
  int status = PALU_OK;
  std::vector<int32_t> chunk_ids;
  std::string chunk_text;
  palu_chunk chunk{};
  palu_generate_result result{};
  // The final response's chunk, delivered before the end is reported.
  bool pending_final = false;
};

namespace {

const char* static_stop_reason(const std::string& r) {
  static const char* const kReasons[] = {"max_tokens", "eos", "stop", "context_full", "cancelled"};
  for (const char* k : kReasons) {
    if (r == k) return k;
  }
  return r.empty() ? "" : "other";
}

void fill_model(palu_model_list* list, const v1::ModelInfo& m) {
  palu_model_info i{};
  i.struct_size = sizeof i;
  i.name = list->strings.keep(m.name());
  i.path = list->strings.keep(m.path());
  i.architecture = list->strings.keep(m.architecture());
  i.summary = list->strings.keep(m.summary());
  i.fingerprint = list->strings.keep(m.fingerprint());
  i.compressed = m.compressed() ? 1 : 0;
  i.kv_bytes_per_token = m.kv_bytes_per_token();
  i.max_context = m.max_context();
  i.vocab_size = m.vocab_size();
  i.latent_bits = m.cache().latent_bits();
  i.window_tokens = m.cache().window_tokens();
  list->models.push_back(i);
}

void fill_session(palu_session_list* list, const v1::SessionInfo& s) {
  palu_session_info i{};
  i.struct_size = sizeof i;
  i.id = s.id();
  i.name = list->strings.keep(s.name());
  i.model = list->strings.keep(s.model());
  i.tokens = s.tokens();
  i.max_context = s.max_context();
  i.kv_bytes = s.kv_bytes();
  i.tier = list->strings.keep(s.tier());
  i.state = list->strings.keep(s.state());
  i.last_used_unix = s.last_used_unix();
  i.saved = s.saved() ? 1 : 0;
  i.latent_bits = s.cache().latent_bits();
  i.window_tokens = s.cache().window_tokens();
  i.decode_on_host = s.decode_on_host() ? 1 : 0;
  list->sessions.push_back(i);
}

// Reads a caller's params struct over the defaults: struct_size may be smaller than ours (an
// older caller), never larger or too small to hold struct_size itself.
template <typename T>
bool read_params(palu_client* c, const T* in, T defaults, T* out, const char* type) {
  *out = defaults;
  if (!in) return true;
  if (in->struct_size < sizeof(size_t) || in->struct_size > sizeof(T)) {
    c->fail(PALU_EARG, std::string(type) + ".struct_size is " + std::to_string(in->struct_size) + ", expected " +
                           std::to_string(sizeof(T)) + " (initialise it with the matching *_default_params())");
    return false;
  }
  std::memcpy(static_cast<void*>(out), in, in->struct_size);
  return true;
}

// Checks the client and that no stream holds it. Returns PALU_OK or the error (set on c).
int begin(palu_client* c) {
  if (!c) return PALU_EARG;
  if (c->active_stream) {
    return c->fail(PALU_EPRECONDITION,
                   "a palu_stream is running on this client; read it to its end or free it first");
  }
  return PALU_OK;
}

int need_string(palu_client* c, const char* s, const char* what) {
  if (s && *s) return PALU_OK;
  return c->fail(PALU_EARG, std::string(what) + " is required (got " + (s ? "an empty string" : "NULL") + ")");
}

int call(palu_client* c, v1::Request& req, v1::Response* resp) {
  Failure f = c->conn.call(req, resp);
  if (f.status != PALU_OK) return c->fail(std::move(f));
  return c->ok();
}

void set_ref(v1::SessionRef* ref, const char* session) { ref->set_name(session); }

// Returns a session list with one entry (when out is asked for).
int one_session(palu_client* c, const v1::Response& resp, palu_session_list** out) {
  if (!out) return PALU_OK;
  auto* list = new palu_session_list;
  fill_session(list, resp.session());
  *out = list;
  (void)c;
  return PALU_OK;
}

template <typename F>
int guarded(palu_client* c, F&& body) {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    return c ? c->fail(PALU_ENOMEM, "out of memory in the palu SDK") : PALU_ENOMEM;
  } catch (const std::exception& e) {
    return c ? c->fail(PALU_EINTERNAL, std::string("palu SDK: ") + e.what()) : PALU_EINTERNAL;
  } catch (...) {
    return c ? c->fail(PALU_EINTERNAL, "palu SDK: unknown exception") : PALU_EINTERNAL;
  }
}

int fill_generate(palu_client* c, const char* session, const palu_generate_params* in, v1::Request* req) {
  palu_generate_params p;
  if (!read_params(c, in, palu_generate_default_params(), &p, "palu_generate_params")) return c->last_status;
  if (int rc = need_string(c, session, "the session name"); rc != PALU_OK) return rc;
  if (!std::isfinite(p.temperature) || p.temperature < 0.f) {
    return c->fail(PALU_EINVAL, "temperature must be a finite number >= 0, got " + std::to_string(p.temperature));
  }
  if (!std::isfinite(p.top_p) || p.top_p < 0.f || p.top_p > 1.f) {
    return c->fail(PALU_EINVAL, "top_p must be in [0, 1], got " + std::to_string(p.top_p));
  }
  if ((p.n_prompt_ids && !p.prompt_ids) || (p.n_stop && !p.stop) || (p.n_stop_ids && !p.stop_ids)) {
    return c->fail(PALU_EARG, "an array in palu_generate_params is NULL while its count is not 0");
  }
  auto* g = req->mutable_generate();
  set_ref(g->mutable_session(), session);
  if (p.prompt) g->set_prompt(p.prompt);
  for (size_t i = 0; i < p.n_prompt_ids; ++i) g->add_prompt_ids(p.prompt_ids[i]);
  g->set_max_tokens(p.max_tokens);
  auto* s = g->mutable_sampling();
  s->set_temperature(p.temperature);
  s->set_top_p(p.top_p);
  s->set_top_k(p.top_k);
  s->set_seed(p.seed);
  s->set_has_seed(p.has_seed != 0);
  for (size_t i = 0; i < p.n_stop; ++i) {
    if (!p.stop[i]) return c->fail(PALU_EARG, "stop[" + std::to_string(i) + "] is NULL");
    g->add_stop(p.stop[i]);
  }
  for (size_t i = 0; i < p.n_stop_ids; ++i) g->add_stop_ids(p.stop_ids[i]);
  g->set_ignore_eos(p.ignore_eos != 0);
  return PALU_OK;
}

void copy_result(const palu_generate_result& from, palu_generate_result* to) {
  if (!to) return;
  const size_t n = to->struct_size >= sizeof(size_t) && to->struct_size <= sizeof from ? to->struct_size : sizeof from;
  const size_t keep = to->struct_size;
  std::memcpy(static_cast<void*>(to), &from, n);
  to->struct_size = keep ? keep : sizeof from;
}

// Reads the stream's next response and turns it into a chunk (1), the end (0) or an error.
int stream_step(palu_stream* s, const palu_chunk** chunk) {
  palu_client* c = s->client;
  if (s->pending_final) {
    s->pending_final = false;
    s->done = true;
    c->active_stream = nullptr;
    return s->status == PALU_OK ? 0 : s->status;
  }
  if (s->done) return s->status == PALU_OK ? 0 : s->status;
  while (true) {
    v1::Response resp;
    bool interrupted = false;
    Failure f = c->conn.read_for(s->request_id, &resp, !s->cancel_sent, &interrupted);
    if (f.status != PALU_OK) {
      s->done = true;
      s->status = c->fail(std::move(f));
      c->active_stream = nullptr;
      return s->status;
    }
    if (interrupted) {
      c->conn.clear_interrupt();
      if (int rc = palu_stream_cancel(s); rc != PALU_OK) return rc;
      continue;
    }
    const bool has_payload = resp.has_chunk() && (resp.chunk().token_ids_size() > 0 || !resp.chunk().text().empty());
    if (resp.has_chunk()) {
      s->chunk_ids.assign(resp.chunk().token_ids().begin(), resp.chunk().token_ids().end());
      s->chunk_text = resp.chunk().text();
      s->chunk.struct_size = sizeof s->chunk;
      s->chunk.token_ids = s->chunk_ids.data();
      s->chunk.n_token_ids = s->chunk_ids.size();
      s->chunk.text = s->chunk_text.c_str();
      s->chunk.text_bytes = s->chunk_text.size();
    }
    if (resp.final() || resp.code() != v1::OK) {
      if (resp.has_chunk()) {
        const auto& ch = resp.chunk();
        s->result.stop_reason = static_stop_reason(ch.stop_reason());
        s->result.prompt_tokens = ch.prompt_tokens();
        s->result.generated_tokens = ch.generated_tokens();
        s->result.time_to_first_token_ms = ch.time_to_first_token_ms();
        s->result.decode_tokens_per_s = ch.decode_tokens_per_s();
      }
      Failure r = palu::sdk::from_response(resp);
      s->status = r.status == PALU_OK ? c->ok() : c->fail(std::move(r));
      if (has_payload) {
        s->pending_final = true;
        *chunk = &s->chunk;
        return 1;
      }
      s->done = true;
      c->active_stream = nullptr;
      return s->status == PALU_OK ? 0 : s->status;
    }
    if (has_payload) {
      *chunk = &s->chunk;
      return 1;
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Versions and status

extern "C" {

const char* palu_version(void) { return "0.1.0"; }
int palu_version_number(void) { return PALU_VERSION_NUMBER; }

const char* palu_status_name(int status) {
  switch (status) {
    case PALU_OK: return "PALU_OK";
    case PALU_EINVAL: return "PALU_EINVAL";
    case PALU_ENOTFOUND: return "PALU_ENOTFOUND";
    case PALU_EEXIST: return "PALU_EEXIST";
    case PALU_EPERM: return "PALU_EPERM";
    case PALU_ENOSPACE: return "PALU_ENOSPACE";
    case PALU_EPRECONDITION: return "PALU_EPRECONDITION";
    case PALU_ECANCELLED: return "PALU_ECANCELLED";
    case PALU_EBUSY: return "PALU_EBUSY";
    case PALU_EVERSION: return "PALU_EVERSION";
    case PALU_EDATALOSS: return "PALU_EDATALOSS";
    case PALU_EINTERNAL: return "PALU_EINTERNAL";
    case PALU_EUNIMPLEMENTED: return "PALU_EUNIMPLEMENTED";
    case PALU_ERANGE: return "PALU_ERANGE";
    case PALU_EIO: return "PALU_EIO";
    case PALU_ECONNECT: return "PALU_ECONNECT";
    case PALU_ECLOSED: return "PALU_ECLOSED";
    case PALU_ETIMEOUT: return "PALU_ETIMEOUT";
    case PALU_ENOMEM: return "PALU_ENOMEM";
    case PALU_EPROTOCOL: return "PALU_EPROTOCOL";
    case PALU_EARG: return "PALU_EARG";
    default: return "PALU_EUNKNOWN";
  }
}

const char* palu_status_string(int status) {
  switch (status) {
    case PALU_OK: return "success";
    case PALU_EINVAL: return "a field is out of range or malformed";
    case PALU_ENOTFOUND: return "unknown model or session";
    case PALU_EEXIST: return "the name is already in use";
    case PALU_EPERM: return "the session belongs to another user";
    case PALU_ENOSPACE: return "does not fit in the memory budgets";
    case PALU_EPRECONDITION: return "not possible in the current state";
    case PALU_ECANCELLED: return "cancelled";
    case PALU_EBUSY: return "palud is busy; retry later";
    case PALU_EVERSION: return "client and palud speak different protocol versions";
    case PALU_EDATALOSS: return "a corrupt session file";
    case PALU_EINTERNAL: return "internal error";
    case PALU_EUNIMPLEMENTED: return "not implemented by this palud";
    case PALU_ERANGE: return "out of range (e.g. the context is full)";
    case PALU_EIO: return "palud could not write to disk";
    case PALU_ECONNECT: return "cannot connect to palud";
    case PALU_ECLOSED: return "the connection to palud was lost";
    case PALU_ETIMEOUT: return "palud did not answer in time";
    case PALU_ENOMEM: return "out of memory";
    case PALU_EPROTOCOL: return "palud sent an unreadable response";
    case PALU_EARG: return "a bad argument to an SDK function";
    default: return "unknown status code";
  }
}

// ---------------------------------------------------------------------------------------------
// Client

palu_client_params palu_client_default_params(void) {
  palu_client_params p{};
  p.struct_size = sizeof p;
  p.connect_timeout_ms = 5000;
  p.request_timeout_ms = 0;
  return p;
}

int palu_client_open(const palu_client_params* params, palu_client** out) {
  if (!out) return PALU_EARG;
  *out = nullptr;
  palu_client* c = new (std::nothrow) palu_client;
  if (!c) return PALU_ENOMEM;
  *out = c;
  return guarded(c, [&]() -> int {
    palu_client_params p;
    if (!read_params(c, params, palu_client_default_params(), &p, "palu_client_params")) return c->last_status;
    if (p.connect_timeout_ms <= 0 || p.request_timeout_ms < 0) {
      return c->fail(PALU_EARG, "connect_timeout_ms must be > 0 and request_timeout_ms >= 0, got " +
                                    std::to_string(p.connect_timeout_ms) + " and " +
                                    std::to_string(p.request_timeout_ms));
    }
    const std::string path = p.socket_path && *p.socket_path ? p.socket_path : palu::sdk::default_socket_path();
    c->conn.set_request_timeout_ms(p.request_timeout_ms);
    Failure f = c->conn.open(path, p.client_name && *p.client_name ? p.client_name : "libpalu", p.connect_timeout_ms,
                             p.protocol_version ? p.protocol_version : PALU_PROTOCOL_VERSION);
    if (f.status != PALU_OK) return c->fail(std::move(f));
    return c->ok();
  });
}

void palu_client_free(palu_client* client) {
  if (!client) return;
  if (client->active_stream) client->active_stream->client = nullptr;
  delete client;
}

const char* palu_client_last_error(const palu_client* client) {
  if (!client) return "no client (palu_client_open ran out of memory, or a NULL client was passed)";
  return client->last_error.c_str();
}

int palu_client_last_status(const palu_client* client) { return client ? client->last_status : PALU_EARG; }
const char* palu_client_daemon_version(const palu_client* client) {
  return client ? client->conn.daemon_version().c_str() : "";
}
uint32_t palu_client_daemon_protocol(const palu_client* client) { return client ? client->conn.daemon_protocol() : 0; }
const char* palu_client_socket_path(const palu_client* client) {
  return client ? client->conn.socket_path().c_str() : "";
}
void palu_client_interrupt(palu_client* client) {
  if (client) client->conn.interrupt();
}

// ---------------------------------------------------------------------------------------------
// Models

size_t palu_model_list_count(const palu_model_list* list) { return list ? list->models.size() : 0; }
const palu_model_info* palu_model_list_get(const palu_model_list* list, size_t i) {
  return list && i < list->models.size() ? &list->models[i] : nullptr;
}
void palu_model_list_free(palu_model_list* list) { delete list; }

palu_load_params palu_load_default_params(void) {
  palu_load_params p{};
  p.struct_size = sizeof p;
  return p;
}

int palu_models_list(palu_client* client, palu_model_list** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (!out) return client->fail(PALU_EARG, "out is NULL");
    *out = nullptr;
    v1::Request req;
    req.mutable_list_models();
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    auto* list = new palu_model_list;
    for (const auto& m : resp.models().models()) fill_model(list, m);
    *out = list;
    return PALU_OK;
  });
}

int palu_model_load(palu_client* client, const palu_load_params* params, palu_model_list** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (out) *out = nullptr;
    palu_load_params p;
    if (!read_params(client, params, palu_load_default_params(), &p, "palu_load_params")) return client->last_status;
    if (int rc = need_string(client, p.path, "palu_load_params.path"); rc != PALU_OK) return rc;
    v1::Request req;
    auto* l = req.mutable_load_model();
    l->set_path(p.path);
    if (p.name) l->set_name(p.name);
    l->mutable_cache()->set_latent_bits(p.latent_bits);
    l->mutable_cache()->set_window_tokens(p.window_tokens);
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    if (out) {
      auto* list = new palu_model_list;
      fill_model(list, resp.model());
      *out = list;
    }
    return PALU_OK;
  });
}

int palu_model_unload(palu_client* client, const char* name) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (int rc = need_string(client, name, "the model name"); rc != PALU_OK) return rc;
    v1::Request req;
    req.mutable_unload_model()->set_name(name);
    v1::Response resp;
    return call(client, req, &resp);
  });
}

// ---------------------------------------------------------------------------------------------
// Sessions

size_t palu_session_list_count(const palu_session_list* list) { return list ? list->sessions.size() : 0; }
const palu_session_info* palu_session_list_get(const palu_session_list* list, size_t i) {
  return list && i < list->sessions.size() ? &list->sessions[i] : nullptr;
}
const palu_session_info* palu_session_list_find(const palu_session_list* list, const char* name) {
  if (!list || !name) return nullptr;
  for (const auto& s : list->sessions) {
    if (std::strcmp(s.name, name) == 0) return &s;
  }
  return nullptr;
}
void palu_session_list_free(palu_session_list* list) { delete list; }

palu_session_params palu_session_default_params(void) {
  palu_session_params p{};
  p.struct_size = sizeof p;
  p.latent_bits = -1;
  return p;
}

int palu_session_create(palu_client* client, const palu_session_params* params, palu_session_list** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (out) *out = nullptr;
    palu_session_params p;
    if (!read_params(client, params, palu_session_default_params(), &p, "palu_session_params")) {
      return client->last_status;
    }
    v1::Request req;
    auto* cs = req.mutable_create_session();
    if (p.name) cs->set_name(p.name);
    if (p.model) cs->set_model(p.model);
    if (p.system_prompt) cs->set_system_prompt(p.system_prompt);
    cs->set_max_context(p.max_context);
    if (p.latent_bits < -1) {
      return client->fail(PALU_EARG, "palu_session_params.latent_bits is " + std::to_string(p.latent_bits) +
                                         ", expected -1 (the model's setting), 0, 2, 3, 4 or 8");
    }
    if (p.latent_bits >= 0) {
      cs->mutable_cache()->set_latent_bits((uint32_t)p.latent_bits);
      cs->mutable_cache()->set_window_tokens(p.window_tokens);
    } else if (p.window_tokens != 0) {
      return client->fail(PALU_EARG, "palu_session_params.window_tokens needs latent_bits (2, 3, 4 or 8)");
    }
    cs->set_decode_on_host(p.decode_on_host != 0);
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    return one_session(client, resp, out);
  });
}

int palu_sessions_list(palu_client* client, palu_session_list** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (!out) return client->fail(PALU_EARG, "out is NULL");
    *out = nullptr;
    v1::Request req;
    req.mutable_list_sessions();
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    auto* list = new palu_session_list;
    for (const auto& s : resp.sessions().sessions()) fill_session(list, s);
    *out = list;
    return PALU_OK;
  });
}

int palu_session_close(palu_client* client, const char* session, int delete_saved) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (int rc = need_string(client, session, "the session name"); rc != PALU_OK) return rc;
    v1::Request req;
    set_ref(req.mutable_close()->mutable_session(), session);
    req.mutable_close()->set_delete_saved(delete_saved != 0);
    v1::Response resp;
    return call(client, req, &resp);
  });
}

int palu_session_fork(palu_client* client, const char* session, const char* new_name, palu_session_list** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (out) *out = nullptr;
    if (int rc = need_string(client, session, "the session name"); rc != PALU_OK) return rc;
    v1::Request req;
    set_ref(req.mutable_fork()->mutable_session(), session);
    if (new_name) req.mutable_fork()->set_new_name(new_name);
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    return one_session(client, resp, out);
  });
}

int palu_session_save(palu_client* client, const char* session, const char* file_name) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (int rc = need_string(client, session, "the session name"); rc != PALU_OK) return rc;
    v1::Request req;
    set_ref(req.mutable_save()->mutable_session(), session);
    if (file_name) req.mutable_save()->set_file_name(file_name);
    v1::Response resp;
    return call(client, req, &resp);
  });
}

int palu_session_restore(palu_client* client, const char* file_name, const char* name, palu_session_list** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (out) *out = nullptr;
    if (int rc = need_string(client, file_name, "the file name"); rc != PALU_OK) return rc;
    v1::Request req;
    req.mutable_restore()->set_file_name(file_name);
    if (name) req.mutable_restore()->set_name(name);
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    return one_session(client, resp, out);
  });
}

static int append(palu_client* client, const char* session, v1::Request& req, uint32_t* tokens_after) {
  v1::Response resp;
  set_ref(req.mutable_append()->mutable_session(), session);
  if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
  if (tokens_after) *tokens_after = resp.append().tokens();
  return PALU_OK;
}

int palu_session_append_text(palu_client* client, const char* session, const char* text, int add_bos,
                             uint32_t* tokens_after) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (int rc = need_string(client, session, "the session name"); rc != PALU_OK) return rc;
    if (!text) return client->fail(PALU_EARG, "text is NULL");
    v1::Request req;
    req.mutable_append()->set_text(text);
    req.mutable_append()->set_add_bos(add_bos != 0);
    return append(client, session, req, tokens_after);
  });
}

int palu_session_append_tokens(palu_client* client, const char* session, const int32_t* ids, size_t n_ids,
                               uint32_t* tokens_after) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (int rc = need_string(client, session, "the session name"); rc != PALU_OK) return rc;
    if (n_ids && !ids) return client->fail(PALU_EARG, "ids is NULL while n_ids is " + std::to_string(n_ids));
    v1::Request req;
    for (size_t i = 0; i < n_ids; ++i) req.mutable_append()->add_token_ids(ids[i]);
    return append(client, session, req, tokens_after);
  });
}

int palu_session_cancel(palu_client* client, const char* session) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (int rc = need_string(client, session, "the session name"); rc != PALU_OK) return rc;
    v1::Request req;
    set_ref(req.mutable_cancel()->mutable_session(), session);
    v1::Response resp;
    return call(client, req, &resp);
  });
}

// ---------------------------------------------------------------------------------------------
// Generation

palu_generate_params palu_generate_default_params(void) {
  palu_generate_params p{};
  p.struct_size = sizeof p;
  p.max_tokens = 128;
  p.temperature = 0.8f;
  p.top_p = 0.95f;
  p.top_k = 40;
  return p;
}

palu_generate_result palu_generate_default_result(void) {
  palu_generate_result r{};
  r.struct_size = sizeof r;
  r.stop_reason = "";
  return r;
}

int palu_stream_start(palu_client* client, const char* session, const palu_generate_params* params,
                      palu_stream** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (!out) return client->fail(PALU_EARG, "out is NULL");
    *out = nullptr;
    v1::Request req;
    if (int rc = fill_generate(client, session, params, &req); rc != PALU_OK) return rc;
    auto* s = new palu_stream;
    s->client = client;
    s->result = palu_generate_default_result();
    client->conn.clear_interrupt();
    Failure f = client->conn.send(req, &s->request_id);
    if (f.status != PALU_OK) {
      delete s;
      return client->fail(std::move(f));
    }
    client->active_stream = s;
    *out = s;
    return client->ok();
  });
}

int palu_stream_next(palu_stream* stream, const palu_chunk** chunk) {
  if (!stream || !chunk) return PALU_EARG;
  *chunk = nullptr;
  if (!stream->client) return stream->done ? stream->status : PALU_ECLOSED;
  return guarded(stream->client, [&]() -> int { return stream_step(stream, chunk); });
}

int palu_stream_cancel(palu_stream* stream) {
  if (!stream) return PALU_EARG;
  if (stream->done || stream->cancel_sent || !stream->client) return PALU_OK;
  palu_client* c = stream->client;
  return guarded(c, [&]() -> int {
    v1::Request req;
    req.mutable_cancel()->set_request_id(stream->request_id);
    stream->cancel_sent = true;
    Failure f = c->conn.send(req, nullptr);  // its answer is dropped by read_for
    if (f.status != PALU_OK) return c->fail(std::move(f));
    return PALU_OK;
  });
}

int palu_stream_result(const palu_stream* stream, palu_generate_result* result) {
  if (!stream || !result) return PALU_EARG;
  copy_result(stream->result, result);
  return stream->done ? stream->status : PALU_EPRECONDITION;
}

void palu_stream_free(palu_stream* stream) {
  if (!stream) return;
  if (stream->client && !stream->done) {
    // Cancel and drain so the connection is clean for the next request.
    try {
      (void)palu_stream_cancel(stream);
      const palu_chunk* ch = nullptr;
      while (!stream->done && stream->client && stream_step(stream, &ch) == 1) {
      }
    } catch (...) {
    }
    if (stream->client && stream->client->active_stream == stream) stream->client->active_stream = nullptr;
  }
  delete stream;
}

int palu_session_generate(palu_client* client, const char* session, const palu_generate_params* params,
                          palu_chunk_callback on_chunk, void* user_data, palu_generate_result* result) {
  if (result) copy_result(palu_generate_default_result(), result);
  palu_stream* s = nullptr;
  if (int rc = palu_stream_start(client, session, params, &s); rc != PALU_OK) return rc;
  int rc;
  const palu_chunk* ch = nullptr;
  while ((rc = palu_stream_next(s, &ch)) == 1) {
    if (on_chunk && on_chunk(ch, user_data) != 0) (void)palu_stream_cancel(s);
  }
  if (result) copy_result(s->result, result);
  palu_stream_free(s);
  return rc;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

int palu_tokenize(palu_client* client, const char* model, const char* text, int add_bos, palu_tokens** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (!out) return client->fail(PALU_EARG, "out is NULL");
    *out = nullptr;
    if (!text) return client->fail(PALU_EARG, "text is NULL");
    v1::Request req;
    if (model) req.mutable_tokenize()->set_model(model);
    req.mutable_tokenize()->set_text(text);
    req.mutable_tokenize()->set_add_bos(add_bos != 0);
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    auto* t = new palu_tokens;
    t->ids.assign(resp.tokenize().token_ids().begin(), resp.tokenize().token_ids().end());
    *out = t;
    return PALU_OK;
  });
}

size_t palu_tokens_count(const palu_tokens* tokens) { return tokens ? tokens->ids.size() : 0; }
const int32_t* palu_tokens_data(const palu_tokens* tokens) {
  return tokens && !tokens->ids.empty() ? tokens->ids.data() : nullptr;
}
void palu_tokens_free(palu_tokens* tokens) { delete tokens; }

int palu_detokenize(palu_client* client, const char* model, const int32_t* ids, size_t n_ids, char** out_text) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (!out_text) return client->fail(PALU_EARG, "out_text is NULL");
    *out_text = nullptr;
    if (n_ids && !ids) return client->fail(PALU_EARG, "ids is NULL while n_ids is " + std::to_string(n_ids));
    v1::Request req;
    if (model) req.mutable_detokenize()->set_model(model);
    for (size_t i = 0; i < n_ids; ++i) req.mutable_detokenize()->add_token_ids(ids[i]);
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    const std::string& text = resp.detokenize().text();
    char* s = new char[text.size() + 1];
    std::memcpy(s, text.c_str(), text.size() + 1);
    *out_text = s;
    return PALU_OK;
  });
}

void palu_string_free(char* text) { delete[] text; }

// ---------------------------------------------------------------------------------------------
// Stats

int palu_stats_get(palu_client* client, palu_stats** out) {
  if (int rc = begin(client); rc != PALU_OK) return rc;
  return guarded(client, [&]() -> int {
    if (!out) return client->fail(PALU_EARG, "out is NULL");
    *out = nullptr;
    v1::Request req;
    req.mutable_stats();
    v1::Response resp;
    if (int rc = call(client, req, &resp); rc != PALU_OK) return rc;
    const auto& st = resp.stats();
    auto* s = new palu_stats;
    s->daemon.struct_size = sizeof s->daemon;
    s->daemon.demotions = st.demotions();
    s->daemon.restorations = st.restorations();
    s->daemon.requests = st.requests();
    s->daemon.generated_tokens = st.generated_tokens();
    s->daemon.queue_depth = st.queue_depth();
    s->daemon.uptime_s = st.uptime_s();
    for (const auto& t : st.tiers()) {
      palu_tier_info ti{};
      ti.struct_size = sizeof ti;
      ti.tier = s->strings.keep(t.tier());
      ti.budget_bytes = t.budget_bytes();
      ti.used_bytes = t.used_bytes();
      ti.sessions = t.sessions();
      s->tiers.push_back(ti);
    }
    for (const auto& si : st.sessions()) fill_session(&s->sessions, si);
    *out = s;
    return PALU_OK;
  });
}

const palu_daemon_stats* palu_stats_daemon(const palu_stats* stats) { return stats ? &stats->daemon : nullptr; }
size_t palu_stats_tier_count(const palu_stats* stats) { return stats ? stats->tiers.size() : 0; }
const palu_tier_info* palu_stats_tier(const palu_stats* stats, size_t i) {
  return stats && i < stats->tiers.size() ? &stats->tiers[i] : nullptr;
}
const palu_session_list* palu_stats_sessions(const palu_stats* stats) { return stats ? &stats->sessions : nullptr; }
void palu_stats_free(palu_stats* stats) { delete stats; }

}  // extern "C"
