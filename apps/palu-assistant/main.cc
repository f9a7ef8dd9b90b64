// palu-assistant: a desktop assistant in the terminal, on the C SDK.
//
// The conversation is a named palud session (default "assistant"), saved after every reply, so
// it survives palud restarts and crashes: when palud goes away the assistant reconnects, finds
// (or restores) the session and goes on with its history. Replies stream as they are
// generated; a status line after each shows the context length and the cache's memory use.
//
// Input: a line is a message; end a line with "\" to continue on the next, or put a block
// between lines holding only """. Commands: /help /reset /save [FILE] /sessions /stats
// /model [NAME] /quit. Ctrl-C stops a reply; Ctrl-D leaves.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>

#include "apps/common/palu_app.h"

namespace {

using namespace palu::app;

std::atomic<palu_client*> g_generating{nullptr};

void on_sigint(int) {
  if (palu_client* c = g_generating.load()) {
    palu_client_interrupt(c);
  } else {
    static const char kHint[] = "\n(Ctrl-D or /quit leaves)\n";
    (void)!::write(2, kHint, sizeof kHint - 1);
  }
}

struct Options {
  std::string socket, session = "assistant", model;
  std::string system = "You are a helpful assistant.";
  uint32_t max_tokens = 512;
  float temperature = 0.7f;
  int64_t seed = -1;
  bool autosave = true;
  int reconnect_s = 30;
};

class Assistant {
 public:
  explicit Assistant(Options o) : o_(std::move(o)), color_(::isatty(1) && !std::getenv("NO_COLOR")) {}

  int run() {
    if (!connect(/*first=*/true)) return kExitNoDaemon;
    std::string line;
    while (true) {
      std::string message;
      const int r = read_message(&message);
      if (r < 0) break;  // end of input
      if (message.empty()) continue;
      if (message[0] == '/') {
        if (!command(message)) break;
        continue;
      }
      turn(message);
    }
    std::cout << "\n" << std::flush;
    return kExitOk;
  }

