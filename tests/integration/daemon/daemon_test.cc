// A real palud on a real socket (issue 7's must-show list):
//   1. 8 concurrent sessions needing 3× the host budget all complete, greedy outputs equal
//      palu-generate's, budgets are never exceeded, stats show demotions and restorations;
//   2. kill -9 during a save leaves the previous saved state loadable; a restarted daemon
//      continues saved sessions token-identically; SIGTERM saves every session and a restart
//      restores them; a corrupted session file is refused (DATA_LOSS) and kept aside;
//   3. socket and directory modes, over-limit frames, malformed protobuf, version mismatch,
//      a session of another uid (root only: the test forks and setuids).
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>

#include <atomic>
#include <cmath>
#include <set>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "tests/integration/daemon/daemon_harness.h"

namespace palu::testing {
namespace {

std::string model_dir() { return shared_file("models/ref-mha"); }

api::Request req(Client& c) {
  api::Request r;
  r.set_id(c.next_id());
  return r;
}

// palu-generate's greedy ids for a prompt (same model, the same paged f16 cache; `flags` picks
// another model or cache).
std::vector<int32_t> reference_ids(const std::string& prompt, int n, const std::string& flags = "",
                                   const std::string& model = model_dir()) {
  const std::string cmd = std::string(PALU_BINARY_DIR) + "/tools/palu-generate -q --model " + model + " " +
                          flags + " --prompt '" + prompt + "' -n " + std::to_string(n) +
                          " -t 0 --ignore-eos --ids 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (p && std::fgets(buf, sizeof buf, p)) out += buf;
  if (p) ::pclose(p);
  // The ids are the last non-empty line.
  std::vector<std::string> lines;
  std::stringstream ss(out);
  for (std::string l; std::getline(ss, l);) if (!l.empty()) lines.push_back(l);
  std::vector<int32_t> ids;
  if (lines.empty()) return ids;
  std::stringstream ls(lines.back());
  for (int32_t v; ls >> v;) ids.push_back(v);
  return ids;
}

uint64_t create_session(Client& c, const std::string& name, api::Code* code = nullptr) {
  api::Request r = req(c);
  r.mutable_create_session()->set_name(name);
  api::Response resp = c.call(r);
  if (code) *code = resp.code();
  EXPECT_TRUE(code || resp.code() == api::OK) << resp.message();
  return resp.session().id();
}

Client::GenResult generate(Client& c, const std::string& session, const std::string& prompt, int n) {
  api::Request r = req(c);
  auto* g = r.mutable_generate();
  g->mutable_session()->set_name(session);
  g->set_prompt(prompt);
  g->set_max_tokens(n);
  g->mutable_sampling()->set_temperature(0.f);
  g->set_ignore_eos(true);
  return c.generate(r);
}

api::StatsReply stats(Client& c) {
  api::Request r = req(c);
  r.mutable_stats();
  return c.call(r).stats();
}

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir();
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    daemon_.reset();
    std::filesystem::remove_all(dir_);
  }
  Daemon& start(std::vector<std::string> args) {
    std::vector<std::string> all = {"--model", model_dir(), "--threads", "2"};
    if (!args.empty() && args.front() == "--only-model") {  // another model instead of ref-mha
      all = {"--model", args[1], "--threads", "2"};
      args.erase(args.begin(), args.begin() + 2);
    }
    all.insert(all.end(), args.begin(), args.end());
    daemon_ = std::make_unique<Daemon>(dir_, all);
    EXPECT_TRUE(daemon_->start()) << daemon_->log();
    return *daemon_;
  }
  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
};

// ---- 1 ------------------------------------------------------------------------------------

