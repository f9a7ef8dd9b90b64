// Test harness for a real palud on a real socket: start the daemon binary as a child process
// (so tests can SIGTERM or kill -9 it), and a blocking client speaking binary frames with a
// timeout on every read (a test never hangs).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sdk/proto/framing.h"
#include "sdk/proto/palu.pb.h"
#include "tests/common/test_paths.h"

namespace palu::testing {

namespace api = palu::api::v1;

inline std::string make_temp_dir() {
  char tmpl[] = "/tmp/palu-it-XXXXXX";
  const char* d = ::mkdtemp(tmpl);
  return d ? std::string(d) : std::string();
}

// A palud child process.
class Daemon {
 public:
  // args: extra flags after the defaults (socket, state dir, disk dir).
  Daemon(const std::string& dir, std::vector<std::string> args) : dir_(dir), args_(std::move(args)) {}
  ~Daemon() { kill_now(); }

  std::string socket() const { return dir_ + "/run/palud.sock"; }
  std::string state_dir() const { return dir_ + "/state"; }
  std::string disk_dir() const { return dir_ + "/spill"; }
  std::string log() const {
    std::ifstream f(dir_ + "/palud.log");
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  // Starts and waits (≤ 60 s) until the socket accepts connections.
  bool start() {
    std::vector<std::string> argv = {std::string(PALU_BINARY_DIR) + "/daemon/palud",
                                     "--socket", socket(), "--state-dir", state_dir(), "--disk-dir", disk_dir()};
    argv.insert(argv.end(), args_.begin(), args_.end());
    // The CPU unless a test asks for a backend: the tests compare with palu-generate on the CPU
    // (on a GPU machine, palud's default "auto" would run sessions on the GPU, f16 weights).
    if (std::find(args_.begin(), args_.end(), "--backend") == args_.end()) {
      argv.push_back("--backend");
      argv.push_back("cpu");
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open((dir_ + "/palud.log").c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      std::vector<char*> av;
      for (auto& a : argv) av.push_back(a.data());
      av.push_back(nullptr);
      ::execv(av[0], av.data());
      ::_exit(127);
    }
    for (int i = 0; i < 600; ++i) {
      if (connectable()) return true;
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  // SIGTERM and wait for exit (≤ 60 s); returns the exit status or −1.
  int stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    return wait_exit(60000);
  }
  void kill_now() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    wait_exit(10000);
  }
  bool alive() const { return pid_ > 0 && ::kill(pid_, 0) == 0; }
  pid_t pid() const { return pid_; }

 private:
  bool connectable() const {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, socket().c_str(), sizeof a.sun_path - 1);
    const bool ok = ::connect(fd, (sockaddr*)&a, sizeof a) == 0;
    ::close(fd);
    return ok;
  }
  int wait_exit(int timeout_ms) {
    for (int waited = 0; waited < timeout_ms; waited += 20) {
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
    return -1;
  }

  std::string dir_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
};

// A blocking binary-frame client; every read has a deadline.
class Client {
 public:
  explicit Client(const std::string& socket_path, int timeout_ms = 120000) : timeout_ms_(timeout_ms) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, socket_path.c_str(), sizeof a.sun_path - 1);
    if (::connect(fd_, (sockaddr*)&a, sizeof a) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return fd_ >= 0; }

  bool send_raw(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += (size_t)n;
    }
    return true;
  }
  bool send(const api::Request& r) { return send_raw(palu::api::encode_frame(r)); }

  // The next response, or nullopt on timeout / EOF / a bad frame.
  std::optional<api::Response> read() {
    while (true) {
      if (auto f = decoder_.next()) {
        api::Response r;
        if (!r.ParseFromString(f->payload)) return std::nullopt;
        return r;
      }
      if (!decoder_.status().is_ok()) return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, timeout_ms_) <= 0) return std::nullopt;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return std::nullopt;
      (void)decoder_.feed(std::string_view(buf, (size_t)n));
    }
  }
  // True when the daemon closed the connection (EOF) within the timeout.
  bool closed_by_peer(int timeout_ms = 5000) {
    pollfd p{fd_, POLLIN, 0};
    char buf[4096];
    for (int waited = 0; waited < timeout_ms; waited += 50) {
      if (::poll(&p, 1, 50) > 0) {
        const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN)) return true;
      }
    }
    return false;
  }

  api::Response call(const api::Request& r) {
    send(r);
    auto resp = read();
    if (!resp) {
      api::Response e;
      e.set_code(api::INTERNAL);
      e.set_message("test client: no response (timeout or closed)");
      return e;
    }
    return *resp;
  }
  bool handshake(uint32_t version = palu::api::kProtocolVersion) {
    api::Request r;
    r.set_id(next_id());
    r.mutable_handshake()->set_protocol_version(version);
    r.mutable_handshake()->set_client_name("palu-tests");
    return call(r).code() == api::OK;
  }
  // Generate: every response until the final one. generated ids / text concatenated.
  struct GenResult {
    api::Code code = api::INTERNAL;
    std::string message, text, stop_reason;
    std::vector<int32_t> ids;
    int chunks = 0;
  };
  GenResult generate(const api::Request& r) {
    GenResult g;
    if (!send(r)) return g;
    while (auto resp = read()) {
      ++g.chunks;
      for (int32_t id : resp->chunk().token_ids()) g.ids.push_back(id);
      g.text += resp->chunk().text();
      if (resp->final()) {
        g.code = resp->code();
        g.message = resp->message();
        g.stop_reason = resp->chunk().stop_reason();
        return g;
      }
    }
    g.message = "no final response";
    return g;
  }
  uint64_t next_id() { return ++id_; }

 private:
  int fd_ = -1;
  int timeout_ms_;
  uint64_t id_ = 0;
  palu::api::FrameDecoder decoder_{64u << 20};
};

}  // namespace palu::testing
