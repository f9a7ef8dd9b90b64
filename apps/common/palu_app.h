// What the apps (palu, palu-assistant) share on top of the C SDK: owning wrappers, exit codes,
// the chat format, byte formatting, and "find, restore or create" for a named session.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "palu/palu.h"

namespace palu::app {

// Exit codes of the apps (docs/sdk.md lists them).
inline constexpr int kExitOk = 0;
inline constexpr int kExitRequestFailed = 1;  // palud answered with an error
inline constexpr int kExitUsage = 2;          // bad command line
inline constexpr int kExitNoDaemon = 3;       // palud unreachable, lost, or another protocol version
inline constexpr int kExitInterrupted = 130;  // Ctrl-C stopped a generation

struct ClientFree {
  void operator()(palu_client* c) const { palu_client_free(c); }
};
struct ModelListFree {
  void operator()(palu_model_list* l) const { palu_model_list_free(l); }
};
struct SessionListFree {
  void operator()(palu_session_list* l) const { palu_session_list_free(l); }
};
struct StatsFree {
  void operator()(palu_stats* s) const { palu_stats_free(s); }
};
struct TokensFree {
  void operator()(palu_tokens* t) const { palu_tokens_free(t); }
};
using Client = std::unique_ptr<palu_client, ClientFree>;
using ModelList = std::unique_ptr<palu_model_list, ModelListFree>;
using SessionList = std::unique_ptr<palu_session_list, SessionListFree>;
using Stats = std::unique_ptr<palu_stats, StatsFree>;
using Tokens = std::unique_ptr<palu_tokens, TokensFree>;

// A failed call: the status and palud's (or the SDK's) message.
struct Error {
  int status = PALU_OK;
  std::string message;
  bool ok() const { return status == PALU_OK; }
  // "PALU_ENOTFOUND: session 'x' does not exist"
  std::string describe() const;
};

// The error of the client's last call.
Error last_error(const palu_client* c, int status);

// The exit code for a failure: kExitNoDaemon for connection-level codes, kExitInterrupted for
// PALU_ECANCELLED, kExitRequestFailed otherwise.
int exit_code_for(int status);
bool is_connection_error(int status);

// Opens a client on `socket_path` ("" = the default). On failure *err says why.
Client open_client(const std::string& socket_path, const std::string& client_name, Error* err);

// "1.5 MiB"
std::string format_bytes(uint64_t bytes);

// The chat format the apps use (plain text turns; the models palu runs today have no chat
// template of their own in the compressed format):
//   system prompt (at session creation), then per turn "\nUser: <text>\nAssistant:",
//   generation stops at "\nUser:".
std::string user_turn(const std::string& text);
inline const char* kTurnStop = "\nUser:";

// Finds the caller's session `name`; if it is not open, restores the saved file of that name;
// if there is none, creates it (model "" = the first loaded, system prompt "" = none).
// *how: "open", "restored" or "created".
// A new session's cache setting and host-decode policy (palu_session_params' fields).
struct SessionSettings {
  int latent_bits = -1;  // -1: the model's setting
  uint32_t window_tokens = 0;
  bool decode_on_host = false;
};
Error ensure_session(palu_client* c, const std::string& name, const std::string& model,
                     const std::string& system_prompt, std::string* how,
                     const SessionSettings& settings = {});

// The session's current info (a copy), or an error.
struct SessionInfo {
  std::string name, model, tier, state;
  uint32_t tokens = 0, max_context = 0;
  uint64_t kv_bytes = 0;
  bool saved = false;
};
Error session_info(palu_client* c, const std::string& name, SessionInfo* out);

}  // namespace palu::app
