// palu: the command line for scripts and people, on the C SDK (docs/sdk.md).
//
//   palu run [--model M] [--session NAME] [--max-tokens N] [--temperature T] [--json] PROMPT|-
//   palu chat [--model M] [--session NAME] [--system TEXT]
//   palu session ls | save NAME [FILE] | restore FILE [NAME] | rm NAME [--delete-saved] | fork NAME NEW
//   palu models [load PATH [--name N] [--kv-bits B] [--kv-window W] | unload NAME]
//   palu stats
//   palu tokenize [--model M] [--bos] TEXT|-
// --socket PATH and --json everywhere. Exit codes: 0 ok, 1 palud answered an error, 2 usage,
// 3 palud unreachable (or lost, or another protocol version), 130 interrupted.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "apps/common/palu_app.h"

namespace {

using json = nlohmann::json;
using namespace palu::app;

std::atomic<palu_client*> g_interruptible{nullptr};

void on_sigint(int) {
  if (palu_client* c = g_interruptible.load()) {
    palu_client_interrupt(c);
  } else {
    // Nothing to stop: leave as Ctrl-C does.
    ::_exit(kExitInterrupted);
  }
}

struct Common {
  std::string socket;
  bool json = false;
};

int fail(const Common& o, const Error& e) {
  if (o.json) {
    std::cout << json{{"error", palu_status_name(e.status)}, {"message", e.message}}.dump() << "\n";
  }
  std::cerr << "palu: " << e.describe() << "\n";
  if (e.status == PALU_ECONNECT) {
    std::cerr << "palu: start the daemon with `palud` (or `systemctl --user start palud`), or pass --socket\n";
  }
  return exit_code_for(e.status);
}

std::string read_all_stdin() {
  return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
}

json session_json(const palu_session_info& s) {
  return json{{"id", s.id},         {"name", s.name},       {"model", s.model},
              {"tokens", s.tokens}, {"max_context", s.max_context}, {"kv_bytes", s.kv_bytes},
              {"tier", s.tier},     {"state", s.state},     {"saved", s.saved != 0},
              {"latent_bits", s.latent_bits}, {"window_tokens", s.window_tokens},
              {"decode_on_host", s.decode_on_host != 0}};
}

// ---------------------------------------------------------------------------------------------
struct GenOptions {
  std::string model, session, system;
  uint32_t max_tokens = 256;
  float temperature = 0.8f, top_p = 0.95f;
  uint32_t top_k = 40;
  int64_t seed = -1;
  std::vector<std::string> stop;
  bool ignore_eos = false, keep = false;
  SessionSettings settings;  // for a session this creates
};

void add_gen_options(CLI::App* sub, GenOptions& g) {
  sub->add_option("--model,-m", g.model, "model name (default: the first loaded)");
  sub->add_option("--session,-s", g.session,
                  "use this session (created, or restored from its saved file, when it is not open) and keep it");
  sub->add_option("--system", g.system, "system prompt for a session this creates");
  sub->add_option("--max-tokens,-n", g.max_tokens, "tokens to generate at most")->check(CLI::Range(1, 1 << 20));
  sub->add_option("--temperature,-t", g.temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  sub->add_option("--top-p", g.top_p, "nucleus sampling mass")->check(CLI::Range(0.0, 1.0));
  sub->add_option("--top-k", g.top_k, "sample among the k most likely (0 = all)");
  sub->add_option("--seed", g.seed, "sampling seed (default: from the clock)");
  sub->add_option("--stop", g.stop, "stop string (repeatable)");
  sub->add_flag("--ignore-eos", g.ignore_eos, "go on past the end-of-sequence token");
  sub->add_option("--kv-bits", g.settings.latent_bits,
                  "a session this creates: latent bits of its cache (0 = f16, 2, 3, 4, 8; default: the model's)")
      ->check(CLI::IsMember({-1, 0, 2, 3, 4, 8}));
  sub->add_option("--kv-window", g.settings.window_tokens, "with --kv-bits: newest tokens also kept in f16")
      ->check(CLI::Range(0, 1 << 20));
  sub->add_flag("--decode-on-host", g.settings.decode_on_host,
                "a session this creates never moves to palud's GPU tier (decodes on the CPU)");
}

palu_generate_params gen_params(const GenOptions& g, std::vector<const char*>* stops) {
  palu_generate_params p = palu_generate_default_params();
  p.max_tokens = g.max_tokens;
  p.temperature = g.temperature;
  p.top_p = g.top_p;
  p.top_k = g.top_k;
  if (g.seed >= 0) {
    p.seed = (uint64_t)g.seed;
    p.has_seed = 1;
  }
  for (const auto& s : g.stop) stops->push_back(s.c_str());
  p.stop = stops->data();
  p.n_stop = stops->size();
  p.ignore_eos = g.ignore_eos ? 1 : 0;
  return p;
}

struct StreamState {
  bool print = true;
  std::string text;
  std::vector<int32_t> ids;
};

int print_chunk(const palu_chunk* ch, void* user) {
  auto* st = static_cast<StreamState*>(user);
  st->text.append(ch->text, ch->text_bytes);
  st->ids.insert(st->ids.end(), ch->token_ids, ch->token_ids + ch->n_token_ids);
  if (st->print) {
    std::fwrite(ch->text, 1, ch->text_bytes, stdout);
    std::fflush(stdout);
  }
  return 0;
}

int cmd_run(const Common& o, const GenOptions& g, std::string prompt) {
  if (prompt == "-") prompt = read_all_stdin();
  Error err;
  Client c = open_client(o.socket, "palu run", &err);
  if (!c) return fail(o, err);
  std::string session = g.session;
  bool temporary = false;
  if (session.empty()) {
    palu_session_params sp = palu_session_default_params();
    sp.model = g.model.empty() ? nullptr : g.model.c_str();
    sp.system_prompt = g.system.empty() ? nullptr : g.system.c_str();
    sp.latent_bits = g.settings.latent_bits;
    sp.window_tokens = g.settings.window_tokens;
    sp.decode_on_host = g.settings.decode_on_host ? 1 : 0;
    palu_session_list* one = nullptr;
    if (int rc = palu_session_create(c.get(), &sp, &one); rc != PALU_OK) return fail(o, last_error(c.get(), rc));
    SessionList l(one);
    session = palu_session_list_get(l.get(), 0)->name;
    temporary = true;
  } else {
    std::string how;
    if (Error e = ensure_session(c.get(), session, g.model, g.system, &how, g.settings); !e.ok()) return fail(o, e);
  }
  std::vector<const char*> stops;
  palu_generate_params p = gen_params(g, &stops);
  p.prompt = prompt.c_str();
  StreamState st;
  st.print = !o.json;
  palu_generate_result res = palu_generate_default_result();
  g_interruptible.store(c.get());
  const int rc = palu_session_generate(c.get(), session.c_str(), &p, print_chunk, &st, &res);
  g_interruptible.store(nullptr);
  const Error gen_err = last_error(c.get(), rc);
  if (temporary) (void)palu_session_close(c.get(), session.c_str(), 0);
  if (rc != PALU_OK && rc != PALU_ECANCELLED) return fail(o, gen_err);
  if (o.json) {
    json j{{"session", temporary ? json(nullptr) : json(session)},
           {"text", st.text},
           {"token_ids", st.ids},
           {"stop_reason", res.stop_reason},
           {"prompt_tokens", res.prompt_tokens},
           {"generated_tokens", res.generated_tokens},
           {"time_to_first_token_ms", res.time_to_first_token_ms},
           {"decode_tokens_per_s", res.decode_tokens_per_s}};
    std::cout << j.dump() << "\n";
  } else {
    std::cout << "\n";
  }
  return rc == PALU_ECANCELLED ? kExitInterrupted : kExitOk;
}

int cmd_chat(const Common& o, const GenOptions& g) {
  Error err;
  Client c = open_client(o.socket, "palu chat", &err);
  if (!c) return fail(o, err);
  const std::string session = g.session.empty() ? "chat" : g.session;
  std::string how;
  if (Error e = ensure_session(c.get(), session, g.model, g.system, &how, g.settings); !e.ok()) return fail(o, e);
  const bool tty = ::isatty(0);
  if (tty) std::cerr << "palu chat: session '" << session << "' (" << how << "); Ctrl-D to leave\n";
  std::vector<const char*> stops;
  GenOptions gg = g;
  gg.stop.push_back(kTurnStop);
  palu_generate_params p = gen_params(gg, &stops);
  std::string line;
  while (true) {
    if (tty) std::cerr << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    if (line.empty()) continue;
    const std::string turn = user_turn(line);
    p.prompt = turn.c_str();
    StreamState st;
    st.print = !o.json;
    palu_generate_result res = palu_generate_default_result();
    g_interruptible.store(c.get());
    const int rc = palu_session_generate(c.get(), session.c_str(), &p, print_chunk, &st, &res);
    g_interruptible.store(nullptr);
    if (rc != PALU_OK && rc != PALU_ECANCELLED) return fail(o, last_error(c.get(), rc));
    if (o.json) {
      std::cout << json{{"user", line}, {"assistant", st.text}, {"stop_reason", res.stop_reason}}.dump() << "\n";
    } else {
      std::cout << "\n";
    }
    std::cout << std::flush;
  }
  return kExitOk;
}

int cmd_session(const Common& o, const std::string& verb, const std::vector<std::string>& args, bool delete_saved) {
  Error err;
  Client c = open_client(o.socket, "palu session", &err);
  if (!c) return fail(o, err);
  palu_client* cc = c.get();
  auto need = [&](size_t lo, size_t hi, const char* usage) -> bool {
    if (args.size() < lo || args.size() > hi) {
      std::cerr << "palu: usage: palu session " << usage << "\n";
      return false;
    }
    return true;
  };
  auto print_one = [&](palu_session_list* raw, const char* what) {
    SessionList l(raw);
    const palu_session_info* s = palu_session_list_get(l.get(), 0);
    if (o.json) {
      std::cout << session_json(*s).dump() << "\n";
    } else {
      std::cout << what << " " << s->name << " (" << s->tokens << " tokens, " << s->tier << ")\n";
    }
  };
  int rc = PALU_OK;
  if (verb == "ls") {
    if (!need(0, 0, "ls")) return kExitUsage;
    palu_session_list* raw = nullptr;
    if ((rc = palu_sessions_list(cc, &raw)) != PALU_OK) return fail(o, last_error(cc, rc));
    SessionList l(raw);
    if (o.json) {
      json arr = json::array();
      for (size_t i = 0; i < palu_session_list_count(l.get()); ++i) arr.push_back(session_json(*palu_session_list_get(l.get(), i)));
      std::cout << arr.dump() << "\n";
    } else {
      std::printf("%-24s %-16s %9s %9s %10s %-5s %-10s %s\n", "NAME", "MODEL", "TOKENS", "CONTEXT", "KV", "TIER",
                  "STATE", "SAVED");
      for (size_t i = 0; i < palu_session_list_count(l.get()); ++i) {
        const palu_session_info* s = palu_session_list_get(l.get(), i);
        std::printf("%-24s %-16s %9u %9u %10s %-5s %-10s %s\n", s->name, s->model, s->tokens, s->max_context,
                    format_bytes(s->kv_bytes).c_str(), s->tier, s->state, s->saved ? "yes" : "no");
      }
    }
    return kExitOk;
  }
  if (verb == "save") {
    if (!need(1, 2, "save NAME [FILE]")) return kExitUsage;
    const char* file = args.size() > 1 ? args[1].c_str() : nullptr;
    if ((rc = palu_session_save(cc, args[0].c_str(), file)) != PALU_OK) return fail(o, last_error(cc, rc));
    if (o.json) {
      std::cout << json{{"saved", args[0]}, {"file", file ? args[1] : args[0]}}.dump() << "\n";
    } else {
      std::cout << "saved " << args[0] << " as " << (file ? args[1] : args[0]) << "\n";
    }
    return kExitOk;
  }
  if (verb == "restore") {
    if (!need(1, 2, "restore FILE [NAME]")) return kExitUsage;
    palu_session_list* raw = nullptr;
    if ((rc = palu_session_restore(cc, args[0].c_str(), args.size() > 1 ? args[1].c_str() : nullptr, &raw)) !=
        PALU_OK) {
      return fail(o, last_error(cc, rc));
    }
    print_one(raw, "restored");
    return kExitOk;
  }
  if (verb == "rm") {
    if (!need(1, 1, "rm NAME [--delete-saved]")) return kExitUsage;
    if ((rc = palu_session_close(cc, args[0].c_str(), delete_saved ? 1 : 0)) != PALU_OK) {
      return fail(o, last_error(cc, rc));
    }
    if (o.json) {
      std::cout << json{{"closed", args[0]}, {"deleted_saved", delete_saved}}.dump() << "\n";
    } else {
      std::cout << "closed " << args[0] << (delete_saved ? " (saved file deleted)" : "") << "\n";
    }
    return kExitOk;
  }
  if (verb == "fork") {
    if (!need(2, 2, "fork NAME NEW_NAME")) return kExitUsage;
    palu_session_list* raw = nullptr;
    if ((rc = palu_session_fork(cc, args[0].c_str(), args[1].c_str(), &raw)) != PALU_OK) {
      return fail(o, last_error(cc, rc));
    }
    print_one(raw, "forked");
    return kExitOk;
  }
  std::cerr << "palu: unknown session command '" << verb << "' (ls, save, restore, rm, fork)\n";
  return kExitUsage;
}

json model_json(const palu_model_info& m) {
  return json{{"name", m.name},
              {"path", m.path},
              {"architecture", m.architecture},
              {"summary", m.summary},
              {"compressed", m.compressed != 0},
              {"kv_bytes_per_token", m.kv_bytes_per_token},
              {"max_context", m.max_context},
              {"vocab_size", m.vocab_size},
              {"latent_bits", m.latent_bits},
              {"window_tokens", m.window_tokens},
              {"fingerprint", m.fingerprint}};
}

int cmd_models(const Common& o, const std::vector<std::string>& args, const std::string& name, uint32_t bits,
               uint32_t window) {
  Error err;
  Client c = open_client(o.socket, "palu models", &err);
  if (!c) return fail(o, err);
  palu_client* cc = c.get();
  int rc;
  if (!args.empty() && args[0] == "load") {
    if (args.size() != 2) {
      std::cerr << "palu: usage: palu models load PATH [--name N] [--kv-bits B] [--kv-window W]\n";
      return kExitUsage;
    }
    palu_load_params lp = palu_load_default_params();
    lp.path = args[1].c_str();
    lp.name = name.empty() ? nullptr : name.c_str();
    lp.latent_bits = bits;
    lp.window_tokens = window;
    palu_model_list* raw = nullptr;
    if ((rc = palu_model_load(cc, &lp, &raw)) != PALU_OK) return fail(o, last_error(cc, rc));
    ModelList l(raw);
    const palu_model_info* m = palu_model_list_get(l.get(), 0);
    if (o.json) {
      std::cout << model_json(*m).dump() << "\n";
    } else {
      std::cout << "loaded " << m->name << " (" << m->summary << ")\n";
    }
    return kExitOk;
  }
  if (!args.empty() && args[0] == "unload") {
    if (args.size() != 2) {
      std::cerr << "palu: usage: palu models unload NAME\n";
      return kExitUsage;
    }
    if ((rc = palu_model_unload(cc, args[1].c_str())) != PALU_OK) return fail(o, last_error(cc, rc));
    if (o.json) {
      std::cout << json{{"unloaded", args[1]}}.dump() << "\n";
    } else {
      std::cout << "unloaded " << args[1] << "\n";
    }
    return kExitOk;
  }
  if (!args.empty()) {
    std::cerr << "palu: unknown models command '" << args[0] << "' (load, unload, or nothing to list)\n";
    return kExitUsage;
  }
  palu_model_list* raw = nullptr;
  if ((rc = palu_models_list(cc, &raw)) != PALU_OK) return fail(o, last_error(cc, rc));
  ModelList l(raw);
  if (o.json) {
    json arr = json::array();
    for (size_t i = 0; i < palu_model_list_count(l.get()); ++i) arr.push_back(model_json(*palu_model_list_get(l.get(), i)));
    std::cout << arr.dump() << "\n";
    return kExitOk;
  }
  std::printf("%-16s %-8s %-10s %9s %10s %-6s %s\n", "NAME", "ARCH", "CACHE", "CONTEXT", "KV/TOKEN", "BITS", "PATH");
  for (size_t i = 0; i < palu_model_list_count(l.get()); ++i) {
    const palu_model_info* m = palu_model_list_get(l.get(), i);
    std::printf("%-16s %-8s %-10s %9u %10s %-6s %s\n", m->name, m->architecture, m->compressed ? "latent" : "full",
                m->max_context, format_bytes(m->kv_bytes_per_token).c_str(),
                m->latent_bits ? std::to_string(m->latent_bits).c_str() : "f16", m->path);
  }
  return kExitOk;
}

int cmd_stats(const Common& o) {
  Error err;
  Client c = open_client(o.socket, "palu stats", &err);
  if (!c) return fail(o, err);
  palu_stats* raw = nullptr;
  if (int rc = palu_stats_get(c.get(), &raw); rc != PALU_OK) return fail(o, last_error(c.get(), rc));
  Stats st(raw);
  const palu_daemon_stats* d = palu_stats_daemon(st.get());
  if (o.json) {
    json tiers = json::array();
    for (size_t i = 0; i < palu_stats_tier_count(st.get()); ++i) {
      const palu_tier_info* t = palu_stats_tier(st.get(), i);
      tiers.push_back(json{{"tier", t->tier}, {"budget_bytes", t->budget_bytes}, {"used_bytes", t->used_bytes},
                           {"sessions", t->sessions}});
    }
    json sessions = json::array();
    const palu_session_list* sl = palu_stats_sessions(st.get());
    for (size_t i = 0; i < palu_session_list_count(sl); ++i) sessions.push_back(session_json(*palu_session_list_get(sl, i)));
    std::cout << json{{"daemon_version", palu_client_daemon_version(c.get())},
                      {"uptime_s", d->uptime_s},
                      {"requests", d->requests},
                      {"generated_tokens", d->generated_tokens},
                      {"queue_depth", d->queue_depth},
                      {"demotions", d->demotions},
                      {"restorations", d->restorations},
                      {"tiers", tiers},
                      {"sessions", sessions}}
                     .dump()
              << "\n";
    return kExitOk;
  }
  std::printf("palud %s, up %.0f s: %llu requests, %llu tokens generated, queue %u, %llu demotions, %llu restorations\n",
              palu_client_daemon_version(c.get()), d->uptime_s, (unsigned long long)d->requests,
              (unsigned long long)d->generated_tokens, d->queue_depth, (unsigned long long)d->demotions,
              (unsigned long long)d->restorations);
  std::printf("%-5s %12s %12s %9s\n", "TIER", "USED", "BUDGET", "SESSIONS");
  for (size_t i = 0; i < palu_stats_tier_count(st.get()); ++i) {
    const palu_tier_info* t = palu_stats_tier(st.get(), i);
    std::printf("%-5s %12s %12s %9u\n", t->tier, format_bytes(t->used_bytes).c_str(),
                format_bytes(t->budget_bytes).c_str(), t->sessions);
  }
  return kExitOk;
}

int cmd_tokenize(const Common& o, const std::string& model, bool bos, std::string text) {
  if (text == "-") text = read_all_stdin();
  Error err;
  Client c = open_client(o.socket, "palu tokenize", &err);
  if (!c) return fail(o, err);
  palu_tokens* raw = nullptr;
  if (int rc = palu_tokenize(c.get(), model.empty() ? nullptr : model.c_str(), text.c_str(), bos ? 1 : 0, &raw);
      rc != PALU_OK) {
    return fail(o, last_error(c.get(), rc));
  }
  Tokens t(raw);
  std::vector<int32_t> ids(palu_tokens_data(t.get()), palu_tokens_data(t.get()) + palu_tokens_count(t.get()));
  if (o.json) {
    std::cout << json{{"token_ids", ids}, {"count", ids.size()}}.dump() << "\n";
  } else {
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
  }
  return kExitOk;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu: talk to the palud daemon (sessions, generation, models)"};
  app.require_subcommand(1);
  Common o;
  app.add_option("--socket", o.socket, "palud's socket (default $PALU_SOCKET or $XDG_RUNTIME_DIR/palu/palud.sock)")
      ->envname("PALU_SOCKET");
  app.add_flag("--json", o.json, "machine-readable output (one JSON value per line)");
  app.fallthrough();

  GenOptions run_opts, chat_opts;
  std::string prompt;
  auto* run = app.add_subcommand("run", "generate a reply to PROMPT (\"-\": read it from stdin), streamed to stdout");
  add_gen_options(run, run_opts);
  run->add_option("prompt", prompt, "the prompt, or - for stdin")->required();

  auto* chat = app.add_subcommand("chat", "a line-by-line conversation on stdin/stdout, kept in a named session");
  add_gen_options(chat, chat_opts);

  std::string verb;
  std::vector<std::string> session_args;
  bool delete_saved = false;
  auto* session = app.add_subcommand("session", "ls | save NAME [FILE] | restore FILE [NAME] | rm NAME | fork NAME NEW");
  session->add_option("verb", verb, "ls, save, restore, rm, fork")->required();
  session->add_option("args", session_args, "names");
  session->add_flag("--delete-saved", delete_saved, "rm: also delete its saved file");

  std::vector<std::string> model_args;
  std::string model_name;
  uint32_t kv_bits = 0, kv_window = 0;
  auto* models = app.add_subcommand("models", "list loaded models; `models load PATH`, `models unload NAME`");
  models->add_option("args", model_args, "load PATH | unload NAME");
  models->add_option("--name", model_name, "load: the name sessions use");
  models->add_option("--kv-bits", kv_bits, "load: latent bits (0 = f16, 2, 3, 4, 8)");
  models->add_option("--kv-window", kv_window, "load: newest tokens also kept in f16");

  auto* stats = app.add_subcommand("stats", "palud's counters, memory tiers and your sessions");

  std::string tok_model, tok_text;
  bool tok_bos = false;
  auto* tokenize = app.add_subcommand("tokenize", "print the token ids of TEXT (\"-\": stdin)");
  tokenize->add_option("--model,-m", tok_model, "model name (default: the first loaded)");
  tokenize->add_flag("--bos", tok_bos, "put BOS first");
  tokenize->add_option("text", tok_text, "the text")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    (void)app.exit(e);
    return kExitUsage;
  }
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, nullptr);

  if (*run) return cmd_run(o, run_opts, prompt);
  if (*chat) return cmd_chat(o, chat_opts);
  if (*session) return cmd_session(o, verb, session_args, delete_saved);
  if (*models) return cmd_models(o, model_args, model_name, kv_bits, kv_window);
  if (*stats) return cmd_stats(o);
  if (*tokenize) return cmd_tokenize(o, tok_model, tok_bos, tok_text);
  return kExitUsage;
}