TEST_F(DaemonTest, EightSessionsOverThreeTimesTheHostBudgetAllComplete) {
  // ref-mha with f16 K/V rows: 16 KiB per token, 256 KiB per 16-token block; a session of a
  // short prompt + 24 tokens holds 3 blocks, eight of them 24 blocks = 3× the 8-block budget.
  Daemon& d = start({"--host-budget", "2MiB", "--disk-budget", "64MiB", "--no-restore"});
  const std::vector<std::string> prompts = {"Once upon a time", "The history of",  "In a small village",
                                            "The cat sat",      "A long time ago", "She opened the door",
                                            "The weather today", "My favourite food"};
  constexpr int kTokens = 24;
  std::vector<Client::GenResult> results(prompts.size());
  std::atomic<bool> done{false};
  std::atomic<uint64_t> max_host{0}, max_disk{0};
  std::atomic<int> samples{0};
  std::thread poller([&] {
    Client c(d.socket());
    if (!c.handshake()) return;
    while (!done) {
      const api::StatsReply st = stats(c);
      for (const auto& t : st.tiers()) {
        if (t.tier() == "host") max_host = std::max<uint64_t>(max_host, t.used_bytes());
        if (t.tier() == "disk") max_disk = std::max<uint64_t>(max_disk, t.used_bytes());
      }
      ++samples;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] {
      Client c(d.socket());
      if (!c.handshake()) return;
      create_session(c, "s" + std::to_string(i));
      results[i] = generate(c, "s" + std::to_string(i), prompts[i], kTokens);
    });
  }
  for (auto& t : clients) t.join();
  done = true;
  poller.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(prompts[i]);
    ASSERT_EQ(results[i].code, api::OK) << results[i].message;
    EXPECT_EQ(results[i].stop_reason, "max_tokens");
    EXPECT_EQ(results[i].ids, reference_ids(prompts[i], kTokens));
  }
  EXPECT_GT(samples.load(), 0);
  EXPECT_LE(max_host.load(), 2u << 20);
  EXPECT_LE(max_disk.load(), 64u << 20);
  Client c(d.socket());
  ASSERT_TRUE(c.handshake());
  const api::StatsReply s = stats(c);
  EXPECT_GT(s.demotions(), 0u);
  EXPECT_GT(s.restorations(), 0u);
  EXPECT_EQ(s.sessions_size(), 8);  // the caller's sessions (all eight: same uid)
  for (const auto& si : s.sessions()) EXPECT_EQ(si.state(), "idle") << si.name();
}

// ---- 2 ------------------------------------------------------------------------------------