 private:
  // Connects and makes sure the session exists. first: at start-up (waits for palud too).
  bool connect(bool first) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(o_.reconnect_s);
    bool told = false;
    while (true) {
      Error err;
      client_ = open_client(o_.socket, "palu-assistant", &err);
      if (client_) break;
      if (err.status != PALU_ECONNECT && err.status != PALU_ECLOSED && err.status != PALU_ETIMEOUT) {
        std::cerr << "palu-assistant: " << err.describe() << "\n";
        return false;
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        std::cerr << "palu-assistant: " << err.describe() << "\n"
                  << "palu-assistant: gave up after " << o_.reconnect_s
                  << " s; start palud (`palud` or `systemctl --user start palud`) and run me again\n";
        return false;
      }
      if (!told) {
        std::cerr << "palu-assistant: waiting for palud (" << err.message << ")\n";
        told = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
    std::string how;
    if (Error e = ensure_session(client_.get(), o_.session, o_.model, o_.system, &how); !e.ok()) {
      std::cerr << "palu-assistant: session '" << o_.session << "': " << e.describe() << "\n";
      return false;
    }
    SessionInfo info;
    (void)session_info(client_.get(), o_.session, &info);
    model_ = info.model;
    if (first) {
      tokens_before_ = info.tokens;
      std::cout << "palu-assistant: session '" << o_.session << "' (" << how << ", " << info.tokens
                << " tokens) on " << info.model << " via palud " << palu_client_daemon_version(client_.get())
                << "; /help for commands\n";
    } else {
      std::cout << "palu-assistant: reconnected; session '" << o_.session << "' " << how << " with " << info.tokens
                << " tokens of history\n";
    }
    return true;
  }

  // A failed call: reconnect when palud went away (true = the caller may go on).
  bool handle(const Error& e) {
    if (!is_connection_error(e.status) || e.status == PALU_EVERSION) {
      std::cout << "error: " << e.describe() << "\n";
      return e.status != PALU_EVERSION;
    }
    std::cout << "\npalu-assistant: lost palud (" << e.message << "); reconnecting...\n" << std::flush;
    client_.reset();
    return connect(/*first=*/false);
  }

  // Reads one message (possibly several lines). Returns -1 at end of input.
  int read_message(std::string* out) {
    std::string line;
    prompt("you> ");
    if (!std::getline(std::cin, line)) return -1;
    if (line == "\"\"\"") {
      while (true) {
        prompt("...> ");
        if (!std::getline(std::cin, line)) return out->empty() ? -1 : 0;
        if (line == "\"\"\"") break;
        if (!out->empty()) *out += "\n";
        *out += line;
      }
      return 0;
    }
    while (!line.empty() && line.back() == '\\') {
      line.pop_back();
      *out += line + "\n";
      prompt("...> ");
      if (!std::getline(std::cin, line)) return 0;
    }
    *out += line;
    return 0;
  }

  void prompt(const char* p) { std::cout << (color_ ? "\033[1m" : "") << p << (color_ ? "\033[0m" : "") << std::flush; }

  static int on_chunk(const palu_chunk* ch, void*) {
    std::fwrite(ch->text, 1, ch->text_bytes, stdout);
    std::fflush(stdout);
    return 0;
  }

  void turn(const std::string& message) {
    const std::string text = user_turn(message);
    const char* stops[1] = {kTurnStop};
    palu_generate_params p = palu_generate_default_params();
    p.prompt = text.c_str();
    p.max_tokens = o_.max_tokens;
    p.temperature = o_.temperature;
    if (o_.seed >= 0) {
      p.seed = (uint64_t)o_.seed;
      p.has_seed = 1;
    }
    p.stop = stops;
    p.n_stop = 1;
    for (int attempt = 0; attempt < 2; ++attempt) {
      palu_generate_result res = palu_generate_default_result();
      g_generating.store(client_.get());
      const int rc = palu_session_generate(client_.get(), o_.session.c_str(), &p, on_chunk, nullptr, &res);
      g_generating.store(nullptr);
      std::cout << "\n";
      if (rc == PALU_OK || rc == PALU_ECANCELLED) {
        if (rc == PALU_ECANCELLED) std::cout << "(stopped)\n";
        if (o_.autosave) {
          if (int s = palu_session_save(client_.get(), o_.session.c_str(), nullptr); s != PALU_OK) {
            std::cout << "warning: the conversation was not saved: " << last_error(client_.get(), s).describe()
                      << "\n";
          }
        }
        status_line(res);
        return;
      }
      const Error e = last_error(client_.get(), rc);
      // Lost palud before anything was generated: reconnect and send the message once more.
      // After a partial reply it is not resent (the session may already hold part of it).
      const bool retry = is_connection_error(rc) && res.generated_tokens == 0 && attempt == 0;
      if (!handle(e)) {
        std::exit(kExitNoDaemon);
      }
      if (!retry) return;
      SessionInfo info;
      if (!session_info(client_.get(), o_.session, &info).ok()) return;
      if (info.tokens != tokens_before_) {
        std::cout << "(the message may have reached palud before it stopped; not sending it again)\n";
        return;
      }
    }
  }

  void status_line(const palu_generate_result& res) {
    SessionInfo info;
    Error e = session_info(client_.get(), o_.session, &info);
    if (!e.ok()) {
      std::cout << "[status unavailable: " << e.describe() << "]\n";
      return;
    }
    tokens_before_ = info.tokens;
    char buf[256];
    std::snprintf(buf, sizeof buf, "[%s · %u/%u tokens · %s · %s · %.1f tok/s]", info.name.c_str(), info.tokens,
                  info.max_context, format_bytes(info.kv_bytes).c_str(), info.tier.c_str(), res.decode_tokens_per_s);
    std::cout << (color_ ? "\033[2m" : "") << buf << (color_ ? "\033[0m" : "") << "\n" << std::flush;
  }

  // Returns false to quit.
  bool command(const std::string& line) {
    std::string cmd = line, arg;
    if (const size_t sp = line.find(' '); sp != std::string::npos) {
      cmd = line.substr(0, sp);
      arg = line.substr(line.find_first_not_of(' ', sp) == std::string::npos ? line.size()
                                                                              : line.find_first_not_of(' ', sp));
    }
    palu_client* c = client_.get();
    if (cmd == "/quit" || cmd == "/exit") return false;
    if (cmd == "/help") {
      std::cout << "/reset            start the conversation over (the saved copy is deleted)\n"
                   "/save [FILE]      save the conversation (also done after every reply)\n"
                   "/sessions         your sessions in palud\n"
                   "/stats            palud's memory tiers and counters\n"
                   "/model [NAME]     show the model, or start over on model NAME\n"
                   "/quit             leave (the conversation stays in palud)\n"
                   "end a line with \\ to go on, or put a block between \"\"\" lines\n";
      return true;
    }
    if (cmd == "/save") {
      const int rc = palu_session_save(c, o_.session.c_str(), arg.empty() ? nullptr : arg.c_str());
      if (rc != PALU_OK) return handle(last_error(c, rc));
      std::cout << "saved as " << (arg.empty() ? o_.session : arg) << "\n";
      return true;
    }
    if (cmd == "/reset" || (cmd == "/model" && !arg.empty())) {
      const std::string model = cmd == "/model" ? arg : model_;
      int rc = palu_session_close(c, o_.session.c_str(), 1);
      if (rc != PALU_OK && rc != PALU_ENOTFOUND) return handle(last_error(c, rc));
      palu_session_params sp = palu_session_default_params();
      sp.name = o_.session.c_str();
      sp.model = model.empty() ? nullptr : model.c_str();
      sp.system_prompt = o_.system.empty() ? nullptr : o_.system.c_str();
      rc = palu_session_create(c, &sp, nullptr);
      if (rc != PALU_OK) {
        std::cout << "error: " << last_error(c, rc).describe() << "\n";
        if (cmd == "/model") {  // back to the model we had
          sp.model = model_.empty() ? nullptr : model_.c_str();
          if (palu_session_create(c, &sp, nullptr) != PALU_OK) std::cout << "error: the session could not be recreated\n";
        }
        return true;
      }
      model_ = model;
      tokens_before_ = 0;
      std::cout << (cmd == "/reset" ? "conversation reset" : "switched to model " + model + "; the conversation starts over")
                << "\n";
      return true;
    }
    if (cmd == "/model") {
      palu_model_list* raw = nullptr;
      if (int rc = palu_models_list(c, &raw); rc != PALU_OK) return handle(last_error(c, rc));
      ModelList l(raw);
      SessionInfo info;
      (void)session_info(c, o_.session, &info);
      for (size_t i = 0; i < palu_model_list_count(l.get()); ++i) {
        const palu_model_info* m = palu_model_list_get(l.get(), i);
        std::cout << (info.model == m->name ? "* " : "  ") << m->name << "  " << m->summary << ", "
                  << (m->compressed ? "latent" : "full") << " cache, " << format_bytes(m->kv_bytes_per_token)
                  << "/token, context " << m->max_context << "\n";
      }
      return true;
    }
    if (cmd == "/sessions") {
      palu_session_list* raw = nullptr;
      if (int rc = palu_sessions_list(c, &raw); rc != PALU_OK) return handle(last_error(c, rc));
      SessionList l(raw);
      for (size_t i = 0; i < palu_session_list_count(l.get()); ++i) {
        const palu_session_info* s = palu_session_list_get(l.get(), i);
        std::cout << (o_.session == s->name ? "* " : "  ") << s->name << "  " << s->model << "  " << s->tokens << "/"
                  << s->max_context << " tokens  " << format_bytes(s->kv_bytes) << "  " << s->tier << "  " << s->state
                  << (s->saved ? "  saved" : "") << "\n";
      }
      return true;
    }
    if (cmd == "/stats") {
      palu_stats* raw = nullptr;
      if (int rc = palu_stats_get(c, &raw); rc != PALU_OK) return handle(last_error(c, rc));
      Stats st(raw);
      const palu_daemon_stats* d = palu_stats_daemon(st.get());
      std::cout << "palud " << palu_client_daemon_version(c) << ": up " << (long)d->uptime_s << " s, " << d->requests
                << " requests, " << d->generated_tokens << " tokens generated, " << d->demotions << " demotions, "
                << d->restorations << " restorations\n";
      for (size_t i = 0; i < palu_stats_tier_count(st.get()); ++i) {
        const palu_tier_info* t = palu_stats_tier(st.get(), i);
        std::cout << "  " << t->tier << ": " << format_bytes(t->used_bytes) << " of " << format_bytes(t->budget_bytes)
                  << ", " << t->sessions << " sessions\n";
      }
      return true;
    }
    std::cout << "unknown command " << cmd << " (/help lists them)\n";
    return true;
  }

  Options o_;
  bool color_;
  Client client_;
  std::string model_;
  uint32_t tokens_before_ = 0;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-assistant: a terminal assistant whose conversation lives in palud"};
  Options o;
  app.add_option("--socket", o.socket, "palud's socket (default $PALU_SOCKET or $XDG_RUNTIME_DIR/palu/palud.sock)")
      ->envname("PALU_SOCKET");
  app.add_option("--session,-s", o.session, "the conversation's session name (kept across runs)");
  app.add_option("--model,-m", o.model, "model for a new conversation (default: the first loaded)");
  app.add_option("--system", o.system, "system prompt for a new conversation");
  app.add_option("--max-tokens,-n", o.max_tokens, "longest reply in tokens")->check(CLI::Range(1, 1 << 20));
  app.add_option("--temperature,-t", o.temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  app.add_option("--seed", o.seed, "sampling seed (default: from the clock)");
  bool no_autosave = false;
  app.add_flag("--no-autosave", no_autosave, "do not save the conversation after each reply");
  app.add_option("--reconnect-s", o.reconnect_s, "how long to wait for palud to come (back)")
      ->check(CLI::Range(0, 86400));
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    (void)app.exit(e);
    return kExitUsage;
  }
  o.autosave = !no_autosave;
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sa.sa_flags = SA_RESTART;  // a Ctrl-C at the prompt must not end the read
  ::sigaction(SIGINT, &sa, nullptr);
  return Assistant(o).run();
}
