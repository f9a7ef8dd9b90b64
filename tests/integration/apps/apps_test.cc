// End to end: the `palu` CLI and `palu-assistant` (driven through a pseudo-terminal) against a
// real palud (issue 8's must-show 2), including a daemon killed (kill -9) and restarted in the
// middle of a conversation, after which the conversation continues with its history: the
// reply after the restart is token-identical to the same conversation without a restart.
#include <gtest/gtest.h>
#include <poll.h>
#include <pty.h>
#include <termios.h>

#include <nlohmann/json.hpp>

#include "tests/integration/daemon/daemon_harness.h"

namespace palu::testing {
namespace {

using json = nlohmann::json;

std::string model_dir() { return shared_file("models/ref-mha"); }
std::string bin(const std::string& name) { return std::string(PALU_BINARY_DIR) + "/" + name; }

struct Cmd {
  int exit_code = -1;
  std::string out;
};

// Runs a shell command line; stdout captured, stderr appended after it.
Cmd sh(const std::string& cmd) {
  Cmd r;
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  char buf[4096];
  size_t n;
  while (p && (n = std::fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = p ? ::pclose(p) : -1;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::vector<int32_t> reference_ids(const std::string& prompt, int n) {
  Cmd r = sh(bin("tools/palu-generate") + " -q --model " + model_dir() + " --prompt '" + prompt + "' -n " +
             std::to_string(n) + " -t 0 --ignore-eos --ids");
  std::vector<std::string> lines;
  std::stringstream ss(r.out);
  for (std::string l; std::getline(ss, l);) if (!l.empty()) lines.push_back(l);
  std::vector<int32_t> ids;
  if (lines.empty()) return ids;
  std::stringstream ls(lines.back());
  for (int32_t v; ls >> v;) ids.push_back(v);
  return ids;
}

class AppsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir(); }
  void TearDown() override {
    if (daemon_) daemon_->kill_now();
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }
  Daemon& start() {
    daemon_ = std::make_unique<Daemon>(dir_, std::vector<std::string>{"--model", model_dir(), "--threads", "2",
                                                                      "--host-budget", "64MiB"});
    EXPECT_TRUE(daemon_->start()) << daemon_->log();
    return *daemon_;
  }
  std::string palu(const std::string& args) { return bin("apps/palu") + " --socket " + daemon_->socket() + " " + args; }

  std::string dir_;
  std::unique_ptr<Daemon> daemon_;
};

TEST_F(AppsTest, PaluCliCommandsJsonAndExitCodes) {
  start();
  // models
  Cmd r = sh(palu("--json models"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  json models = json::parse(r.out);
  ASSERT_EQ(models.size(), 1u);
  EXPECT_EQ(models[0]["name"], "ref-mha");
  EXPECT_GT(models[0]["vocab_size"].get<int>(), 1000);
  r = sh(palu("models"));
  EXPECT_NE(r.out.find("ref-mha"), std::string::npos) << r.out;

  // run: greedy ids equal palu-generate's; a temporary session is closed afterwards.
  const std::vector<int32_t> want = reference_ids("Once upon a time", 12);
  ASSERT_EQ(want.size(), 12u);
  r = sh(palu("--json run -t 0 -n 12 --ignore-eos 'Once upon a time'"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  json j = json::parse(r.out);
  EXPECT_EQ(j["token_ids"].get<std::vector<int32_t>>(), want);
  EXPECT_EQ(j["stop_reason"], "max_tokens");
  EXPECT_EQ(j["generated_tokens"], 12);
  EXPECT_TRUE(j["session"].is_null());
  // Plain output streams the same text.
  Cmd plain = sh(palu("run -t 0 -n 12 --ignore-eos 'Once upon a time'"));
  EXPECT_EQ(plain.exit_code, 0);
  EXPECT_EQ(plain.out, j["text"].get<std::string>() + "\n");
  // Prompt from stdin.
  r = sh("printf 'Once upon a time' | " + palu("--json run -t 0 -n 12 --ignore-eos -"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out)["token_ids"].get<std::vector<int32_t>>(), want);

  // A named session is kept; ls, fork, save, restore, rm.
  r = sh(palu("--json run -t 0 -n 4 --session notes 'Hello'"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out)["session"], "notes");
  r = sh(palu("--json session ls"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  json ls = json::parse(r.out);
  ASSERT_EQ(ls.size(), 1u) << r.out;
  EXPECT_EQ(ls[0]["name"], "notes");
  const int tokens = ls[0]["tokens"];
  EXPECT_GE(tokens, 6);
  EXPECT_EQ(sh(palu("session fork notes notes2")).exit_code, 0);
  EXPECT_EQ(sh(palu("session save notes keep")).exit_code, 0);
  EXPECT_EQ(sh(palu("session rm notes")).exit_code, 0);
  r = sh(palu("--json session restore keep notes3"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out)["tokens"], tokens);
  r = sh(palu("session ls"));
  EXPECT_NE(r.out.find("notes2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("notes3"), std::string::npos) << r.out;

  // chat: two lines, two replies, in session "talk".
  r = sh("printf 'Hi\\nAnd then?\\n' | " + palu("--json chat -t 0 -n 4 --session talk"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 2) << r.out;

  // tokenize and stats
  r = sh(palu("--json tokenize --bos 'Hello world'"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out)["token_ids"][0], 1);
  r = sh(palu("--json stats"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  json st = json::parse(r.out);
  EXPECT_GT(st["generated_tokens"].get<int>(), 40);
  EXPECT_EQ(st["sessions"].size(), 3u);  // notes2, notes3, talk

  // Exit codes: palud's error 1, usage 2, no daemon 3.
  r = sh(palu("session save no-such-session"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("PALU_ENOTFOUND"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("no-such-session"), std::string::npos) << r.out;
  r = sh(palu("--json run --session x --model no-such-model hi"));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("\"error\":\"PALU_ENOTFOUND\""), std::string::npos) << r.out;
  EXPECT_EQ(sh(palu("session frobnicate")).exit_code, 2);
  EXPECT_EQ(sh(palu("run")).exit_code, 2);
  EXPECT_EQ(sh(palu("run -t -1 hi")).exit_code, 2);
  r = sh(bin("apps/palu") + " --socket " + dir_ + "/nope.sock stats");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_NE(r.out.find("PALU_ECONNECT"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nope.sock"), std::string::npos) << r.out;
}

// palu-assistant in a pseudo-terminal (echo off), read with deadlines.
class Pty {
 public:
  Pty(const std::vector<std::string>& argv) {
    pid_ = ::forkpty(&fd_, nullptr, nullptr, nullptr);
    if (pid_ == 0) {
      termios t{};
      if (::tcgetattr(0, &t) == 0) {
        t.c_lflag &= ~(tcflag_t)ECHO;
        ::tcsetattr(0, TCSANOW, &t);
      }
      ::setenv("NO_COLOR", "1", 1);
      std::vector<char*> av;
      for (auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
      av.push_back(nullptr);
      ::execv(av[0], av.data());
      ::_exit(127);
    }
  }
  ~Pty() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (fd_ >= 0) ::close(fd_);
  }
  void send(const std::string& s) { (void)!::write(fd_, s.data(), s.size()); }
  // Reads until `marker` appears after position `from` of the output; returns its position or npos.
  size_t wait_for(const std::string& marker, size_t from, int timeout_ms = 120000) {
    for (int waited = 0; waited < timeout_ms;) {
      if (size_t p = out_.find(marker, from); p != std::string::npos) return p;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) {
        waited += 100;
        continue;
      }
      char buf[4096];
      const ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n <= 0) return out_.find(marker, from);
      out_.append(buf, (size_t)n);
    }
    return std::string::npos;
  }
  int wait_exit(int timeout_ms = 30000) {
    for (int waited = 0; waited < timeout_ms; waited += 50) {
      char buf[4096];
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 0) > 0) {
        const ssize_t n = ::read(fd_, buf, sizeof buf);
        if (n > 0) out_.append(buf, (size_t)n);
      }
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return -2;
  }
  const std::string& out() const { return out_; }

 private:
  int fd_ = -1;
  pid_t pid_ = -1;
  std::string out_;
};

// One turn: send `message`, wait for the status line; returns the reply text and the context length.
struct Turn {
  std::string reply;
  int tokens = -1;
};
Turn turn(Pty& p, const std::string& session, const std::string& message) {
  const size_t from = p.out().size();
  p.send(message + "\n");
  const std::string marker = "[" + session + " \xC2\xB7 ";
  const size_t at = p.wait_for(marker, from);
  Turn t;
  if (at == std::string::npos) return t;
  p.wait_for("you> ", at);
  t.reply = p.out().substr(from, at - from);
  // Only the model's text: drop reconnect notes ("palu-assistant: ..."), a "you> " prompt that
  // was printed after `from` (after a reconnect or a /reset the prompt may come out late) and
  // blank lines.
  std::string clean;
  std::stringstream ss(t.reply);
  for (std::string l; std::getline(ss, l);) {
    if (l.rfind("you> ", 0) == 0) l.erase(0, 5);
    if (l.find("palu-assistant:") != std::string::npos || l == "\r" || l.empty()) continue;
    clean += l + "\n";
  }
  t.reply = clean;
  t.tokens = std::atoi(p.out().c_str() + at + marker.size());
  return t;
}

std::vector<std::string> assistant_argv(const Daemon& d, const std::string& session) {
  return {bin("apps/palu-assistant"), "--socket", d.socket(), "--session", session, "-t", "0", "-n", "6",
          "--system", "You are terse.", "--reconnect-s", "60"};
}

TEST_F(AppsTest, AssistantStreamsCommandsAndSurvivesADaemonRestart) {
  Daemon& d = start();
  // The reference conversation, without a restart.
  Turn ref1, ref2;
  {
    Pty p(assistant_argv(d, "ref"));
    ASSERT_NE(p.wait_for("you> ", 0), std::string::npos) << p.out();
    EXPECT_NE(p.out().find("session 'ref' (created"), std::string::npos) << p.out();
    ref1 = turn(p, "ref", "Tell me a story.");
    ref2 = turn(p, "ref", "And then what happened?");
    ASSERT_GT(ref1.tokens, 0) << p.out();
    ASSERT_GT(ref2.tokens, ref1.tokens) << p.out();
    p.send("/quit\n");
    EXPECT_EQ(p.wait_exit(), 0);
  }

  Pty p(assistant_argv(d, "conv"));
  ASSERT_NE(p.wait_for("you> ", 0), std::string::npos) << p.out();
  Turn t1 = turn(p, "conv", "Tell me a story.");
  EXPECT_EQ(t1.reply, ref1.reply);
  EXPECT_EQ(t1.tokens, ref1.tokens);

  // Commands.
  size_t from = p.out().size();
  p.send("/sessions\n");
  ASSERT_NE(p.wait_for("* conv", from), std::string::npos) << p.out();
  EXPECT_NE(p.wait_for("ref  ref-mha", from), std::string::npos) << p.out();
  from = p.out().size();
  p.send("/stats\n");
  ASSERT_NE(p.wait_for("host: ", from), std::string::npos) << p.out();
  from = p.out().size();
  p.send("/model\n");
  ASSERT_NE(p.wait_for("* ref-mha", from), std::string::npos) << p.out();
  from = p.out().size();
  p.send("/save conv-backup\n");
  ASSERT_NE(p.wait_for("saved as conv-backup", from), std::string::npos) << p.out();
  from = p.out().size();
  p.send("/nonsense\n");
  ASSERT_NE(p.wait_for("unknown command /nonsense", from), std::string::npos) << p.out();

  // kill -9 palud mid-conversation and start it again: the autosaved conversation is restored,
  // and the next reply is the one the uninterrupted conversation gave.
  d.kill_now();
  ASSERT_TRUE(d.start()) << d.log();
  Turn t2 = turn(p, "conv", "And then what happened?");
  EXPECT_NE(p.out().find("reconnected; session 'conv'"), std::string::npos) << p.out();
  EXPECT_EQ(t2.reply, ref2.reply) << p.out();
  EXPECT_EQ(t2.tokens, ref2.tokens) << p.out();

  // Multi-line input (continuation and a """ block) reaches the model as one message.
  Turn t3 = turn(p, "conv", "first line \\\nsecond line");
  EXPECT_GT(t3.tokens, t2.tokens + 6) << p.out();
  Turn t4 = turn(p, "conv", "\"\"\"\nalpha\nbeta\n\"\"\"");
  EXPECT_GT(t4.tokens, t3.tokens + 6) << p.out();

  // /reset starts over: the next turn's context equals the first turn's.
  from = p.out().size();
  p.send("/reset\n");
  ASSERT_NE(p.wait_for("conversation reset", from), std::string::npos) << p.out();
  Turn t5 = turn(p, "conv", "Tell me a story.");
  EXPECT_EQ(t5.tokens, ref1.tokens) << p.out();
  EXPECT_EQ(t5.reply, ref1.reply);

  // End of input leaves with 0; the conversation stays in palud.
  p.send("/quit\n");
  EXPECT_EQ(p.wait_exit(), 0) << p.out();
  Cmd r = sh(bin("apps/palu") + " --socket " + d.socket() + " --json session ls");
  EXPECT_NE(r.out.find("\"name\":\"conv\""), std::string::npos) << r.out;
}

TEST_F(AppsTest, AssistantExplainsAMissingDaemon) {
  Pty p({bin("apps/palu-assistant"), "--socket", dir_ + "/none.sock", "--reconnect-s", "1"});
  EXPECT_EQ(p.wait_exit(), 3) << p.out();
  EXPECT_NE(p.out().find("PALU_ECONNECT"), std::string::npos) << p.out();
  EXPECT_NE(p.out().find("none.sock"), std::string::npos) << p.out();
}

}  // namespace
}  // namespace palu::testing
