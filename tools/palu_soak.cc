// palu-soak: a bounded soak of a running palud through the C SDK. N client threads create,
// append to, generate in (some cancelled, some abandoned mid-stream by a client that goes
// away), fork, save, restore and close sessions for --duration seconds; a monitor samples
// palud's RSS, open descriptors, threads and per-tier cache bytes. Before the load (after a
// warm-up round) and after it (every session closed, saved files deleted) the same numbers are
// taken; the tool prints a Markdown table and exits 1 when descriptors, cache bytes, sessions
// or saved files do not come back to their baseline, when RSS grew by more than --rss-slack,
// or when any request failed with a status the load does not explain.
//
//   palu-soak --socket PATH --pid PID [--duration 600] [--clients 8] [--state-dir DIR]
//             [--seed 1] [--out FILE] [--rss-slack 32MiB]
#include <dirent.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "palu/palu.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Sample {
  long rss_kib = 0;
  int fds = 0;
  int threads = 0;
  uint64_t host_bytes = 0, disk_bytes = 0, gpu_bytes = 0;
  int sessions = 0;
  int saved_files = 0;
  bool ok = false;
};

long proc_status_field(int pid, const char* key) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  const std::string k = std::string(key) + ":";
  while (std::getline(f, line)) {
    if (line.rfind(k, 0) == 0) return std::atol(line.c_str() + k.size());
  }
  return -1;
}

// Entries of a directory (palud's /proc/PID/fd), -1 when it cannot be read.
int count_dir(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (!d) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ++n;
  }
  closedir(d);
  return n;
}

// .palu files anywhere under palud's state directory (sessions/<uid>/NAME.palu).
int count_saved(const std::string& dir) {
  std::error_code ec;
  int n = 0;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec) && it->path().extension() == ".palu") ++n;
  }
  return n;
}

Sample sample(palu_client* c, int pid, const std::string& state_dir) {
  Sample s;
  s.rss_kib = proc_status_field(pid, "VmRSS");
  s.threads = (int)proc_status_field(pid, "Threads");
  s.fds = count_dir("/proc/" + std::to_string(pid) + "/fd");
  s.saved_files = state_dir.empty() ? -1 : count_saved(state_dir);
  palu_stats* st = nullptr;
  if (palu_stats_get(c, &st) == PALU_OK) {
    for (size_t i = 0; i < palu_stats_tier_count(st); ++i) {
      const palu_tier_info* t = palu_stats_tier(st, i);
      const std::string tier = t->tier;
      (tier == "host" ? s.host_bytes : tier == "disk" ? s.disk_bytes : s.gpu_bytes) = t->used_bytes;
    }
    s.sessions = (int)palu_session_list_count(palu_stats_sessions(st));
    s.ok = s.rss_kib > 0 && s.fds > 0;
  }
  palu_stats_free(st);
  return s;
}

// Counts per operation and status, shared by the workers.
struct Tally {
  std::mutex mu;
  std::map<std::string, std::map<std::string, long>> by_op;  // op → status name → count
  std::vector<std::string> unexpected;                          // first few, with messages
  long unexpected_count = 0;
  std::atomic<long> tokens{0};

  void add(const std::string& op, int status, bool expected, palu_client* c) {
    std::lock_guard<std::mutex> l(mu);
    ++by_op[op][palu_status_name(status)];
    if (!expected) {
      ++unexpected_count;
      if (unexpected.size() < 20) {
        unexpected.push_back(op + ": " + palu_status_name(status) + " " + (c ? palu_client_last_error(c) : ""));
      }
    }
  }
};

// Statuses a soak legitimately sees: budgets and queue limits under load, cancellations it asked
// for, a session still busy with a stream whose client went away.
bool expected_status(int st) {
  return st == PALU_OK || st == PALU_ECANCELLED || st == PALU_EBUSY || st == PALU_ENOSPACE ||
         st == PALU_ERANGE || st == PALU_EPRECONDITION;  // busy: an abandoned stream still finishing
}

const char* kWords[] = {"the", "river", "city", "old", "light", "winter", "story", "of", "a", "house", "and",
                        "music", "long", "road", "children", "market", "stone", "bridge", "night", "sea"};

std::string random_text(std::mt19937_64& rng, int words) {
  std::string s;
  for (int i = 0; i < words; ++i) {
    if (i) s += ' ';
    s += kWords[rng() % (sizeof(kWords) / sizeof(kWords[0]))];
  }
  return s;
}

struct CancelAfter {
  int chunks_left;
};
int cancel_after_cb(const palu_chunk*, void* user) {
  auto* c = static_cast<CancelAfter*>(user);
  return --c->chunks_left <= 0 ? 1 : 0;
}