TEST_F(DaemonTest, SavedSessionsSurviveKillAndRestartTokenIdentically) {
  Daemon* d = &start({"--host-budget", "64MiB", "--no-restore"});
  std::vector<int32_t> continued;
  {
    Client c(d->socket());
    ASSERT_TRUE(c.handshake());
    create_session(c, "chat");
    api::Request a = req(c);
    a.mutable_append()->mutable_session()->set_name("chat");
    a.mutable_append()->set_text("The quick brown fox");
    a.mutable_append()->set_add_bos(true);
    ASSERT_EQ(c.call(a).code(), api::OK);
    api::Request s = req(c);
    s.mutable_save()->mutable_session()->set_name("chat");
    s.mutable_save()->set_file_name("base");
    ASSERT_EQ(c.call(s).code(), api::OK);
    continued = generate(c, "chat", "", 16).ids;
    ASSERT_EQ(continued.size(), 16u);
    // Saves of another file in a loop while the daemon is killed.
    std::thread saver([&] {
      Client c2(d->socket(), 2000);
      if (!c2.handshake()) return;
      for (int i = 0; i < 200; ++i) {
        api::Request r = req(c2);
        r.mutable_save()->mutable_session()->set_name("chat");
        r.mutable_save()->set_file_name("churn");
        if (c2.call(r).code() != api::OK) return;
      }
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    d->kill_now();
    saver.join();
  }
  daemon_.reset();
  d = &start({"--host-budget", "64MiB", "--no-restore"});
  Client c(d->socket());
  ASSERT_TRUE(c.handshake());
  api::Request r = req(c);
  r.mutable_restore()->set_file_name("base");
  r.mutable_restore()->set_name("again");
  const api::Response restored = c.call(r);
  ASSERT_EQ(restored.code(), api::OK) << restored.message();
  EXPECT_EQ(generate(c, "again", "", 16).ids, continued);
  // Whatever state the killed save left, "churn" is either absent or loadable, never corrupt.
  if (std::filesystem::exists(d->state_dir() + "/sessions/" + std::to_string(::getuid()) + "/churn.palu")) {
    api::Request rc = req(c);
    rc.mutable_restore()->set_file_name("churn");
    EXPECT_EQ(c.call(rc).code(), api::OK);
  }
  // A corrupted file: refused with DATA_LOSS and kept aside.
  const std::string udir = d->state_dir() + "/sessions/" + std::to_string(::getuid());
  std::filesystem::copy_file(udir + "/base.palu", udir + "/bad.palu");
  {
    std::fstream f(udir + "/bad.palu", std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const auto size = (long)f.tellg();
    f.seekp(size / 2);
    char b = 0;
    f.seekg(size / 2);
    f.read(&b, 1);
    b ^= 0x5a;
    f.seekp(size / 2);
    f.write(&b, 1);
  }
  api::Request rb = req(c);
  rb.mutable_restore()->set_file_name("bad");
  const api::Response bad = c.call(rb);
  EXPECT_EQ(bad.code(), api::DATA_LOSS) << bad.message();
  EXPECT_NE(bad.message().find("kept aside"), std::string::npos) << bad.message();
  bool aside = false;
  for (const auto& e : std::filesystem::directory_iterator(udir)) {
    aside = aside || e.path().filename().string().rfind("bad.palu.corrupt-", 0) == 0;
  }
  EXPECT_TRUE(aside);
  EXPECT_TRUE(d->alive());
}

TEST_F(DaemonTest, SigtermSavesEverySessionAndARestartRestoresThem) {
  Daemon* d = &start({"--host-budget", "64MiB"});
  std::vector<int32_t> expected;
  {
    Client c(d->socket());
    ASSERT_TRUE(c.handshake());
    create_session(c, "alpha");
    create_session(c, "beta");
    ASSERT_EQ(generate(c, "beta", "Hello there", 4).code, api::OK);
    // What alpha would continue with, computed on a fork so alpha itself stays as it is.
    ASSERT_EQ(generate(c, "alpha", "It was a dark", 1).code, api::OK);
    api::Request f = req(c);
    f.mutable_fork()->mutable_session()->set_name("alpha");
    f.mutable_fork()->set_new_name("probe");
    ASSERT_EQ(c.call(f).code(), api::OK);
    expected = generate(c, "probe", "", 8).ids;
    api::Request cl = req(c);
    cl.mutable_close()->mutable_session()->set_name("probe");
    ASSERT_EQ(c.call(cl).code(), api::OK);
  }
  EXPECT_EQ(d->stop(), 0) << d->log();
  daemon_.reset();
  d = &start({"--host-budget", "64MiB"});
  Client c(d->socket());
  ASSERT_TRUE(c.handshake());
  api::Request l = req(c);
  l.mutable_list_sessions();
  const api::Response list = c.call(l);
  std::set<std::string> names;
  for (const auto& s : list.sessions().sessions()) names.insert(s.name());
  EXPECT_TRUE(names.count("alpha") && names.count("beta")) << list.DebugString();
  EXPECT_EQ(generate(c, "alpha", "", 8).ids, expected);
}

// ---- the GPU tier on CUDA (the GPU machine; skips elsewhere) ----------------------------------

std::string compressed_model_dir(std::string* error);

// Eight sessions whose CUDA latent caches need ~3× the GPU budget (ref-mha compressed, f16
// latents: a 256-position sequence holds ~2 MiB; the budget holds two): every one completes
// with palu-generate --backend cuda's greedy tokens (sessions move GPU ↔ host bit for bit, and
// wait for GPU room instead of switching device), the GPU budget is never exceeded, and stats
// show the moves.
TEST_F(DaemonTest, GpuTierOnCudaEightSessionsOverThreeTimesTheBudget) {
  std::string error;
  const std::string model = compressed_model_dir(&error);
  ASSERT_FALSE(model.empty()) << error;
  daemon_ = std::make_unique<Daemon>(dir_, std::vector<std::string>{"--model", model, "--threads", "2",
                                                                     "--backend", "cuda", "--gpu-budget", "5MiB",
                                                                     "--host-budget", "256MiB", "--no-restore"});
  if (!daemon_->start()) {
    const std::string log = daemon_->log();
    if (log.find("no CUDA device") != std::string::npos || log.find("no CUDA backend") != std::string::npos) {
      GTEST_SKIP() << "palud --backend cuda: " << log.substr(0, 300);
    }
    FAIL() << log;
  }
  Daemon& d = *daemon_;
  const std::vector<std::string> prompts = {"Once upon a time", "The history of",  "In a small village",
                                            "The cat sat",      "A long time ago", "She opened the door",
                                            "The weather today", "My favourite food"};
  constexpr int kTokens = 24;
  std::vector<Client::GenResult> results(prompts.size());
  std::atomic<bool> done{false};
  std::atomic<uint64_t> max_gpu{0};
  std::atomic<uint32_t> max_gpu_sessions{0};
  std::thread poller([&] {
    Client c(d.socket());
    if (!c.handshake()) return;
    while (!done) {
      const api::StatsReply st = stats(c);
      for (const auto& t : st.tiers()) {
        if (t.tier() != "gpu") continue;
        EXPECT_EQ(t.budget_bytes(), 5u << 20);
        max_gpu = std::max<uint64_t>(max_gpu, t.used_bytes());
        max_gpu_sessions = std::max<uint32_t>(max_gpu_sessions, t.sessions());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] {
      Client c(d.socket());
      if (!c.handshake()) return;
      create_session(c, "g" + std::to_string(i));
      results[i] = generate(c, "g" + std::to_string(i), prompts[i], kTokens);
    });
  }
  for (auto& t : clients) t.join();
  done = true;
  poller.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(prompts[i]);
    ASSERT_EQ(results[i].code, api::OK) << results[i].message;
    EXPECT_EQ(results[i].ids, reference_ids(prompts[i], kTokens, "--backend cuda --kv latent", model));
  }
  EXPECT_LE(max_gpu.load(), 5u << 20);
  EXPECT_GT(max_gpu_sessions.load(), 0u);
  Client c(d.socket());
  ASSERT_TRUE(c.handshake());
  const api::StatsReply st = stats(c);
  EXPECT_GT(st.demotions(), 0u);
  EXPECT_GT(st.restorations(), 0u);
  std::printf("[gpu tier] max GPU bytes %llu of %u, at most %u sessions on the GPU, %llu demotions, %llu restorations\n",
              (unsigned long long)max_gpu.load(), 5u << 20, max_gpu_sessions.load(),
              (unsigned long long)st.demotions(), (unsigned long long)st.restorations());
}

// ---- per-session cache settings ------------------------------------------------------------

// ref-mha compressed by palu-compress (ratio 0.5), kept in the build tree and reused while it is
// newer than the palu-compress binary (ctest runs each test in its own process; written to a
// temporary directory and renamed, so concurrent runs never read a half-written model).
std::string compressed_model_dir(std::string* error) {
  namespace fs = std::filesystem;
  const std::string tool = std::string(PALU_BINARY_DIR) + "/tools/palu-compress";
  const std::string dir = std::string(PALU_BINARY_DIR) + "/tests/daemon_ref_mha_palu";
  std::error_code ec;
  if (fs::exists(dir + "/palu.json") && fs::exists(tool) &&
      fs::last_write_time(dir + "/palu.json", ec) > fs::last_write_time(tool, ec)) {
    return dir;
  }
  const std::string tmp = dir + ".tmp." + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  const std::string cmd = tool + " -q --model " + model_dir() + " --calib " + shared_file("data/calib.txt") +
                          " --calib-samples 2 --calib-seq 128 --ratio 0.5 --out " + tmp + " > /dev/null 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    *error = "palu-compress failed: " + cmd;
    return "";
  }
  fs::remove_all(dir, ec);
  fs::rename(tmp, dir, ec);
  if (ec) {
    fs::remove_all(tmp, ec);
    if (!fs::exists(dir + "/palu.json")) *error = "could not move the compressed model to " + dir;
  }
  return dir;
}

api::Response create_with_cache(Client& c, const std::string& name, int bits, int window, const std::string& model = "") {
  api::Request r = req(c);
  r.mutable_create_session()->set_name(name);
  if (!model.empty()) r.mutable_create_session()->set_model(model);
  r.mutable_create_session()->mutable_cache()->set_latent_bits((uint32_t)bits);
  r.mutable_create_session()->mutable_cache()->set_window_tokens((uint32_t)window);
  return c.call(r);
}

// Sessions of one compressed model with different latent bits / f16 windows run side by side,
// each token-identical to palu-generate with the same cache flags; they share one host budget
// (demoting each other to disk); bad settings are refused with the field named; a saved q4
// session comes back after a restart with its setting and continues token-identically.
TEST_F(DaemonTest, SessionsChooseTheirOwnCacheSettings) {
  std::string error;
  const std::string model = compressed_model_dir(&error);
  ASSERT_FALSE(model.empty()) << error;
  struct Case {
    int bits, window;
    std::string prompt;
  };
  const std::vector<Case> cases = {{0, 0, "Once upon a time"}, {4, 0, "The history of"}, {2, 8, "In a small village"},
                                   {8, 0, "The cat sat"},      {3, 0, "A long time ago"}, {4, 16, "The weather today"}};
  constexpr int kTokens = 24;
  // palu-generate's output for each, computed side by side.
  std::vector<std::vector<int32_t>> expected_ids(cases.size());
  {
    std::vector<std::thread> refs;
    for (size_t i = 0; i < cases.size(); ++i) {
      refs.emplace_back([&, i] {
        std::string flags = " --kv latent";
        if (cases[i].bits) flags += " --kv-bits " + std::to_string(cases[i].bits);
        if (cases[i].window) flags += " --kv-window " + std::to_string(cases[i].window);
        expected_ids[i] = reference_ids(cases[i].prompt, kTokens, flags, model);
      });
    }
    for (auto& t : refs) t.join();
  }
  // Each session holds 2 16-token blocks (f16 latents: 128 KiB a block); the six together need
  // ~0.8 MiB, twice the budget.
  Daemon* d = &start({"--only-model", model, "--host-budget", "384KiB", "--disk-budget", "64MiB", "--no-restore"});
  std::vector<Client::GenResult> results(cases.size());
  std::vector<api::Response> created(cases.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < cases.size(); ++i) {
    clients.emplace_back([&, i] {
      Client c(d->socket());
      if (!c.handshake()) return;
      const std::string name = "s" + std::to_string(i);
      created[i] = create_with_cache(c, name, cases[i].bits, cases[i].window);
      if (created[i].code() == api::OK) results[i] = generate(c, name, cases[i].prompt, kTokens);
    });
  }
  for (auto& t : clients) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& k = cases[i];
    SCOPED_TRACE("bits " + std::to_string(k.bits) + " window " + std::to_string(k.window));
    ASSERT_EQ(created[i].code(), api::OK) << created[i].message();
    EXPECT_EQ(created[i].session().cache().latent_bits(), (uint32_t)k.bits);
    EXPECT_EQ(created[i].session().cache().window_tokens(), (uint32_t)k.window);
    ASSERT_EQ(results[i].code, api::OK) << results[i].message;
    ASSERT_EQ(expected_ids[i].size(), (size_t)kTokens) << "palu-generate failed";
    EXPECT_EQ(results[i].ids, expected_ids[i]);
  }
  Client c(d->socket());
  ASSERT_TRUE(c.handshake());
  const api::StatsReply st = stats(c);
  EXPECT_GT(st.demotions(), 0u);
  EXPECT_GT(st.restorations(), 0u);
  for (const auto& t : st.tiers()) {
    if (t.tier() == "host") {
      EXPECT_LE(t.used_bytes(), 384u << 10);
    }
  }

  // Bad settings: the field and the value named, nothing created.
  api::Response bad = create_with_cache(c, "bad1", 5, 0);
  EXPECT_EQ(bad.code(), api::INVALID_ARGUMENT);
  EXPECT_NE(bad.message().find("create_session.cache.latent_bits must be 0, 2, 3, 4 or 8, got 5"), std::string::npos)
      << bad.message();
  bad = create_with_cache(c, "bad2", 0, 16);
  EXPECT_EQ(bad.code(), api::INVALID_ARGUMENT);
  EXPECT_NE(bad.message().find("window_tokens needs latent_bits"), std::string::npos) << bad.message();
  bad = create_with_cache(c, "bad3", 4, (1 << 20) + 1);
  EXPECT_EQ(bad.code(), api::INVALID_ARGUMENT);
  EXPECT_NE(bad.message().find("window_tokens must be at most"), std::string::npos) << bad.message();
  EXPECT_EQ(stats(c).sessions_size(), (int)cases.size());

  // A q4 session saved, the daemon restarted: restored with its setting, it continues as it
  // would have.
  ASSERT_EQ(create_with_cache(c, "keep", 4, 0).code(), api::OK);
  ASSERT_EQ(generate(c, "keep", "It was a dark", 1).code, api::OK);
  api::Request f = req(c);
  f.mutable_fork()->mutable_session()->set_name("keep");
  f.mutable_fork()->set_new_name("probe");
  const api::Response forked = c.call(f);
  ASSERT_EQ(forked.code(), api::OK) << forked.message();
  EXPECT_EQ(forked.session().cache().latent_bits(), 4u);
  const std::vector<int32_t> expected = generate(c, "probe", "", 8).ids;
  ASSERT_EQ(expected.size(), 8u);
  api::Request sv = req(c);
  sv.mutable_save()->mutable_session()->set_name("keep");
  ASSERT_EQ(c.call(sv).code(), api::OK);
  daemon_.reset();
  d = &start({"--only-model", model, "--host-budget", "384KiB", "--no-restore"});
  Client c2(d->socket());
  ASSERT_TRUE(c2.handshake());
  api::Request rs = req(c2);
  rs.mutable_restore()->set_file_name("keep");
  rs.mutable_restore()->set_name("keep");
  const api::Response restored = c2.call(rs);
  ASSERT_EQ(restored.code(), api::OK) << restored.message();
  EXPECT_EQ(restored.session().cache().latent_bits(), 4u);
  EXPECT_EQ(generate(c2, "keep", "", 8).ids, expected);
}

// A latent setting asked of an uncompressed model is refused naming the model.
TEST_F(DaemonTest, LatentBitsForAnUncompressedModelAreRefused) {
  Daemon& d = start({"--host-budget", "16MiB", "--no-restore"});
  Client c(d.socket());
  ASSERT_TRUE(c.handshake());
  const api::Response r = create_with_cache(c, "x", 4, 0);
  EXPECT_EQ(r.code(), api::INVALID_ARGUMENT);
  EXPECT_NE(r.message().find("needs a compressed model"), std::string::npos) << r.message();
  const api::Response ok = create_with_cache(c, "y", 0, 0);  // the model's own setting
  EXPECT_EQ(ok.code(), api::OK) << ok.message();
}

// ---- 3 ------------------------------------------------------------------------------------

TEST_F(DaemonTest, SocketModesLimitsAndMalformedInput) {
  Daemon& d = start({"--host-budget", "16MiB", "--no-restore", "--max-frame", "64KiB"});
  struct stat st{};
  ASSERT_EQ(::stat(d.socket().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat((dir_ + "/run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  Client ok(d.socket());
  ASSERT_TRUE(ok.handshake());
  {  // wrong protocol version: both versions named, connection closed
    Client c(d.socket());
    api::Request r;
    r.set_id(1);
    r.mutable_handshake()->set_protocol_version(99);
    const api::Response resp = c.call(r);
    EXPECT_EQ(resp.code(), api::VERSION_MISMATCH);
    EXPECT_NE(resp.message().find("99"), std::string::npos) << resp.message();
    EXPECT_TRUE(c.closed_by_peer());
  }
  {  // an over-limit frame is refused from its header
    Client c(d.socket());
    ASSERT_TRUE(c.handshake());
    ASSERT_TRUE(c.send_raw(palu::api::encode_frame_header(1u << 30)));
    auto resp = c.read();
    ASSERT_TRUE(resp.has_value());
    EXPECT_EQ(resp->code(), api::INVALID_ARGUMENT);
    EXPECT_TRUE(c.closed_by_peer());
  }
  {  // malformed protobuf
    Client c(d.socket());
    ASSERT_TRUE(c.handshake());
    ASSERT_TRUE(c.send_raw(palu::api::encode_frame_header(5) + std::string("\xff\xff\xff\xff\xff", 5)));
    auto resp = c.read();
    ASSERT_TRUE(resp.has_value());
    EXPECT_EQ(resp->code(), api::INVALID_ARGUMENT);
    EXPECT_TRUE(c.closed_by_peer());
  }
  {  // malformed JSON line
    Client c(d.socket());
    ASSERT_TRUE(c.send_raw("{\"id\": 1, \"handshake\": {\"protocol_version\": 1}}\n{\"id\": 2, \"nonsense\": [}\n"));
    EXPECT_TRUE(c.closed_by_peer());
  }
  {  // bad fields get named errors, the connection stays
    api::Request r = req(ok);
    r.mutable_generate()->mutable_session()->set_name("nope");
    EXPECT_EQ(ok.call(r).code(), api::NOT_FOUND);
    create_session(ok, "x");
    api::Request g = req(ok);
    g.mutable_generate()->mutable_session()->set_name("x");
    g.mutable_generate()->add_prompt_ids(1 << 30);
    const api::Response bad = ok.call(g);
    EXPECT_EQ(bad.code(), api::INVALID_ARGUMENT);
    EXPECT_NE(bad.message().find("vocabulary"), std::string::npos) << bad.message();
    api::Request t = req(ok);
    t.mutable_generate()->mutable_session()->set_name("x");
    t.mutable_generate()->mutable_sampling()->set_temperature(std::nanf(""));
    EXPECT_EQ(ok.call(t).code(), api::INVALID_ARGUMENT);
  }
  EXPECT_TRUE(d.alive());
  api::Request lm = req(ok);
  lm.mutable_list_models();
  EXPECT_EQ(ok.call(lm).models().models_size(), 1);
}

TEST_F(DaemonTest, AnotherUidCannotTouchASession) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client as another uid (setuid)";
  // A shared socket so the other uid can connect at all (the default 0600 refuses it earlier).
  std::filesystem::create_directories(dir_ + "/run");
  ::chmod(dir_.c_str(), 0755);
  ::chmod((dir_ + "/run").c_str(), 0755);
  Daemon& d = start({"--host-budget", "16MiB", "--no-restore", "--socket-mode", "0666"});
  Client owner(d.socket());
  ASSERT_TRUE(owner.handshake());
  const uint64_t id = create_session(owner, "mine");
  const pid_t pid = ::fork();
  if (pid == 0) {
    const passwd* nobody = ::getpwnam("nobody");
    if (nobody == nullptr || ::setgid(nobody->pw_gid) != 0 || ::setuid(nobody->pw_uid) != 0) ::_exit(3);
    Client other(d.socket(), 10000);
    if (!other.handshake()) ::_exit(4);
    api::Request r;
    r.set_id(7);
    r.mutable_generate()->mutable_session()->set_id(id);
    const api::Response resp = other.call(r);
    api::Request l;
    l.set_id(8);
    l.mutable_list_sessions();
    const api::Response list = other.call(l);
    ::_exit(resp.code() == api::PERMISSION_DENIED && list.sessions().sessions_size() == 0 ? 0 : 5);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "3: setuid failed, 4: handshake failed, 5: the session was visible";
}

}  // namespace
}  // namespace palu::testing
