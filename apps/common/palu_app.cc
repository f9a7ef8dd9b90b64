#include "apps/common/palu_app.h"

#include <cstdio>

namespace palu::app {

std::string Error::describe() const {
  return std::string(palu_status_name(status)) + ": " + (message.empty() ? palu_status_string(status) : message);
}

Error last_error(const palu_client* c, int status) { return Error{status, palu_client_last_error(c)}; }

bool is_connection_error(int status) {
  return status == PALU_ECONNECT || status == PALU_ECLOSED || status == PALU_ETIMEOUT || status == PALU_EVERSION ||
         status == PALU_EPROTOCOL;
}

int exit_code_for(int status) {
  if (status == PALU_OK) return kExitOk;
  if (is_connection_error(status)) return kExitNoDaemon;
  if (status == PALU_ECANCELLED) return kExitInterrupted;
  if (status == PALU_EARG) return kExitUsage;
  return kExitRequestFailed;
}

Client open_client(const std::string& socket_path, const std::string& client_name, Error* err) {
  palu_client_params p = palu_client_default_params();
  p.socket_path = socket_path.empty() ? nullptr : socket_path.c_str();
  p.client_name = client_name.c_str();
  palu_client* raw = nullptr;
  const int rc = palu_client_open(&p, &raw);
  Client c(raw);
  if (rc != PALU_OK) {
    *err = last_error(raw, rc);
    return nullptr;
  }
  *err = Error{};
  return c;
}

std::string format_bytes(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = (double)bytes;
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)bytes);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

std::string user_turn(const std::string& text) { return "\nUser: " + text + "\nAssistant:"; }

Error session_info(palu_client* c, const std::string& name, SessionInfo* out) {
  palu_session_list* raw = nullptr;
  if (int rc = palu_sessions_list(c, &raw); rc != PALU_OK) return last_error(c, rc);
  SessionList list(raw);
  const palu_session_info* s = palu_session_list_find(list.get(), name.c_str());
  if (!s) return Error{PALU_ENOTFOUND, "session '" + name + "' does not exist"};
  out->name = s->name;
  out->model = s->model;
  out->tier = s->tier;
  out->state = s->state;
  out->tokens = s->tokens;
  out->max_context = s->max_context;
  out->kv_bytes = s->kv_bytes;
  out->saved = s->saved != 0;
  return {};
}

Error ensure_session(palu_client* c, const std::string& name, const std::string& model,
                     const std::string& system_prompt, std::string* how, const SessionSettings& settings) {
  SessionInfo info;
  Error e = session_info(c, name, &info);
  if (e.ok()) {
    *how = "open";
    return {};
  }
  if (e.status != PALU_ENOTFOUND) return e;
  int rc = palu_session_restore(c, name.c_str(), nullptr, nullptr);
  if (rc == PALU_OK) {
    *how = "restored";
    return {};
  }
  if (rc != PALU_ENOTFOUND) return last_error(c, rc);
  palu_session_params sp = palu_session_default_params();
  sp.name = name.c_str();
  sp.model = model.empty() ? nullptr : model.c_str();
  sp.system_prompt = system_prompt.empty() ? nullptr : system_prompt.c_str();
  sp.latent_bits = settings.latent_bits;
  sp.window_tokens = settings.window_tokens;
  sp.decode_on_host = settings.decode_on_host ? 1 : 0;
  rc = palu_session_create(c, &sp, nullptr);
  if (rc != PALU_OK) return last_error(c, rc);
  *how = "created";
  return {};
}

}  // namespace palu::app