void worker(int id, const std::string& socket, Clock::time_point deadline, uint64_t seed, Tally* tally) {
  std::mt19937_64 rng(seed * 1000003u + (uint64_t)id);
  palu_client_params cp = palu_client_default_params();
  cp.socket_path = socket.c_str();
  cp.client_name = "palu-soak";
  cp.request_timeout_ms = 120000;
  palu_client* c = nullptr;
  std::vector<std::string> mine;  // sessions this worker holds
  std::vector<std::string> saved;  // files it saved
  long serial = 0;
  auto connect = [&]() -> bool {
    palu_client_free(c);
    c = nullptr;
    const int st = palu_client_open(&cp, &c);
    tally->add("connect", st, st == PALU_OK, c);
    return st == PALU_OK;
  };
  auto fresh_name = [&]() { return "w" + std::to_string(id) + "-" + std::to_string(serial++); };
  auto drop = [&](const std::string& n) {
    for (size_t i = 0; i < mine.size(); ++i) {
      if (mine[i] == n) {
        mine.erase(mine.begin() + (long)i);
        return;
      }
    }
  };
  if (!connect()) return;
  while (Clock::now() < deadline) {
    const int dice = (int)(rng() % 100);
    if (mine.empty() || (dice < 12 && mine.size() < 3)) {
      palu_session_params sp = palu_session_default_params();
      const std::string n = fresh_name();
      sp.name = n.c_str();
      sp.max_context = 128 + (uint32_t)(rng() % 4) * 128;
      const int st = palu_session_create(c, &sp, nullptr);
      tally->add("create", st, expected_status(st), c);
      if (st == PALU_OK) mine.push_back(n);
      if (st == PALU_ECLOSED && !connect()) break;
      continue;
    }
    const std::string s = mine[rng() % mine.size()];
    if (dice < 50) {  // generate; a quarter cancelled from the callback
      palu_generate_params gp = palu_generate_default_params();
      const std::string prompt = random_text(rng, 3 + (int)(rng() % 20));
      gp.prompt = prompt.c_str();
      gp.max_tokens = 4 + (uint32_t)(rng() % 28);
      gp.temperature = (rng() % 2) ? 0.f : 0.8f;
      gp.seed = rng();
      gp.has_seed = 1;
      gp.ignore_eos = 1;
      palu_generate_result r = palu_generate_default_result();
      CancelAfter ca{1 + (int)(rng() % 4)};
      const bool cancel = rng() % 4 == 0;
      const int st = palu_session_generate(c, s.c_str(), &gp, cancel ? cancel_after_cb : nullptr, &ca, &r);
      tally->add(cancel ? "generate+cancel" : "generate", st, expected_status(st), c);
      tally->tokens += r.generated_tokens;
      if (st == PALU_ERANGE) {  // context full: start over in a new session
        const int cs = palu_session_close(c, s.c_str(), 1);
        tally->add("close", cs, cs == PALU_OK, c);
        drop(s);
      }
    } else if (dice < 56) {  // a client that goes away in the middle of a stream
      palu_client* other = nullptr;
      if (palu_client_open(&cp, &other) == PALU_OK) {
        palu_generate_params gp = palu_generate_default_params();
        gp.prompt = "and then";
        gp.max_tokens = 64;
        gp.ignore_eos = 1;
        palu_stream* stream = nullptr;
        int st = palu_stream_start(other, s.c_str(), &gp, &stream);
        if (st == PALU_OK) {
          const palu_chunk* chunk = nullptr;
          st = palu_stream_next(stream, &chunk);  // 1: a piece arrived, 0: already ended
          if (st > 0) st = PALU_OK;
        }
        tally->add("stream+disconnect", st, expected_status(st), other);
        // Freed without cancelling or reading to the end: palud must notice and free the work.
        palu_stream_free(stream);
      }
      palu_client_free(other);
    } else if (dice < 64) {
      const std::string text = random_text(rng, 2 + (int)(rng() % 10));
      uint32_t after = 0;
      const int st = palu_session_append_text(c, s.c_str(), text.c_str(), 0, &after);
      tally->add("append", st, expected_status(st), c);
    } else if (dice < 72) {
      const std::string f = "soak-" + s;
      const int st = palu_session_save(c, s.c_str(), f.c_str());
      tally->add("save", st, expected_status(st), c);
      if (st == PALU_OK) saved.push_back(f);
    } else if (dice < 78 && !saved.empty() && mine.size() < 4) {
      const std::string f = saved[rng() % saved.size()];
      const std::string n = fresh_name();
      const int st = palu_session_restore(c, f.c_str(), n.c_str(), nullptr);
      // The file may have been deleted with its session already.
      tally->add("restore", st, expected_status(st) || st == PALU_ENOTFOUND, c);
      if (st == PALU_OK) mine.push_back(n);
    } else if (dice < 84 && mine.size() < 4) {
      const std::string n = fresh_name();
      const int st = palu_session_fork(c, s.c_str(), n.c_str(), nullptr);
      tally->add("fork", st, expected_status(st), c);
      if (st == PALU_OK) mine.push_back(n);
    } else if (dice < 94) {
      const int st = palu_session_close(c, s.c_str(), (int)(rng() % 2));
      tally->add("close", st, st == PALU_OK, c);
      if (st == PALU_OK) drop(s);
    } else {
      palu_session_list* l = nullptr;
      const int st = palu_sessions_list(c, &l);
      tally->add("list", st, st == PALU_OK, c);
      palu_session_list_free(l);
    }
    if (palu_client_last_status(c) == PALU_ECLOSED && !connect()) break;
  }
  // Clean up everything this worker made: sessions and saved files.
  for (const auto& n : mine) {
    const int st = palu_session_close(c, n.c_str(), 1);
    tally->add("close (end)", st, st == PALU_OK, c);
  }
  for (const auto& f : saved) {
    // Restore under a throwaway name and close with delete_saved to remove the file; the file
    // may already be gone with its session.
    const std::string n = fresh_name();
    int st = palu_session_restore(c, f.c_str(), n.c_str(), nullptr);
    if (st == PALU_OK) st = palu_session_close(c, n.c_str(), 1);
    tally->add("delete saved (end)", st, st == PALU_OK || st == PALU_ENOTFOUND, c);
  }
  palu_client_free(c);
}

std::string mib(double kib) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", kib / 1024.0);
  return b;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"palu-soak: a bounded soak of a running palud (RSS, descriptors, cache bytes before and after)"};
  std::string socket, state_dir, out;
  int pid = 0, clients = 8;
  double duration = 600;
  uint64_t seed = 1;
  long rss_slack_mib = 32;
  app.add_option("--socket", socket, "palud's socket")->required();
  app.add_option("--pid", pid, "palud's process id (its /proc entries are sampled)")->required()->check(CLI::Range(1, 1 << 30));
  app.add_option("--duration", duration, "seconds of load")->check(CLI::Range(1.0, 86400.0));
  app.add_option("--clients", clients, "client threads")->check(CLI::Range(1, 256));
  app.add_option("--state-dir", state_dir, "palud's state directory (saved .palu files are counted)");
  app.add_option("--seed", seed, "random seed of the operation mix");
  app.add_option("--rss-slack", rss_slack_mib, "MiB of RSS growth still accepted after the load")->check(CLI::Range(0L, 1L << 20));
  app.add_option("--out", out, "also write the Markdown table to this file");
  CLI11_PARSE(app, argc, argv);

  palu_client_params cp = palu_client_default_params();
  cp.socket_path = socket.c_str();
  cp.client_name = "palu-soak monitor";
  palu_client* mon = nullptr;
  if (palu_client_open(&cp, &mon) != PALU_OK) {
    std::fprintf(stderr, "palu-soak: error: %s\n", mon ? palu_client_last_error(mon) : "out of memory");
    palu_client_free(mon);
    return 3;
  }
  Tally tally;
  // Warm-up: one short round per client, so lazily built tables and allocator pools exist
  // before the baseline.
  {
    std::vector<std::thread> ts;
    for (int i = 0; i < clients; ++i) {
      ts.emplace_back(worker, 1000 + i, socket, Clock::now() + std::chrono::seconds(2), seed + 7, &tally);
    }
    for (auto& t : ts) t.join();
  }
  std::this_thread::sleep_for(std::chrono::seconds(1));
  const Sample before = sample(mon, pid, state_dir);
  if (!before.ok) {
    std::fprintf(stderr, "palu-soak: error: cannot sample palud (pid %d): %s\n", pid, palu_client_last_error(mon));
    palu_client_free(mon);
    return 3;
  }
  std::fprintf(stderr, "palu-soak: baseline rss %s, %d fds, %d threads; %d clients for %.0f s\n",
               mib((double)before.rss_kib).c_str(), before.fds, before.threads, clients, duration);
  {
    std::lock_guard<std::mutex> l(tally.mu);
    tally.by_op.clear();  // count the measured load only (warm-up failures still count below)
  }
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::milliseconds((long)(duration * 1000));
  std::vector<std::thread> ts;
  for (int i = 0; i < clients; ++i) ts.emplace_back(worker, i, socket, deadline, seed, &tally);
  Sample peak = before;
  long samples = 0;
  while (Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::seconds(5));
    const Sample s = sample(mon, pid, state_dir);
    if (!s.ok) continue;
    ++samples;
    peak.rss_kib = std::max(peak.rss_kib, s.rss_kib);
    peak.fds = std::max(peak.fds, s.fds);
    peak.threads = std::max(peak.threads, s.threads);
    peak.host_bytes = std::max(peak.host_bytes, s.host_bytes);
    peak.disk_bytes = std::max(peak.disk_bytes, s.disk_bytes);
    peak.sessions = std::max(peak.sessions, s.sessions);
    peak.saved_files = std::max(peak.saved_files, s.saved_files);
    const double el = std::chrono::duration<double>(Clock::now() - t0).count();
    std::fprintf(stderr, "[%.0f/%.0f s] rss %s, %d fds, %d sessions, host %llu B, disk %llu B, %ld tokens\n", el,
                 duration, mib((double)s.rss_kib).c_str(), s.fds, s.sessions, (unsigned long long)s.host_bytes,
                 (unsigned long long)s.disk_bytes, tally.tokens.load());
  }
  for (auto& t : ts) t.join();
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  std::this_thread::sleep_for(std::chrono::seconds(2));  // let palud notice the last disconnects
  const Sample after = sample(mon, pid, state_dir);
  palu_client_free(mon);

  std::ostringstream o;
  long total_ops = 0;
  for (const auto& [op, m] : tally.by_op) {
    for (const auto& [st, n] : m) total_ops += n;
  }
  o << "| | before | peak during | after | back to baseline |\n|---|---|---|---|---|\n";
  const long rss_growth_kib = after.rss_kib - before.rss_kib;
  const bool rss_ok = rss_growth_kib <= rss_slack_mib * 1024;
  auto row = [&](const std::string& what, const std::string& b, const std::string& p, const std::string& a, bool ok) {
    o << "| " << what << " | " << b << " | " << p << " | " << a << " | " << (ok ? "yes" : "**NO**") << " |\n";
  };
  row("palud RSS", mib((double)before.rss_kib), mib((double)peak.rss_kib), mib((double)after.rss_kib), rss_ok);
  row("open descriptors", std::to_string(before.fds), std::to_string(peak.fds), std::to_string(after.fds),
      after.fds == before.fds);
  row("threads", std::to_string(before.threads), std::to_string(peak.threads), std::to_string(after.threads),
      after.threads == before.threads);
  row("sessions", std::to_string(before.sessions), std::to_string(peak.sessions), std::to_string(after.sessions),
      after.sessions == before.sessions);
  row("host cache bytes", std::to_string(before.host_bytes), std::to_string(peak.host_bytes),
      std::to_string(after.host_bytes), after.host_bytes == before.host_bytes);
  row("disk cache bytes", std::to_string(before.disk_bytes), std::to_string(peak.disk_bytes),
      std::to_string(after.disk_bytes), after.disk_bytes == before.disk_bytes);
  if (before.saved_files >= 0) {
    row("saved session files", std::to_string(before.saved_files), std::to_string(peak.saved_files),
        std::to_string(after.saved_files), after.saved_files == before.saved_files);
  }
  o << "\n" << clients << " clients, " << (long)wall << " s, " << total_ops << " requests, " << tally.tokens.load()
    << " generated tokens, " << samples << " samples. RSS may grow by at most " << rss_slack_mib
    << " MiB (allocator caches); everything else must return exactly.\n\n";
  o << "| operation | results |\n|---|---|\n";
  for (const auto& [op, m] : tally.by_op) {
    o << "| " << op << " | ";
    bool first = true;
    for (const auto& [st, n] : m) {
      o << (first ? "" : ", ") << st << " " << n;
      first = false;
    }
    o << " |\n";
  }
  o << "\nUnexpected failures: " << tally.unexpected_count << "\n";
  for (const auto& u : tally.unexpected) o << "- " << u << "\n";
  const bool pass = rss_ok && after.fds == before.fds && after.threads == before.threads &&
                    after.sessions == before.sessions && after.host_bytes == before.host_bytes &&
                    after.disk_bytes == before.disk_bytes && after.saved_files == before.saved_files &&
                    tally.unexpected_count == 0 && after.ok;
  o << "\nResult: " << (pass ? "PASS" : "FAIL") << "\n";
  std::fputs(o.str().c_str(), stdout);
  if (!out.empty()) {
    std::ofstream f(out);
    f << o.str();
  }
  return pass ? 0 : 1;
}
